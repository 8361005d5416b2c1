"""Read and write peft LoRA folders (``adapter_config.json`` + ``adapter_model.safetensors``).

peft stores LoRA weights under ``base_model.model.<module>.lora_A.weight`` (shape ``(r, in)``)
and ``...lora_B.weight`` (``(out, r)``), the adapter name removed, with scaling
``lora_alpha / r``: the same math and orientation as adarec's `LoRAAdapter`, for nn.Linear and
transformers' Conv1D alike. Features that change the math (DoRA, rsLoRA, LoRA biases, per-module
ranks, fully trained ``modules_to_save``) have no adarec counterpart and are refused, never
dropped. peft itself is not needed: both directions only read and write files.

Folded prefix tuning sets are written as peft PREFIX_TUNING folders by `export_peft_prefix`
(the prefix method's own file holds the layout).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..adapters.base import ADAPTERS_ATTR
from ..adapters.prefix import export_peft_prefix
from ..checkpoint import (
    PathLike,
    atomic_folder,
    follow_training_mode,
    read_json,
    read_weights,
    write_json,
    write_weights,
)
from ..errors import AdapterStateError, CheckpointError
from ..inject import adapter_sets, eject_adapters, inject_adapters, iter_adapters
from ..registry import MethodDef, method_info, methods_for_peft
from ..spec import AdapterSpec

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."
_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.(?P<part>lora_A|lora_B)\.weight$")

# peft config fields whose non-default value changes the computation adarec would reproduce
_REFUSED: dict[str, tuple[Any, str]] = {
    "use_dora": (False, "DoRA (a learned magnitude vector) has no adarec counterpart"),
    "use_rslora": (False, "rsLoRA scales by alpha/sqrt(r), adarec's LoRA by alpha/r"),
    "bias": ("none", "trained base-layer biases are not part of an adarec LoRA set"),
    "lora_bias": (False, "a bias on lora_B is not part of adarec's LoRA"),
    "modules_to_save": (None, "fully trained extra modules are not LoRA weights"),
    "rank_pattern": ({}, "adarec uses one rank for every module of a set"),
    "alpha_pattern": ({}, "adarec uses one alpha for every module of a set"),
    "layer_replication": (None, "layer replication changes the base model"),
    "trainable_token_indices": (None, "trainable tokens are not LoRA weights"),
    "target_parameters": (None, "LoRA on bare parameters (MoE experts) is not supported"),
    "use_qalora": (False, "QALoRA pools the input before lora_A"),
    "alora_invocation_tokens": (None, "aLoRA activates on invocation tokens only"),
}


def _module_names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_modules() if n and ADAPTERS_ATTR not in n.split(".")]


def _peft_matches(targets: list[str], names: list[str]) -> set[str]:
    """The modules peft's list rule (exact name or ``.suffix``) selects."""
    return {n for n in names if n in targets or any(n.endswith("." + t) for t in targets)}


def _target_modules(model: nn.Module, modules: list[str]) -> list[str]:
    """Short names (``["query", "value"]``) when they select exactly ``modules``, else full ones."""
    names = _module_names(model)
    short = sorted({m.rsplit(".", 1)[-1] for m in modules})
    return short if _peft_matches(short, names) == set(modules) else sorted(modules)


def export_peft_lora(model: nn.Module, path: PathLike, name: str = "default") -> Path:
    """Write LoRA set ``name`` as a folder ``peft.PeftModel.from_pretrained(base, path)`` loads.

    Module names are relative to ``model``, so pass the same model class as peft's base model.
    The write is atomic, as for `adarec.save_adapters`.
    """
    spec = adapter_sets(model).get(name)
    if spec is None:
        raise AdapterStateError(
            f"no adapter set named {name!r}; sets present: {list(adapter_sets(model))}"
        )
    if method_info(spec.method).peft_type != "LORA":
        exportable = [m.name for m in methods_for_peft("LORA")]
        raise AdapterStateError(
            f"peft LoRA export needs a set of a method peft can load as LoRA ({exportable}); "
            f"{name!r} is {spec.method}"
        )
    if spec.tune_layernorm:
        warnings.warn(
            f"set {name!r} tunes LayerNorms, which a peft LoRA folder cannot carry; they are not "
            "exported", stacklevel=2,
        )
    tensors: dict[str, torch.Tensor] = {}
    modules: list[str] = []
    conv1d = set()
    for mname, module, adapter in iter_adapters(model):
        if adapter.set_name != name:
            continue
        modules.append(mname)
        conv1d.add(type(module).__name__ == "Conv1D")
        tensors[f"{PREFIX}{mname}.lora_A.weight"] = _lora_weight(adapter, "lora_A")
        tensors[f"{PREFIX}{mname}.lora_B.weight"] = _lora_weight(adapter, "lora_B")
    if len(conv1d) > 1:
        raise AdapterStateError(
            f"set {name!r} mixes Conv1D and nn.Linear targets; peft has one fan_in_fan_out flag"
        )
    config: dict[str, Any] = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": getattr(getattr(model, "config", None), "_name_or_path", None)
        or None,
        "inference_mode": True,
        "r": spec.lora_r,
        "lora_alpha": spec.lora_alpha,
        "lora_dropout": spec.lora_dropout,
        "target_modules": _target_modules(model, modules),
        "fan_in_fan_out": conv1d == {True},
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "init_lora_weights": True,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    with atomic_folder(path, CONFIG) as tmp:
        write_weights(tmp, WEIGHTS, tensors)
        write_json(tmp / CONFIG, config)
    return Path(path)


def _lora_weight(adapter: nn.Module, part: str) -> torch.Tensor:
    """A LoRA factor's weight; a method registered with ``peft_type="LORA"`` promises its layers
    hold ``lora_A``/``lora_B`` linear maps in peft's orientation."""
    weight = getattr(getattr(adapter, part, None), "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise AdapterStateError(
            f"{type(adapter).__name__} has no {part}.weight, so it cannot be written as peft LoRA"
        )
    return weight


def _lora_method() -> MethodDef:
    found = methods_for_peft("LORA")
    if not found:
        raise CheckpointError("no registered adarec method reads peft LoRA folders")
    return found[0]


def _check_config(config: dict[str, Any], where: Path) -> None:
    if config.get("peft_type") != "LORA":
        raise CheckpointError(f"{where}: peft_type {config.get('peft_type')!r} is not LORA")
    refused = [
        f"{key}={config[key]!r}: {why}"
        for key, (default, why) in _REFUSED.items()
        if config.get(key) not in (default, None, {}, [], False)
    ]
    refused += [  # newer variants announce themselves as use_<x> flags or <x>_config blocks
        f"{key}={value!r}: a peft LoRA variant adarec does not implement"
        for key, value in config.items()
        if value and key not in _REFUSED and (key.startswith("use_") or key.endswith("_config"))
    ]
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init != "gaussian":
        refused.append(f"init_lora_weights={init!r}: this initialisation changes the base "
                       "weights; save it with path_initial_model_for_weight_conversion")
    if refused:
        raise CheckpointError(f"{where} uses peft features adarec cannot reproduce:\n  "
                              + "\n  ".join(refused))
    for key, kind in (("r", int), ("lora_alpha", (int, float)), ("lora_dropout", (int, float))):
        if not isinstance(config.get(key), kind) or isinstance(config.get(key), bool):
            raise CheckpointError(f"{where}: peft config field {key!r} is missing or malformed")


def import_peft_lora(model: nn.Module, path: PathLike, name: str = "default") -> nn.Module:
    """Read a peft LoRA folder (``save_pretrained`` output) into a new adarec LoRA set ``name``.

    The adapted modules are taken from the tensor names (so peft's ``layers_to_transform`` and
    regex targets need no re-implementation); shapes and ranks are checked before loading, and
    on any error the half-built set is removed again.
    """
    folder = Path(path)
    config = read_json(folder / CONFIG)
    _check_config(config, folder)
    if not (folder / WEIGHTS).is_file() and (folder / "adapter_model.bin").is_file():
        raise CheckpointError(
            f"{folder} holds only adapter_model.bin, a pickle; adarec never unpickles. Re-save it "
            "with peft's save_pretrained(..., safe_serialization=True)"
        )
    state = read_weights(folder / WEIGHTS)
    weights: dict[str, dict[str, torch.Tensor]] = {}
    odd = []
    for key, tensor in state.items():
        match = _KEY.match(key)
        if match is None:
            odd.append(key)
        else:
            weights.setdefault(match["module"], {})[match["part"]] = tensor
    if odd:
        raise CheckpointError(
            f"{folder} holds tensors that are not plain LoRA A/B weights (embedding LoRA, DoRA "
            f"magnitudes, saved modules?): {sorted(odd)[:10]}"
        )
    if not weights:
        raise CheckpointError(f"{folder} holds no LoRA weights")
    incomplete = sorted(m for m, parts in weights.items() if set(parts) != {"lora_A", "lora_B"})
    if incomplete:
        raise CheckpointError(f"{folder}: lora_A or lora_B missing for {incomplete}")
    names = set(_module_names(model))
    unknown = sorted(set(weights) - names)
    if unknown:
        raise CheckpointError(
            f"{folder} adapts modules {type(model).__name__} does not have: {unknown[:10]}"
        )
    modules = sorted(weights)
    spec = AdapterSpec(
        _lora_method().name, lora_r=config["r"], lora_alpha=float(config["lora_alpha"]),
        lora_dropout=float(config["lora_dropout"]),
        target_modules="|".join(re.escape(m) for m in modules),
    )
    inject_adapters(model, spec, name)
    follow_training_mode(model, name)
    try:
        _load_lora(model, name, weights, folder)
    except BaseException:
        eject_adapters(model, name)
        raise
    return model


def _load_lora(
    model: nn.Module, name: str, weights: dict[str, dict[str, torch.Tensor]], folder: Path
) -> None:
    pairs = []
    wrong = []
    for mname, _, adapter in iter_adapters(model):
        if adapter.set_name != name:
            continue
        for part in ("lora_A", "lora_B"):
            param = _lora_weight(adapter, part)
            tensor = weights[mname][part]
            if tensor.shape != param.shape:
                wrong.append(f"{mname}.{part}: file {list(tensor.shape)}, "
                             f"model {list(param.shape)}")
            pairs.append((param, tensor))
    if wrong:
        raise CheckpointError(f"{folder}: shape mismatch (another base model, or per-module "
                              "ranks?):\n  " + "\n  ".join(wrong))
    with torch.no_grad():
        for param, tensor in pairs:
            param.copy_(tensor)


__all__ = ["export_peft_lora", "export_peft_prefix", "import_peft_lora"]
