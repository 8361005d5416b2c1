"""The base-model fingerprint: class, Hugging Face config fields and patched weight shapes,
recorded at save time and compared at load time (weight *values* are `digests`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import nn

CONFIG_EXEMPT = frozenset({
    "_name_or_path", "name_or_path", "transformers_version", "_commit_hash", "architectures",
    "dtype", "torch_dtype", "attn_implementation", "_attn_implementation",
    "_attn_implementation_internal", "_attn_implementation_autoset", "output_hidden_states",
    "output_attentions", "return_dict", "use_cache", "initializer_range",
})
"""Config fields the base-model fingerprint leaves out: names, paths and versions, the weights'
dtype (the weight digests check it), output switches, initialisation, and the attention
implementation (eager / sdpa agree within 1e-5 in float32). Every other field is compared."""


def _json_value(value: Any) -> Any:
    """A config value as JSON holds it (dict keys as strings, tuples as lists, others by repr)."""
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def _config_fields(config: Any) -> dict[str, Any]:
    to_dict = getattr(config, "to_dict", None)
    raw = to_dict() if callable(to_dict) else dict(vars(config))
    return {k: _json_value(v) for k, v in sorted(raw.items()) if k not in CONFIG_EXEMPT}


def _hf_configs(model: nn.Module) -> dict[str, dict[str, Any]]:
    """The outermost Hugging Face models inside ``model`` (``""``: the model itself)."""
    out: dict[str, dict[str, Any]] = {}
    for mname, module in model.named_modules():
        config = getattr(module, "config", None)
        model_type = getattr(config, "model_type", None)
        if not isinstance(model_type, str) or not model_type:
            continue
        if any(mname == p or mname.startswith(p + ".") or p == "" for p in out):
            continue
        out[mname] = {
            "class": type(module).__name__,
            "model_type": model_type,
            "hidden_size": getattr(config, "hidden_size", None),
            "num_layers": getattr(config, "num_hidden_layers", None),
            "config": _config_fields(config),
        }
    return out


def _base_weights(model: nn.Module, modules: Sequence[str]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for mname in modules:
        for pname, p in model.get_submodule(mname).named_parameters(recurse=False):
            out[f"{mname}.{pname}" if mname else pname] = list(p.shape)
    return out


def fingerprint(model: nn.Module, modules: Sequence[str] = ()) -> dict[str, Any]:
    """What identifies the base model: class, HF config facts and the patched modules' weights."""
    return {
        "class": type(model).__name__,
        "hf_configs": _hf_configs(model),
        "patched_weights": _base_weights(model, modules),
    }


def compare_fingerprint(saved: dict[str, Any], model: nn.Module) -> list[str]:
    """Differences between a recorded `fingerprint` and ``model``: class, every non-exempt
    config field (`CONFIG_EXEMPT`; only the fields it recorded for older checkpoints), patched
    weight shapes."""
    diffs: list[str] = []
    if saved.get("class") != type(model).__name__:
        diffs.append(f"model class: checkpoint {saved.get('class')}, model {type(model).__name__}")
    ours = _hf_configs(model)
    theirs = saved.get("hf_configs") or {}
    for prefix in sorted(set(ours) | set(theirs)):
        where = f"HF model at {prefix!r}" if prefix else "HF config"
        a, b = theirs.get(prefix), ours.get(prefix)
        if a is None or b is None:
            diffs.append(f"{where}: checkpoint {'has' if a else 'lacks'} it, model "
                         f"{'has' if b else 'lacks'} it")
            continue
        diffs += [f"{where} {k}: checkpoint {a.get(k)!r}, model {b.get(k)!r}"
                  for k in ("class", "model_type", "hidden_size", "num_layers")
                  if a.get(k) != b.get(k)]
        saved_cfg, our_cfg = a.get("config"), b.get("config") or {}
        if isinstance(saved_cfg, dict):  # older checkpoints recorded the four fields above only
            diffs += [f"{where} config.{k}: checkpoint {saved_cfg.get(k)!r}, model "
                      f"{our_cfg.get(k)!r}"
                      for k in sorted(set(saved_cfg) | set(our_cfg))
                      if saved_cfg.get(k) != our_cfg.get(k)]
    params = dict(model.named_parameters(remove_duplicate=False))
    for name, shape in (saved.get("patched_weights") or {}).items():
        if name not in params:
            diffs.append(f"patched weight {name}: not in the model")
        elif list(params[name].shape) != shape:
            diffs.append(f"patched weight {name}: checkpoint {shape}, model "
                         f"{list(params[name].shape)}")
    return diffs


_compare_fingerprint = compare_fingerprint  # the name adarec 0.4 used
