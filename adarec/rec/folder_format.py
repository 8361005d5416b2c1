"""The TransRec folder format: what `TransRec.save_pretrained` writes and `from_pretrained` reads.

A folder holds

- ``transrec_config.json``: the TransRec settings; each part (item encoder, user encoder, an
  adaptor given as a module) by its registered kind and settings (`adarec.rec.kinds`); a
  reference to every base transformer inside the item encoder (``name_or_path``, class, whole
  config, fingerprint and a sha256 digest of every base tensor the folder does not hold); the
  adapter sets (root, name, spec, active) and the sets' own DTLs (name, kind, active); the
  training policy; the item id map (and texts);
  the preprocessors saved; the tensor list and the weights file's sha256;
- ``model.safetensors``: every trained tensor (adapters, adaptor, user encoder, tuned norms, any
  base weight that trains under the current policy; all base weights with ``include_base``)
  and the item features, with the sha256 of the JSON bound into its metadata, so a hand-edited
  JSON (an item map with two ids swapped, another temperature) is refused like a flipped byte;
- one folder per preprocessor (``item_encoder.tokenizer/``, an image processor, ...).

Loading refuses, with the differences listed and nothing half-loaded: a format this adarec does
not read, a corrupted or edited folder, another base model (class, config, tensor shapes) or the
same architecture with other weights (the digest), missing or unexpected tensors. To change
what a folder holds (a new item map, added items, another policy), load it, change the model
through its methods (`TransRec.set_item_map`, `add_items`, `set_policy`) and save it again.
Format 1 folders (adarec <= 0.9) still load; they carry no JSON digest, so a warning says hand
edits are not detected there.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import warnings
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
import transformers
from torch import Tensor, nn

from adarec.adapters.base import ADAPTERS_ATTR
from adarec.checkpoint import (
    CONFIG_DIGEST,
    atomic_folder,
    compare_fingerprint,
    config_digest,
    fingerprint,
    write_json,
    write_weights,
)
from adarec.checkpoint.files import (
    _check_sha256,
    _need,
    _parse_json,
    config_is_bound,
    tensor_record_differences,
    weights_from_bytes,
)
from adarec.errors import AdapterStateError, CheckpointError, ConfigError
from adarec.folders import MissingFile, read_folder
from adarec.inject import (
    active_adapters,
    adapter_sets,
    inject_adapters,
    iter_adapters,
    set_active_adapters,
)
from adarec.rec.kinds import (
    PartSource,
    build_part,
    config_of,
    features_of,
    preprocessors_of,
)
from adarec.rec.set_dtl import add_set_dtl, set_dtls
from adarec.spec import AdapterSpec
from adarec.version import __version__

FORMAT = "adarec-transrec"
FORMAT_VERSION = 2
CONFIG = "transrec_config.json"
WEIGHTS = "model.safetensors"
FEATURE = "features."  # prefix of item-feature tensors in the weights file
ADAPTER_PART = ".adarec_adapters."
SETTINGS = ("user_dim", "objective", "loss", "num_negatives", "dtl", "id_fusion", "similarity",
            "temperature", "logq_correction", "id_dropout")
logger = logging.getLogger(__name__)


def digest(tensors: Mapping[str, Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes, in name order (about 1 GB/s on one core)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def base_models(model: nn.Module) -> dict[str, nn.Module]:
    """The item encoder's transformers by module path in ``model`` (``"item_encoder.model"``)."""
    wanted = {id(m) for m in cast(Any, model).item_encoder.hf_models()}
    return {n: m for n, m in model.named_modules() if id(m) in wanted}


def adapter_roots(model: nn.Module) -> dict[str, nn.Module]:
    """Where adapter sets live: each base transformer and the user encoder."""
    return {**base_models(model), "user_encoder": cast(nn.Module, model.user_encoder)}


def _is_base(name: str, bases: Mapping[str, nn.Module]) -> str | None:
    if ADAPTER_PART in name:
        return None
    return next((b for b in bases if name.startswith(b + ".")), None)


# ---------------------------------------------------------------------------------- saving
def _json_id(raw: Hashable) -> Any:
    if raw is None or (isinstance(raw, (str, int)) and not isinstance(raw, bool)):
        return raw
    raise ConfigError(f"raw item id {raw!r} ({type(raw).__name__}) cannot be written to JSON; "
                      "use str or int ids")


def _settings(model: Any) -> dict[str, Any]:
    dtl = model.dtl_kind if model.dtl_kind is not None else config_of(model.dtl, "dtl")
    return {"user_dim": model.dim, "objective": model.objective, "loss": model.loss_name,
            "num_negatives": model.num_negatives, "dtl": dtl,
            "id_fusion": None if model.id_fusion is None else model.id_fusion.mode,
            "id_dropout": 0.0 if model.id_fusion is None else model.id_fusion.dropout,
            "similarity": model.similarity, "temperature": model.temperature,
            "logq_correction": model.logq_correction, "policy": model.policy,
            "policy_args": model.policy_args}


def save(model: Any, folder: str | Path, include_base: bool = False,
         tokenizer: Any = None) -> Path:
    """Write ``model`` (a `TransRec`) as a folder `read`/`restore` rebuild (see the module).

    ``include_base`` also stores the frozen base encoders' weights, so loading needs nothing
    else; ``tokenizer`` replaces the one the text item encoder kept."""
    merged = sorted({a.set_name for _, _, a in iter_adapters(model) if getattr(a, "merged", 0)})
    if merged:
        raise AdapterStateError(f"adapter set(s) {merged} are merged into the base weights; "
                                "unmerge_adapters(model) before save_pretrained")
    config: dict[str, Any] = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "adarec_version": __version__,
        "torch_version": torch.__version__, "transrec": _settings(model),
        "user_encoder": config_of(model.user_encoder, "user encoder"),
        "item_encoder": config_of(model.item_encoder, "item encoder"),
    }
    bases = base_models(model)
    params = dict(model.named_parameters())
    saved: dict[str, Tensor] = {}
    left: dict[str, dict[str, Tensor]] = {b: {} for b in bases}
    for name, t in model.state_dict(keep_vars=True).items():
        base = _is_base(name, bases)
        if base is not None and not include_base and not (name in params
                                                          and params[name].requires_grad):
            left[base][name[len(base) + 1:]] = t
        else:
            saved[name] = t
    config["bases"] = {
        path: {"name_or_path": str(getattr(hf.config, "_name_or_path", "") or ""),
               "class": type(hf).__name__, "config": hf.config.to_dict(),
               "fingerprint": fingerprint(hf), "included": include_base,
               "digest": digest(left[path]), "left_out": len(left[path])}
        for path, hf in cast(dict[str, Any], bases).items()}
    anonymous = [p for p, ref in config["bases"].items() if not ref["name_or_path"]]
    if anonymous and not include_base:
        warnings.warn(f"the base encoder(s) at {anonymous} were built from a config (no path or "
                      "hub id): loading this folder needs base=; save with include_base=True "
                      "for a folder that loads alone", stacklevel=3)
    sets = []
    for root, module in adapter_roots(model).items():
        active = set(active_adapters(module))
        sets += [{"root": root, "name": name, "spec": spec.to_dict(), "active": name in active}
                 for name, spec in adapter_sets(module).items()]
    config["adapter_sets"] = sets
    own_dtls = [layer.to_record() for layer in set_dtls(model).values()]
    if own_dtls:
        config["set_dtls"] = own_dtls
    ids = model.item_ids
    config["items"] = {"n_items": model.n_items,
                       "ids": None if ids is None else [_json_id(i) for i in ids],
                       "texts": model.item_texts}
    preprocessors = preprocessors_of(model)
    if tokenizer is not None:
        key = next((k for k in preprocessors if k.endswith("tokenizer")), "item_encoder.tokenizer")
        preprocessors[key] = tokenizer
    config["preprocessors"] = {k: k for k in preprocessors}
    tensors: dict[str, Tensor] = {}
    storages: set[int] = set()
    for name, t in {**saved, **{FEATURE + k: v for k, v in features_of(model).items()}}.items():
        t = t.detach()
        ptr = t.untyped_storage().data_ptr()
        tensors[name] = t.clone() if ptr in storages else t  # safetensors refuses shared memory
        storages.add(ptr)
    config["tensors"] = {n: {"shape": list(t.shape),
                             "dtype": str(t.dtype).removeprefix("torch.")}
                         for n, t in tensors.items()}
    bound = config_digest(config)  # fails on an unserialisable setting before touching disk
    with atomic_folder(folder, CONFIG) as tmp:
        config["weights"] = write_weights(tmp, WEIGHTS, tensors, {CONFIG_DIGEST: bound})
        for sub, obj in preprocessors.items():
            obj.save_pretrained(str(tmp / sub))
        write_json(tmp / CONFIG, config)
    logger.info("saved %s: %d tensors (%s base tensors left to their own files)", folder,
                len(tensors), sum(len(v) for v in left.values()))
    return Path(folder)


# --------------------------------------------------------------------------------- loading
def _validate(config: dict[str, Any], where: str) -> dict[str, Any]:
    if config.get("format") != FORMAT:
        raise CheckpointError(f"{where}: format {config.get('format')!r}, expected {FORMAT!r}")
    version = _need(config, "format_version", int, where)
    if not 1 <= version <= FORMAT_VERSION:
        raise CheckpointError(
            f"{where} has format_version {version} (written by adarec "
            f"{config.get('adarec_version')}); this adarec {__version__} reads "
            f"1..{FORMAT_VERSION}: upgrade adarec to load it")
    for key in ("transrec", "user_encoder", "item_encoder", "items", "tensors", "weights"):
        _need(config, key, dict, where)
    _need(config, "adapter_sets", list, where)
    _need(config["weights"], "sha256", str, where)
    return config


def _upgrade_v1(config: dict[str, Any], tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Format 1 -> 2 in memory: the text encoder's base reference moves to ``bases``, features
    and the tokenizer get the item encoder's path."""
    item = config["item_encoder"]
    config["bases"] = {"item_encoder.model": item.pop("base")} if "base" in item else {}
    config["preprocessors"] = ({"item_encoder.tokenizer": config["tokenizer"]}
                               if config.get("tokenizer") else {})
    return {(FEATURE + "item_encoder." + k[len(FEATURE):] if k.startswith(FEATURE) else k): v
            for k, v in tensors.items()}


def _read(root: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The validated config and tensors of a folder, read as a consistent pair."""
    where = str(root / CONFIG)
    try:
        files = read_folder(root, (CONFIG,), lambda found: ((WEIGHTS, False),)
                            if CONFIG in found else ())
    except (FileNotFoundError, NotADirectoryError):
        files = {}
    except MissingFile:
        raise CheckpointError(f"{root / WEIGHTS} is missing: the folder is incomplete") from None
    if CONFIG not in files:
        if (root / "adapter_config.json").is_file():
            raise CheckpointError(f"{root} is an adapter checkpoint (save_adapters); load it "
                                  "into a built model with adarec.load_adapters")
        raise CheckpointError(f"{where} not found: not a TransRec folder (save_pretrained)")
    config = _validate(_parse_json(files[CONFIG], root / CONFIG), where)
    data = files[WEIGHTS]
    _check_sha256(data, config["weights"], root / WEIGHTS)
    if config["format_version"] >= 2:
        if not config_is_bound(data, config, root / WEIGHTS):
            raise CheckpointError(
                f"{where} was edited after it was written: its sha256 does not match the one "
                f"bound into {WEIGHTS} (every field is covered: settings, item map, adapter "
                "sets, base references); restore the original file, or load the folder, change "
                "the model through its methods (set_item_map, add_items, set_policy) and save "
                "it again")
    else:
        warnings.warn(f"{root} is a format-1 TransRec folder: it carries no digest of its JSON, "
                      "so hand edits are not detected; save it again to upgrade", stacklevel=4)
    tensors = weights_from_bytes(data, root / WEIGHTS)
    _check_header(config, tensors, where)
    if config["format_version"] == 1:
        tensors = _upgrade_v1(config, tensors)
    return config, tensors


def read_config(folder: str | Path) -> dict[str, Any]:
    """The validated ``transrec_config.json`` of a folder (upgraded to the current format)."""
    return _read(Path(folder))[0]


def _check_header(config: dict[str, Any], tensors: dict[str, Tensor], where: str) -> None:
    diffs = tensor_record_differences(config["tensors"], tensors)
    if diffs:
        raise CheckpointError(f"{where}: JSON and weights disagree:\n  " + "\n  ".join(diffs))


def _model_class(ref: dict[str, Any]) -> Any:
    """The transformers class a base was saved as: a top-level name, or one of its model type's
    modeling module (Whisper's encoder, ``WhisperEncoder``, is not exported at the top)."""
    name = str(ref.get("class"))
    cls = getattr(transformers, name, None)
    if cls is None:
        kind = str(ref.get("config", {}).get("model_type", "")).replace("-", "_")
        try:
            module = importlib.import_module(f"transformers.models.{kind}.modeling_{kind}")
        except ImportError:
            return None
        cls = getattr(module, name, None)
    return cls


def _load_base(ref: dict[str, Any], base: Any, where: str, local_files_only: bool) -> nn.Module:
    cls = _model_class(ref)
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
        return cast(nn.Module, cast(Any, cls).from_pretrained(
            str(source), local_files_only=local_files_only))
    except OSError as exc:
        raise CheckpointError(
            f"cannot load the base encoder {source!r} ({exc.__class__.__name__}: "
            f"{str(exc)[:200]}); pass base= (a model or a local path)"
            + ("" if not local_files_only else ", or local_files_only=False to download it")
        ) from None


def _bases(config: dict[str, Any], base: Any, weights: Mapping[str, Tensor], root: Path,
           check_base: bool, local_files_only: bool) -> dict[str, nn.Module]:
    refs: dict[str, Any] = config.get("bases") or {}
    if isinstance(base, Mapping):
        unknown = sorted(set(base) - set(refs))
        if unknown:
            raise ConfigError(f"base= names {unknown}; the folder's base encoders are "
                              f"{sorted(refs)}")
        given = dict(base)
    elif base is not None and len(refs) != 1:
        raise ConfigError(f"the folder has {len(refs)} base encoders {sorted(refs)}: pass base= "
                          "as a dict from these paths to models or local paths")
    else:
        given = dict.fromkeys(refs, base)
    models: dict[str, nn.Module] = {}
    for path, ref in refs.items():
        where = f"{root / CONFIG} ({path})"
        hf = _load_base(ref, given.get(path), where, local_files_only)
        diffs = compare_fingerprint(ref.get("fingerprint") or {}, hf)
        if diffs:
            raise CheckpointError(f"{root} was saved with another base encoder at {path}:\n  "
                                  + "\n  ".join(diffs))
        left = {n: t for n, t in hf.state_dict().items()
                if ADAPTER_PART not in n and f"{path}.{n}" not in weights}
        if check_base and not ref.get("included") and digest(left) != ref.get("digest"):
            raise CheckpointError(
                f"{root}: the base encoder {ref.get('name_or_path')!r} at {path} has the right "
                "architecture but other weights than the model was saved with (its digest "
                "differs): pass the same base, save with include_base=True, or check_base=False "
                "to override")
        models[path] = hf
    return models


@dataclass
class Loaded:
    """A folder's parts, rebuilt but not yet assembled into a model."""

    root: Path
    config: dict[str, Any]
    item_encoder: nn.Module
    user_encoder: nn.Module
    settings: dict[str, Any]
    weights: dict[str, Tensor] = field(default_factory=dict)
    set_dtls: dict[str, tuple[str | nn.Module, bool]] = field(default_factory=dict)
    """Set name -> (its own DTL: a kind name or the rebuilt module, whether it is active)."""


def read(folder: str | Path, base: Any = None, check_base: bool = True,
         local_files_only: bool = True) -> Loaded:
    """Read and verify a folder and rebuild its parts (see `TransRec.from_pretrained`)."""
    root = Path(folder)
    config, tensors = _read(root)
    weights = {k: v for k, v in tensors.items() if not k.startswith(FEATURE)}
    features = {k[len(FEATURE):]: v for k, v in tensors.items() if k.startswith(FEATURE)}
    models = _bases(config, base, weights, root, check_base, local_files_only)
    source = PartSource(root, "", features, weights, models, config.get("preprocessors") or {})
    item = build_part(config["item_encoder"], source.child("item_encoder"))
    user = build_part(config["user_encoder"], source.child("user_encoder"))
    settings = {k: v for k, v in config["transrec"].items() if k in SETTINGS}
    if isinstance(settings.get("dtl"), dict):
        settings["dtl"] = build_part(settings["dtl"], source.child("dtl"))
    own: dict[str, tuple[str | nn.Module, bool]] = {}
    for rec in config.get("set_dtls") or []:
        name, part = (rec.get("name"), rec.get("dtl")) if isinstance(rec, dict) else (None, None)
        if not isinstance(name, str) or not isinstance(part, (str, dict)):
            raise CheckpointError(f"{root / CONFIG}: set DTL record {rec!r} needs a set name and "
                                  "a DTL kind or part config"[:300])
        if isinstance(part, dict):
            part = build_part(part, source.child(f"dtl.{ADAPTERS_ATTR}.{name}.dtl"))
        own[name] = (part, bool(rec.get("active")))
    return Loaded(root, config, item, user, settings, weights, own)


def restore(model: Any, loaded: Loaded, map_location: str | torch.device = "cpu") -> None:
    """Inject the recorded adapter sets into ``model`` (built from ``loaded``'s parts), load
    the weights, apply the policy and item map; eval mode on ``map_location``."""
    config, where = loaded.config, str(loaded.root / CONFIG)
    roots = adapter_roots(model)
    active: dict[str, list[str]] = {}
    for rec in config["adapter_sets"]:
        if rec.get("root") not in roots:
            raise CheckpointError(f"{where}: adapter set {rec.get('name')!r} at unknown root "
                                  f"{rec.get('root')!r}")
        inject_adapters(roots[rec["root"]], AdapterSpec.from_dict(rec["spec"]), rec["name"],
                        freeze=False)
        if rec.get("active"):
            active.setdefault(rec["root"], []).append(rec["name"])
    for name, module in roots.items():
        if adapter_sets(module):
            set_active_adapters(module, active.get(name, []))
    for name, (part, _) in loaded.set_dtls.items():
        add_set_dtl(model, name, part)
    for name, layer in set_dtls(model).items():
        layer.active = loaded.set_dtls[name][1]
    _load_weights(model, loaded.weights, base_models(model), where)
    policy = config["transrec"].get("policy")
    if policy is not None:
        model.set_policy(policy, **(config["transrec"].get("policy_args") or {}))
    items = config["items"]
    if items.get("ids") is not None:
        model.set_item_map(items["ids"], items.get("texts"))
    elif items.get("texts") is not None:
        model.item_texts = list(items["texts"])
    model.to(map_location)
    model.eval()


def _load_weights(model: nn.Module, weights: dict[str, Tensor], bases: Mapping[str, nn.Module],
                  where: str) -> None:
    """Copy ``weights`` in; every non-base tensor of the model must be there, nothing else."""
    state = model.state_dict(keep_vars=True)
    expected = {n for n in state if _is_base(n, bases) is None}
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


__all__ = ["CONFIG", "FORMAT", "FORMAT_VERSION", "WEIGHTS", "Loaded", "adapter_roots",
           "base_models", "digest", "read", "read_config", "restore", "save"]
