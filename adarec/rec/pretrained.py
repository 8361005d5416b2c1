"""Self-describing TransRec checkpoints: a folder that rebuilds the model without the caller's code.

``save_pretrained(model, folder)`` writes

- ``transrec_config.json``: the TransRec settings, the user encoder's settings, the item
  encoder's kind and settings, a reference to the base encoder (its ``name_or_path``, class and
  config) with its fingerprint and a sha256 digest of every base tensor the folder does not hold,
  the adapter sets (root, name, spec, active), the training policy, the item id map (and texts)
  and the tensor list with a sha256 of the weights file;
- ``model.safetensors``: every trained tensor (adapters, DTL, user encoder, tuned norms, any base
  weight that trains under the current policy; all base weights with ``include_base``) and the
  item features (the token table; a precomputed table);
- ``tokenizer/`` when a tokenizer is known (for `TransRec.add_items` after loading).

``from_pretrained(folder, base=None)`` rebuilds it: the base encoder is ``base`` (a model, or a
local path / hub id) or the recorded reference, loaded offline (``local_files_only``). Refused,
with the differences listed and nothing half-loaded: a format this adarec does not read, a
corrupted or edited folder (sha256, JSON vs safetensors header), another base model (class,
config, tensor shapes) or the same architecture with other weights (the digest), missing or
unexpected tensors. The folder is written atomically (`adarec.checkpoint.atomic_folder`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Hashable
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from adarec.checkpoint import (
    _compare_fingerprint,
    atomic_folder,
    fingerprint,
    read_json,
    read_weights,
    write_json,
    write_weights,
)
from adarec.errors import AdapterStateError, CheckpointError, ConfigError
from adarec.inject import (
    active_adapters,
    adapter_sets,
    inject_adapters,
    iter_adapters,
    set_active_adapters,
)
from adarec.rec.item_encoders import IDItemEncoder, PrecomputedItemEncoder, TextItemEncoder
from adarec.rec.user_encoders import SASRec
from adarec.spec import AdapterSpec
from adarec.version import __version__

FORMAT = "adarec-transrec"
FORMAT_VERSION = 1
CONFIG = "transrec_config.json"
WEIGHTS = "model.safetensors"
TOKENIZER = "tokenizer"
FEATURE = "features."  # prefix of item-feature tensors in the weights file
ADAPTER_PART = ".adarec_adapters."
logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------- saving
def _sasrec_settings(user: nn.Module) -> dict[str, Any]:
    if type(user) is not SASRec:
        raise ConfigError(f"save_pretrained rebuilds adarec's SASRec user encoder, not "
                          f"{type(user).__name__}; save its weights with adarec.save_model_state")
    block = cast(Any, user.blocks[0])
    return {"kind": "sasrec", "dim": user.dim, "n_layers": len(user.blocks),
            "n_heads": block.attn.n_heads, "ffn_dim": block.ffn.fc1.out_features,
            "max_len": user.max_len, "dropout": float(user.dropout.p)}


def _base_reference(hf: nn.Module, include_base: bool) -> dict[str, Any]:
    config = cast(Any, hf).config
    return {
        "name_or_path": str(getattr(config, "_name_or_path", "") or ""),
        "class": type(hf).__name__,
        "config": config.to_dict(),
        "fingerprint": fingerprint(hf),
        "included": include_base,
    }


def _item_settings(encoder: nn.Module, include_base: bool) -> dict[str, Any]:
    if isinstance(encoder, TextItemEncoder):
        dtype = encoder.cache_dtype
        return {"kind": "text", "pooling": encoder.pooling, "chunk_size": encoder.chunk_size,
                "cache_frozen_layers": encoder.cache_frozen_layers,
                "cache_dtype": None if dtype is None else str(dtype).removeprefix("torch."),
                "cache_states": encoder.cache_states,
                "base": _base_reference(encoder.model, include_base)}
    if isinstance(encoder, IDItemEncoder):
        return {"kind": "id", "n_items": encoder.n_items, "dim": encoder.dim}
    if isinstance(encoder, PrecomputedItemEncoder):
        return {"kind": "precomputed", "trainable": encoder.trainable}
    raise ConfigError(f"save_pretrained supports text, ID and precomputed item encoders, not "
                      f"{type(encoder).__name__}; save its weights with adarec.save_model_state")


def _features(encoder: nn.Module) -> dict[str, Tensor]:
    if isinstance(encoder, TextItemEncoder):
        return {"input_ids": encoder.input_ids, "attention_mask": encoder.attention_mask}
    if isinstance(encoder, PrecomputedItemEncoder) and not encoder.trainable:
        return {"table": encoder.table}
    return {}


def digest(tensors: dict[str, Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes, in name order (about 1 GB/s on one core)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _split_state(model: nn.Module, include_base: bool) -> tuple[dict[str, Tensor],
                                                                dict[str, Tensor]]:
    """(tensors to save, base tensors left to the base model's own files)."""
    params = dict(model.named_parameters())
    saved: dict[str, Tensor] = {}
    left: dict[str, Tensor] = {}
    base = "item_encoder.model."
    for name, t in model.state_dict(keep_vars=True).items():
        is_base = name.startswith(base) and ADAPTER_PART not in name
        trains = name in params and params[name].requires_grad
        if is_base and not include_base and not trains:
            left[name[len(base):]] = t
        else:
            saved[name] = t
    return saved, left


def _json_id(raw: Hashable) -> Any:
    if raw is None or (isinstance(raw, (str, int)) and not isinstance(raw, bool)):
        return raw
    raise ConfigError(f"raw item id {raw!r} ({type(raw).__name__}) cannot be written to JSON; "
                      "use str or int ids")


def save_pretrained(model: Any, folder: str | Path, include_base: bool = False,
                    tokenizer: Any = None) -> Path:
    """Write ``model`` (a `TransRec`) as a folder `from_pretrained` rebuilds (see the module).

    ``include_base`` also stores the frozen base encoder's weights and config, so loading
    needs nothing else (a bigger folder: the whole encoder). ``tokenizer`` defaults to the one
    the text item encoder kept.
    """
    merged = sorted({a.set_name for _, _, a in iter_adapters(model) if getattr(a, "merged", 0)})
    if merged:
        raise AdapterStateError(f"adapter set(s) {merged} are merged into the base weights; "
                                "unmerge_adapters(model) before save_pretrained")
    dtl_kind = getattr(model, "dtl_kind", None)
    if dtl_kind is None:
        raise ConfigError(f"the model's dtl is a module passed as it is "
                          f"({type(model.dtl).__name__}): from_pretrained could not rebuild it "
                          "from a name; save it with adarec.save_model_state and rebuild it in "
                          "code, or build the TransRec with dtl='linear', 'moe' or 'none'")
    item = _item_settings(model.item_encoder, include_base)
    roots = _adapter_roots(model)
    sets = []
    for root, module in roots.items():
        active = set(active_adapters(module))
        for name, spec in adapter_sets(module).items():
            sets.append({"root": root, "name": name, "spec": spec.to_dict(),
                         "active": name in active})
    saved, left = _split_state(model, include_base)
    tensors: dict[str, Tensor] = {}
    storages: set[int] = set()
    for name, t in {**saved, **{FEATURE + k: v for k, v in _features(model.item_encoder).items()}
                    }.items():
        t = t.detach()
        ptr = t.untyped_storage().data_ptr()
        tensors[name] = t.clone() if ptr in storages else t  # safetensors refuses shared memory
        storages.add(ptr)
    if item["kind"] == "text":
        item["base"]["digest"] = digest(left)
        item["base"]["left_out"] = len(left)
    tokenizer = tokenizer if tokenizer is not None else getattr(model.item_encoder, "tokenizer",
                                                                 None)
    ids = model.item_ids
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "adarec_version": __version__,
        "torch_version": torch.__version__,
        "transrec": {
            "user_dim": model.dim, "objective": model.objective, "loss": model.loss_name,
            "num_negatives": model.num_negatives, "dtl": dtl_kind,
            "id_fusion": None if model.id_fusion is None else model.id_fusion.mode,
            "similarity": model.similarity,
            "temperature": model.temperature, "logq_correction": model.logq_correction,
            "policy": model.policy, "policy_args": model.policy_args,
        },
        "user_encoder": _sasrec_settings(model.user_encoder),
        "item_encoder": item,
        "adapter_sets": sets,
        "items": {
            "n_items": model.n_items,
            "ids": None if ids is None else [_json_id(i) for i in ids],
            "texts": model.item_texts,
        },
        "tensors": {n: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
                    for n, t in tensors.items()},
        "tokenizer": TOKENIZER if tokenizer is not None else None,
    }
    with atomic_folder(folder, CONFIG) as tmp:
        config["weights"] = write_weights(tmp, WEIGHTS, tensors)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp / TOKENIZER))
        write_json(tmp / CONFIG, config)
    logger.info("saved %s: %d tensors (%d base tensors left to %r)", folder, len(tensors),
                len(left), item.get("base", {}).get("name_or_path"))
    return Path(folder)


def _adapter_roots(model: Any) -> dict[str, nn.Module]:
    roots: dict[str, nn.Module] = {"user_encoder": model.user_encoder}
    if isinstance(model.item_encoder, TextItemEncoder):
        roots = {"item_encoder.model": model.item_encoder.model, **roots}
    return roots


# --------------------------------------------------------------------------------- loading
def _need(obj: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, kind):
        raise CheckpointError(f"{where}: field {key!r} is missing or malformed: {value!r}")
    return value


def read_config(folder: Path) -> dict[str, Any]:
    """The validated ``transrec_config.json`` of a folder."""
    file = folder / CONFIG
    if not file.is_file() and (folder / "adapter_config.json").is_file():
        raise CheckpointError(f"{folder} is an adapter checkpoint (save_adapters); load it into a "
                              "built model with adarec.load_adapters")
    config = read_json(file)
    where = str(file)
    if config.get("format") != FORMAT:
        raise CheckpointError(f"{where}: format {config.get('format')!r}, expected {FORMAT!r}")
    version = _need(config, "format_version", int, where)
    if not 1 <= version <= FORMAT_VERSION:
        raise CheckpointError(
            f"{where} has format_version {version} (written by adarec "
            f"{config.get('adarec_version')}); this adarec {__version__} reads "
            f"1..{FORMAT_VERSION}: upgrade adarec to load it"
        )
    for key in ("transrec", "user_encoder", "item_encoder", "items", "tensors", "weights"):
        _need(config, key, dict, where)
    _need(config, "adapter_sets", list, where)
    _need(config["weights"], "sha256", str, where)
    return config


def _load_base(ref: dict[str, Any], base: Any, tensors: dict[str, Tensor], where: str,
               local_files_only: bool) -> nn.Module:
    import transformers

    cls = getattr(transformers, str(ref.get("class")), None)
    if cls is None or not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise CheckpointError(f"{where}: base class {ref.get('class')!r} is not a transformers "
                              "model class")
    if isinstance(base, nn.Module):
        return base
    if base is None and ref.get("included"):
        config = transformers.AutoConfig.for_model(**ref["config"])
        return cast(nn.Module, cls(config))  # weights follow from the folder
    source = base if base is not None else ref.get("name_or_path")
    if not source:
        raise CheckpointError(f"{where}: the base encoder has no recorded path or hub id (it was "
                              "built from a config); pass base= (a model or a path)")
    try:
        loader = cast(Any, cls)
        return cast(nn.Module, loader.from_pretrained(str(source),
                                                      local_files_only=local_files_only))
    except OSError as exc:
        raise CheckpointError(
            f"cannot load the base encoder {source!r} ({exc.__class__.__name__}: "
            f"{str(exc)[:200]}); pass base= (a model or a local path)"
            + ("" if not local_files_only else ", or local_files_only=False to download it")
        ) from None


def from_pretrained(folder: str | Path, base: Any = None, check_base: bool = True,
                    local_files_only: bool = True, map_location: str | torch.device = "cpu",
                    ) -> Any:
    """Rebuild a `TransRec` written by `save_pretrained`, in eval mode.

    ``base``: the base encoder as a model (used, and adapted, in place: e.g. already on a
    device; fingerprint and digest are checked before anything changes) or a path /
    hub id; default: the recorded reference (``local_files_only``: never downloads unless told).
    ``check_base=False`` skips the base-weights digest (for a deliberately different base, e.g.
    the same model converted to another dtype); shape and config checks still apply.
    """
    from adarec.rec.transrec import TransRec

    root = Path(folder)
    config = read_config(root)
    where = str(root / CONFIG)
    tensors = read_weights(root / WEIGHTS, config["weights"]["sha256"])
    _check_header(config, tensors, where)
    features = {k[len(FEATURE):]: v for k, v in tensors.items() if k.startswith(FEATURE)}
    weights = {k: v for k, v in tensors.items() if not k.startswith(FEATURE)}

    item_cfg = config["item_encoder"]
    kind = item_cfg.get("kind")
    item: nn.Module
    if kind == "text":
        ref = _need(item_cfg, "base", dict, where)
        hf = _load_base(ref, base, weights, where, local_files_only)
        diffs = _compare_fingerprint(ref.get("fingerprint") or {}, hf)
        if diffs:
            raise CheckpointError(f"{root} was saved with another base encoder:\n  "
                                  + "\n  ".join(diffs))
        _, left = _split_state_of_base(hf, weights)
        if check_base and not ref.get("included") and digest(left) != ref.get("digest"):
            raise CheckpointError(
                f"{root}: the base encoder {ref.get('name_or_path')!r} has the right architecture "
                "but other weights than the model was saved with (its digest differs): pass the "
                "same base, save with include_base=True, or check_base=False to override"
            )
        cache_dtype = item_cfg.get("cache_dtype")
        item = TextItemEncoder(
            hf, _feature(features, "input_ids", where), _feature(features, "attention_mask", where),
            pooling=item_cfg.get("pooling", "cls"), chunk_size=item_cfg.get("chunk_size"),
            cache_frozen_layers=bool(item_cfg.get("cache_frozen_layers")),
            cache_dtype=getattr(torch, cache_dtype) if cache_dtype else None,
            cache_states=bool(item_cfg.get("cache_states", True)),
        )
        if config.get("tokenizer") and (root / TOKENIZER).is_dir():
            from transformers import AutoTokenizer

            item.tokenizer = AutoTokenizer.from_pretrained(str(root / TOKENIZER))
    elif kind == "id":
        item = IDItemEncoder(int(item_cfg["n_items"]), int(item_cfg["dim"]))
    elif kind == "precomputed":
        table = (features["table"] if "table" in features
                 else weights.get("item_encoder.table"))
        if table is None:
            raise CheckpointError(f"{where}: the precomputed item table is missing")
        item = PrecomputedItemEncoder(table, trainable=bool(item_cfg.get("trainable")))
    else:
        raise CheckpointError(f"{where}: unknown item encoder kind {kind!r}")

    user_cfg = dict(config["user_encoder"])
    if user_cfg.pop("kind", None) != "sasrec":
        raise CheckpointError(f"{where}: unknown user encoder {config['user_encoder']!r}")
    settings = dict(config["transrec"])
    policy, policy_args = settings.pop("policy", None), settings.pop("policy_args", None) or {}
    model = TransRec(item, user_encoder=SASRec(**user_cfg), **settings)
    roots = _adapter_roots(model)
    active: dict[str, list[str]] = {}
    for rec in config["adapter_sets"]:
        if rec.get("root") not in roots:
            raise CheckpointError(f"{where}: adapter set {rec.get('name')!r} at unknown root "
                                  f"{rec.get('root')!r}")
        spec = AdapterSpec.from_dict(rec["spec"])
        inject_adapters(roots[rec["root"]], spec, rec["name"], freeze=False)
        if rec.get("active"):
            active.setdefault(rec["root"], []).append(rec["name"])
    for name, module in roots.items():
        if adapter_sets(module):
            set_active_adapters(module, active.get(name, []))
    _load_weights(model, weights, where)
    if policy is not None:
        model.set_policy(policy, **policy_args)
    items = config["items"]
    if items.get("ids") is not None:
        model.set_item_map(items["ids"], items.get("texts"))
    elif items.get("texts") is not None:
        model.item_texts = list(items["texts"])
    model.to(map_location)
    model.eval()
    return model


def _feature(features: dict[str, Tensor], name: str, where: str) -> Tensor:
    if name not in features:
        raise CheckpointError(f"{where}: item feature {name!r} is missing from the weights")
    return features[name]


def _split_state_of_base(hf: nn.Module, weights: dict[str, Tensor]) -> tuple[dict[str, Tensor],
                                                                             dict[str, Tensor]]:
    """The base tensors the folder holds, and those it left to the base model."""
    held: dict[str, Tensor] = {}
    left: dict[str, Tensor] = {}
    for name, t in hf.state_dict().items():
        if ADAPTER_PART in name:
            continue
        (held if f"item_encoder.model.{name}" in weights else left)[name] = t
    return held, left


def _check_header(config: dict[str, Any], tensors: dict[str, Tensor], where: str) -> None:
    declared = config["tensors"]
    diffs = [f"{n}: in the file, not in the JSON" for n in tensors if n not in declared]
    diffs += [f"{n}: in the JSON, not in the file" for n in declared if n not in tensors]
    diffs += [f"{n}: JSON says {declared[n].get('shape')}, file has {list(t.shape)}"
              for n, t in tensors.items()
              if n in declared and declared[n].get("shape") != list(t.shape)]
    if diffs:
        raise CheckpointError(f"{where}: JSON and weights disagree:\n  " + "\n  ".join(diffs))


def _load_weights(model: nn.Module, weights: dict[str, Tensor], where: str) -> None:
    """Copy ``weights`` in; every non-base tensor of the model must be there, nothing else."""
    state = model.state_dict(keep_vars=True)
    base = "item_encoder.model."
    expected = {n for n in state if not (n.startswith(base) and ADAPTER_PART not in n)}
    missing = sorted(expected - set(weights))
    unexpected = sorted(set(weights) - set(state))
    mismatched = [f"{n}: file {list(t.shape)}, model {list(state[n].shape)}"
                  for n, t in weights.items() if n in state and t.shape != state[n].shape]
    if missing or unexpected or mismatched:
        parts = [f"missing tensor: {n}" for n in missing[:10]]
        parts += [f"unexpected tensor: {n}" for n in unexpected[:10]]
        parts += [f"shape mismatch: {m}" for m in mismatched[:10]]
        raise CheckpointError(f"{where} does not fit the model it describes:\n  "
                              + "\n  ".join(parts))
    with torch.no_grad():
        for n, t in weights.items():
            state[n].copy_(t)


__all__ = ["FORMAT", "FORMAT_VERSION", "digest", "from_pretrained", "read_config",
           "save_pretrained"]
