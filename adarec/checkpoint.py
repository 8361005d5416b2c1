"""Adapter-only checkpoints and full model states: safetensors + JSON folders, written atomically.

Why a folder of two files: the tensors go to safetensors (no pickle, so loading a checkpoint can
never run code) and everything a loader must *check* goes to a readable JSON file: the format
version, the adapter specs and where they were injected, a fingerprint of the base model (its
architecture and a digest of each of its weights), the tensor list and a sha256 of the weights.
The two files vouch for each other: the JSON records the safetensors file's sha256, and the
safetensors metadata records a sha256 of the rest of the JSON, so an edited spec field is caught
like a flipped byte. A checkpoint is refused, with the differences listed, rather than
half-loaded: a wrong base model (another architecture or other weights), a corrupted, truncated
or edited file, or missing tensors are errors, not silent partial loads.

Tensor names are full parameter names relative to the model passed (``encoder.layer.0...``), so a
composite model (an item encoder and a sequence model, each with adapter sets) saves and loads
like any other module. Shared tensors are stored once, under their first name.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import safetensors.torch
import torch
from safetensors.torch import load as safetensors_from_bytes
from torch import nn

from .adapters.base import Mergeable
from .errors import AdapterStateError, CheckpointError, SpecError
from .folders import MissingFile, atomic_folder, read_folder, target_of
from .freezing import adapter_parameters
from .inject import (
    ADAPTERS_ATTR,
    adapter_sets,
    eject_adapters,
    inject_adapters,
    iter_adapters,
    set_active_adapters,
)
from .spec import AdapterSpec
from .version import __version__

FORMAT_VERSION = 2
"""Bumped on any change an older reader would misread; readers refuse versions newer than theirs.
2: base-weight digests (``base_model.weights``) and the config digest in the safetensors
metadata are required; format 1 folders still load, with a warning that neither is checked."""
CONFIG_DIGEST = "adarec_config_sha256"
"""safetensors metadata key: sha256 of the JSON config (all of it but its ``weights`` record)."""
ADAPTER_FORMAT = "adarec-adapters"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
STATE_FORMAT = "adarec-model-state"
STATE_CONFIG = "model_state.json"
STATE_WEIGHTS = "model.safetensors"
_FILES = {
    ADAPTER_FORMAT: (ADAPTER_CONFIG, ADAPTER_WEIGHTS),
    STATE_FORMAT: (STATE_CONFIG, STATE_WEIGHTS),
}
PathLike = str | os.PathLike[str]


@dataclass(repr=False)
class LoadResult:
    """What a load did not match. Empty lists everywhere means an exact load."""

    missing: list[str] = field(default_factory=list)
    """Tensors the model expects (adapter parameters of the loaded sets) that the file lacks."""
    unexpected: list[str] = field(default_factory=list)
    """Tensors in the file with no parameter of that name in the model."""
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    """``(name, shape in the file, shape in the model)``; these tensors were not loaded."""
    conflicts: list[str] = field(default_factory=list)
    """Base-model fingerprint, base-weight, spec or site differences."""
    loaded: list[str] = field(default_factory=list)
    sets: list[str] = field(default_factory=list)
    active: list[str] = field(default_factory=list)
    """The adapter sets switched on after the load."""
    other_base_weights: list[str] = field(default_factory=list)
    """Base tensors whose values (or dtype) differ from the ones the checkpoint was saved with
    (listed even when ``allow_other_base_weights=True`` let the load go ahead)."""

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched or self.conflicts)

    def __repr__(self) -> str:
        """A short summary (counts and the first few names), not every tensor name."""

        def few(names: Sequence[Any]) -> str:
            shown = ", ".join(str(n[0] if isinstance(n, tuple) else n) for n in names[:3])
            return f"{len(names)} [{shown}{', ...' if len(names) > 3 else ''}]"

        parts = [f"ok={self.ok}", f"sets={self.sets}", f"loaded={few(self.loaded)}"]
        for name in ("missing", "unexpected", "mismatched", "conflicts"):
            if getattr(self, name):
                parts.append(f"{name}={few(getattr(self, name))}")
        return f"LoadResult({', '.join(parts)})"

    def describe(self) -> str:
        parts = [f"base model differs: {c}" for c in self.conflicts]
        parts += [f"missing tensor: {n}" for n in self.missing]
        parts += [f"unexpected tensor: {n}" for n in self.unexpected]
        parts += [
            f"shape mismatch: {n}: checkpoint {list(a)}, model {list(b)}"
            for n, a, b in self.mismatched
        ]
        return "\n  ".join(parts)


# ------------------------------------------------------------------------------ writing
_NUMBERS = re.compile(r"\[\n\s*(-?[\d.eE+-]+(?:,\n\s*-?[\d.eE+-]+)*)\n\s*\]")


def write_json(file: Path, obj: Any) -> None:
    """Indented JSON with lists of numbers (shapes) kept on one line, for people to read."""
    text = json.dumps(obj, indent=2, allow_nan=False)
    text = _NUMBERS.sub(lambda m: "[" + re.sub(r",\n\s*", ", ", m[1]) + "]", text)
    file.write_text(text + "\n", encoding="utf-8")


def write_weights(folder: Path, filename: str, tensors: dict[str, torch.Tensor],
                  metadata: dict[str, str] | None = None) -> dict[str, Any]:
    """Write a safetensors file; returns its ``{"file", "bytes", "sha256"}`` record."""
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    data = safetensors.torch.save(cpu, metadata={"format": "pt", **(metadata or {})})
    _write_bytes(folder / filename, data)
    return {"file": filename, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _write_bytes(file: Path, data: bytes) -> None:
    """Create ``file`` with the process umask (like the JSON; safetensors' own writer makes
    its files 0600) and write ``data``."""
    with open(file, "xb") as f:
        f.write(data)


def config_digest(config: Mapping[str, Any]) -> str:
    """sha256 of a checkpoint config in canonical JSON, without its ``weights`` record (which
    holds the weights file's own sha256, the other half of the binding)."""
    body = {k: v for k, v in config.items() if k != "weights"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


# ---------------------------------------------------------------------------------- reading
def read_json(file: Path) -> dict[str, Any]:
    """Parse a JSON object, turning every failure into a `CheckpointError`."""
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(_not_found(file)) from None
    except OSError as exc:
        raise CheckpointError(f"{file} is not valid JSON: {exc}") from None
    return _parse_json(data, file)


def read_weights(file: Path, sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Read a safetensors file whole (checked against ``sha256`` when given) onto the CPU."""
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(_missing_weights(file)) from None
    if sha256 is not None:
        _check_sha256(data, {"sha256": sha256}, file)
    try:
        return safetensors_from_bytes(data)  # safetensors' own parser: never pickle
    except Exception as exc:  # safetensors raises its own error types and a few builtin ones
        raise CheckpointError(f"{file} is not a readable safetensors file: {exc}") from None


def _not_found(file: Path) -> str:
    folder = file.parent
    msg = f"no {file.name} in {folder}" if folder.is_dir() else f"no checkpoint at {folder}"
    aside = sorted(folder.parent.glob(f".{folder.name}.old-*")) if folder.parent.is_dir() else []
    if aside:
        msg += f" (a save was interrupted while swapping folders; the previous one is {aside[-1]})"
    return msg


def _need(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = obj.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise CheckpointError(f"{where}: field {key!r} is missing or malformed: {value!r}")
    return value


def checkpoint_info(path: PathLike) -> dict[str, Any]:
    """The validated JSON of an adarec checkpoint folder (either format), without loading it.

    Reads the JSON and the weights file's header only; an edited JSON is refused here too."""
    config, _ = _read_folder(path, header_only=True)
    return config


def _read_folder(path: PathLike, header_only: bool) -> tuple[dict[str, Any], bytes]:
    """The validated config and the weights file (whole, or its header) of one folder, read as
    a consistent pair even while a writer replaces the folder (`adarec.folders`)."""
    folder = Path(path)

    def weights_of(found: dict[str, bytes]) -> tuple[tuple[str, bool], ...]:
        for config_name in (ADAPTER_CONFIG, STATE_CONFIG):
            if config_name in found:
                try:
                    fmt = json.loads(found[config_name]).get("format")
                except (ValueError, AttributeError):
                    return ()  # reported by the validation below
                if fmt in _FILES and _FILES[fmt][0] == config_name:
                    return ((_FILES[fmt][1], header_only),)
                return ()
        return ()

    try:
        files = read_folder(folder, (ADAPTER_CONFIG, STATE_CONFIG), weights_of)
    except FileNotFoundError:
        raise CheckpointError(_not_found(folder / ADAPTER_CONFIG)) from None
    except MissingFile as exc:
        raise CheckpointError(_missing_weights(exc.file)) from None
    except NotADirectoryError:
        raise CheckpointError(f"{folder} is not a folder") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {folder}: {exc}") from None
    config_name = next((n for n in (ADAPTER_CONFIG, STATE_CONFIG) if n in files), None)
    if config_name is None:
        raise CheckpointError(_not_found(folder / ADAPTER_CONFIG))
    config = _validate(_parse_json(files[config_name], folder / config_name), folder, config_name)
    weights_name = _FILES[config["format"]][1]
    data = files[weights_name]
    if not header_only:
        _check_sha256(data, config["weights"], folder / weights_name)
    if config["format_version"] >= 2:
        metadata = _safetensors_metadata(data, folder / weights_name)
        if metadata.get(CONFIG_DIGEST) != config_digest(config):
            raise CheckpointError(
                f"{folder / config_name} was edited after it was written: its sha256 does not "
                f"match the one bound into {weights_name} when both were saved (every field is "
                "covered: specs, active flags, tensor records, the base-model fingerprint); "
                "restore the original file or save the checkpoint again"
            )
    return config, data


def _parse_json(data: bytes, file: Path) -> dict[str, Any]:
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{file} is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{file} must hold a JSON object, got {type(obj).__name__}")
    return obj


def _check_sha256(data: bytes, record: dict[str, Any], file: Path) -> None:
    if hashlib.sha256(data).hexdigest() != record["sha256"]:
        raise CheckpointError(
            f"{file} is corrupted or truncated: its sha256 does not match the one recorded when it "
            f"was written ({len(data)} bytes on disk)"
        )
    if "bytes" in record and record["bytes"] != len(data):
        raise CheckpointError(f"{file.parent}: JSON and weights disagree: the JSON records "
                              f"{record['bytes']} bytes, the file has {len(data)}")


def _safetensors_metadata(data: bytes, file: Path) -> dict[str, Any]:
    """The ``__metadata__`` of a safetensors file from its first bytes (8-byte little-endian
    header length, then the JSON header), as safetensors defines them."""
    n = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
    try:
        if not 0 <= n <= len(data) - 8:
            raise ValueError(f"header length {n}")
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
        metadata = header.get("__metadata__") or {}
        if not isinstance(metadata, dict):
            raise ValueError("__metadata__ is not an object")
    except (ValueError, UnicodeDecodeError, AttributeError) as exc:
        raise CheckpointError(f"{file} is not a readable safetensors file: {exc}") from None
    return metadata


def _missing_weights(file: Path) -> str:
    pickles = sorted(p.name for p in file.parent.glob("*.bin")) if file.parent.is_dir() else []
    hint = f"; {pickles} are never loaded: adarec does not unpickle" if pickles else ""
    return _not_found(file) + hint


def _validate(config: dict[str, Any], folder: Path, config_name: str) -> dict[str, Any]:
    """Structure and version checks of a parsed config (formats 1 and 2)."""
    where = str(folder)
    if "peft_type" in config and "format" not in config:
        raise CheckpointError(
            f"{folder} is a peft adapter folder, not an adarec checkpoint; read it with "
            "adarec.interop.import_peft_lora"
        )
    fmt = config.get("format")
    if fmt not in _FILES or _FILES[fmt][0] != config_name:
        raise CheckpointError(f"{where}: unknown checkpoint format {fmt!r} in {config_name}")
    version = _need(config, "format_version", int, where)
    if version > FORMAT_VERSION or version < 1:
        raise CheckpointError(
            f"{where} has format_version {version} (written by adarec "
            f"{config.get('adarec_version')}); this adarec {__version__} reads format_version 1.."
            f"{FORMAT_VERSION}: upgrade adarec to load it"
        )
    base = _need(config, "base_model", dict, where)
    if version >= 2:
        weights = _need(base, "weights", dict, f"{where}, base_model")
        for name, rec in weights.items():
            if not isinstance(rec, str) or ":" not in rec:
                raise CheckpointError(f"{where}: malformed base weight digest for {name!r}: "
                                      f"{rec!r}")
    sets = _need(config, "adapter_sets", list, where)
    for s in sets:
        if not isinstance(s, dict):
            raise CheckpointError(f"{where}: malformed adapter set entry {s!r}")
        for key, kind in (("name", str), ("root", str), ("spec", dict), ("active", bool),
                          ("merged", bool), ("sites", list)):
            _need(s, key, kind, f"{where}, adapter set {s.get('name')!r}")
    tensors = _need(config, "tensors", dict, where)
    for name, info in tensors.items():
        if not isinstance(info, dict) or not isinstance(info.get("shape"), list):
            raise CheckpointError(f"{where}: malformed entry for tensor {name!r}: {info!r}")
    weights = _need(config, "weights", dict, where)
    _need(weights, "sha256", str, where)
    if _need(weights, "file", str, where) != _FILES[fmt][1]:
        raise CheckpointError(f"{where}: weights file must be {_FILES[fmt][1]}")
    return config


# ------------------------------------------------------------------------------ fingerprint
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


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _tensor_digest(t: torch.Tensor) -> str:
    """``"<dtype>:<first 128 bits of sha256>"`` of a tensor's bytes in C order. Exact bytes,
    no float arithmetic: the same on every machine and at any thread count (the bytes are
    little-endian, as on every platform torch ships for)."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    raw = t.contiguous().reshape(-1).view(torch.uint8).numpy()
    return f"{_dtype_name(t)}:{hashlib.sha256(raw.data).hexdigest()[:32]}"


def weights_digest(tensors: Mapping[str, torch.Tensor], workers: int | None = None
                   ) -> dict[str, str]:
    """`_tensor_digest` of each tensor, hashed in parallel threads (hashlib releases the GIL
    on large buffers); each digest depends only on its tensor, so the result does not depend on
    the thread count. A BERT-base (110 M float32 parameters) takes ~0.2 s on 2 cores with SHA
    instructions (``benchmarks/bench_fingerprint.py``)."""
    order = sorted(tensors, key=lambda n: -tensors[n].numel())  # big ones first: better balance
    workers = max(1, min(workers or 8, len(order), os.cpu_count() or 1))
    if workers == 1:
        return {n: _tensor_digest(tensors[n]) for n in sorted(tensors)}
    with ThreadPoolExecutor(workers) as pool:
        digests = dict(zip(order, pool.map(lambda n: _tensor_digest(tensors[n]), order),
                           strict=True))
    return {n: digests[n] for n in sorted(digests)}


def _base_tensors(model: nn.Module, saved: Iterable[str]) -> dict[str, torch.Tensor]:
    """What the saved tensors were trained on top of: every parameter and persistent buffer
    that is neither an adapter's nor in the file (non-persistent buffers are data, such as a
    recommender's item features, which may legitimately change)."""
    skip = set(saved)
    adapters = {id(p) for p in adapter_parameters(model).values()}
    named = {**dict(model.named_parameters()), **_persistent_buffers(model)}
    return {n: t for n, t in named.items()
            if n not in skip and id(t) not in adapters and f".{ADAPTERS_ATTR}." not in f".{n}."}


def _compare_base_weights(saved: dict[str, str], model: nn.Module) -> tuple[list[str], list[str]]:
    """``(conflict lines, names)`` of base tensors that are missing, of another dtype, or hold
    other values than when the checkpoint was saved."""
    if not saved:
        return [], []
    named: dict[str, torch.Tensor] = dict(model.named_parameters(remove_duplicate=False))
    named.update(_persistent_buffers(model, remove_duplicate=False))
    missing = [n for n in saved if n not in named]
    dtypes = [(n, saved[n].split(":", 1)[0], _dtype_name(named[n])) for n in saved
              if n in named and saved[n].split(":", 1)[0] != _dtype_name(named[n])]
    other_dtype = {n for n, _, _ in dtypes}
    ours = weights_digest({n: named[n] for n in saved if n in named and n not in other_dtype})
    differ = [n for n, d in ours.items() if d != saved[n]]
    total = len(saved)

    def some(names: list[str]) -> str:
        return ", ".join(names[:5]) + (f", ... ({len(names) - 5} more)" if len(names) > 5 else "")

    way_out = ("load the base model the adapters were trained on (for a transferred model, its "
               "source state first: load_model_state or load_transferable_state_dict), or pass "
               "allow_other_base_weights=True to load anyway")
    lines = []
    if differ:
        lines.append(f"base weights differ from those the checkpoint was saved with: "
                     f"{len(differ)} of {total} base tensors hold other values ({some(differ)}); "
                     + way_out)
    if dtypes:
        shown = "; ".join(f"{n}: checkpoint {a}, model {b}" for n, a, b in dtypes[:3])
        lines.append(f"base weights differ in dtype: {len(dtypes)} of {total} base tensors "
                     f"({shown}{'; ...' if len(dtypes) > 3 else ''}), so their values cannot be "
                     "compared; cast the model back before loading, or pass "
                     "allow_other_base_weights=True")
    if missing:
        lines.append(f"base weights differ: {len(missing)} of {total} base tensors are not in "
                     f"the model ({some(missing)}); " + way_out)
    return lines, sorted([*differ, *other_dtype, *missing])


# ------------------------------------------------------------------------------ adapter sets
def _injection_root(mname: str, target: str) -> str:
    """The module a set was injected into, from a hooked module's name and its site target.

    The hooked module is the target itself, or for an ``nn.MultiheadAttention``'s out_proj the
    MHA holding it (then ``target`` names a child of the hooked module).
    """
    for full in (mname, f"{mname}.{target.rsplit('.', 1)[-1]}"):
        if full == target:
            return ""
        if full.endswith("." + target):
            return full[: -len(target) - 1]
    raise AdapterStateError(f"cannot tell where the set at {mname} (target {target}) was injected")


def _groups(model: nn.Module, names: set[str] | None) -> dict[tuple[str, str], dict[str, Any]]:
    """Adapter sets keyed by (injection root, set name): one set name may live in several roots."""
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    per_module: dict[str, list[tuple[str, str]]] = {}
    for mname, _, adapter in iter_adapters(model):
        if names is not None and adapter.set_name not in names:
            continue
        root = _injection_root(mname, adapter.site.target)
        key = (root, adapter.set_name)
        g = groups.setdefault(key, {
            "name": adapter.set_name, "root": root, "spec": adapter.spec,
            "active": adapter.active, "merged": False, "sites": [], "adapters": [],
        })
        g["merged"] |= bool(getattr(adapter, "merged", False))
        g["sites"].append({**asdict(adapter.site), "module": mname})
        g["adapters"].append(adapter)
        per_module.setdefault(mname, []).append(key)
    return {k: groups[k] for k in _injection_order(list(groups), per_module.values())}


def _injection_order(
    keys: list[tuple[str, str]], stacks: Iterable[list[tuple[str, str]]]
) -> list[tuple[str, str]]:
    """Order sets so that re-injecting them rebuilds every module's adapter stack in the same
    order (adapters on one module run in sequence, so their order changes the output)."""
    after: dict[tuple[str, str], set[tuple[str, str]]] = {k: set() for k in keys}
    for stack in stacks:
        for earlier, later in itertools.pairwise(stack):
            after[later].add(earlier)
    order: list[tuple[str, str]] = []
    while len(order) < len(keys):
        left = [k for k in keys if k not in order]
        ready = [k for k in left if after[k] <= set(order)]
        order.append((ready or left)[0])  # no order fits every stack: keep first-seen order
    return order


def _set_records(groups: dict[tuple[str, str], dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**{k: v for k, v in g.items() if k != "adapters"}, "spec": g["spec"].to_dict()}
            for g in groups.values()]


def follow_training_mode(model: nn.Module, name: str) -> None:
    """New adapter modules start in training mode; put set ``name`` in its host module's mode so
    a model loaded for evaluation does not run adapter dropout."""
    for _, module, adapter in iter_adapters(model):
        if adapter.set_name == name:
            getattr(module, ADAPTERS_ATTR).train(module.training)


def _canonical(model: nn.Module) -> dict[int, str]:
    """id(parameter) -> its first name, the one a shared parameter is stored under."""
    return {id(p): n for n, p in model.named_parameters()}  # named_parameters() dedupes


def _restore_sets(
    model: nn.Module, records: list[dict[str, Any]], conflicts: list[str]
) -> list[tuple[nn.Module, str]]:
    """Inject the recorded sets that are absent; note spec/site differences in ``conflicts``.

    Returns the (root module, name) pairs injected, so a refused load can take them out again.
    """
    specs = []
    for rec in records:
        try:
            specs.append(AdapterSpec.from_dict(rec["spec"]))
        except SpecError as exc:
            label = f"adapter set {rec['name']!r}"
            raise CheckpointError(f"{label} has an invalid spec: {exc}") from None
    injected: list[tuple[nn.Module, str]] = []
    for rec, spec in zip(records, specs, strict=True):
        name, root = rec["name"], rec["root"]
        label = f"adapter set {name!r}" + (f" at {root!r}" if root else "")
        try:
            root_module = model.get_submodule(root)
        except AttributeError:
            conflicts.append(f"{label}: the model has no module {root!r}")
            continue
        present = adapter_sets(root_module)
        if name in present:
            if present[name] != spec:
                conflicts.append(f"{label}: the model's set has another spec: {present[name]}")
                continue
        else:
            try:  # freeze=False: the user's requires_grad flags are theirs
                inject_adapters(root_module, spec, name, freeze=False, activate=False)
            except Exception as exc:  # the spec does not fit this model
                conflicts.append(f"{label}: cannot inject it into this model: {exc}")
                continue
            injected.append((root_module, name))
            follow_training_mode(root_module, name)
        ours = {a.site.target for _, _, a in iter_adapters(root_module) if a.set_name == name}
        theirs = {s.get("target") for s in rec["sites"]}
        if ours != theirs:
            conflicts.append(
                f"{label}: sites differ: only in checkpoint {sorted(map(str, theirs - ours))}, "
                f"only in model {sorted(ours - theirs)}"
            )
    return injected


# ------------------------------------------------------------------------------- public API
def save_adapters(
    model: nn.Module,
    path: PathLike,
    name: str | Sequence[str] | None = None,
    extra_trainable: bool = True,
) -> Path:
    """Save adapter set(s) ``name`` (default: all) of ``model`` as a folder; returns its path.

    With ``extra_trainable`` every other parameter with ``requires_grad=True`` (tuned LayerNorms,
    a head, a recommender's user encoder) is saved too, so nothing that was trained is lost.
    Every other parameter and persistent buffer is the base the file was trained on: its digest
    is recorded, and `load_adapters` refuses a base with other values. Merged LoRA sets are
    refused: their delta lives inside base weights this file does not hold.
    """
    present = adapter_sets(model)
    wanted = None if name is None else ({name} if isinstance(name, str) else set(name))
    if not present:
        raise AdapterStateError(
            f"{type(model).__name__} has no adapter sets; use save_model_state for a full save"
        )
    if wanted is not None and wanted - set(present):
        raise AdapterStateError(
            f"no adapter set named {sorted(wanted - set(present))}; sets present: {list(present)}"
        )
    groups = _groups(model, wanted)
    merged = [g["name"] for g in groups.values() if g["merged"]]
    if merged:
        raise AdapterStateError(
            f"adapter set(s) {merged} are merged into the base weights; unmerge_adapters(model) "
            "before saving them"
        )
    canonical = _canonical(model)
    params = dict(model.named_parameters())
    owner = {id(p): g["name"] for g in groups.values() for a in g["adapters"]
             for p in a.parameters()}
    all_adapter = {id(p) for p in adapter_parameters(model).values()}
    tensors: dict[str, torch.Tensor] = {}
    info: dict[str, dict[str, Any]] = {}
    for pid, pname in canonical.items():
        p = params[pname]
        if pid in owner and pid in all_adapter:
            kind, set_name = "adapter", owner[pid]
        elif extra_trainable and p.requires_grad and pid not in all_adapter:
            kind, set_name = "trainable", None
        else:
            continue
        tensors[pname] = p
        info[pname] = {"shape": list(p.shape), "dtype": str(p.dtype).removeprefix("torch."),
                       "requires_grad": p.requires_grad, "kind": kind, "set": set_name}
    modules = sorted({s["module"] for g in groups.values() for s in g["sites"]}
                     | {_join(g["root"], s["entry"]) for g in groups.values() for s in g["sites"]})
    config = {
        "format": ADAPTER_FORMAT,
        "format_version": FORMAT_VERSION,
        "adarec_version": __version__,
        "torch_version": torch.__version__,
        "base_model": {**fingerprint(model, modules),
                       "weights": weights_digest(_base_tensors(model, tensors))},
        "adapter_sets": _set_records(groups),
        "extra_trainable": extra_trainable,
        "tensors": info,
    }
    return _write(path, config, tensors, ADAPTER_CONFIG, ADAPTER_WEIGHTS)


def _join(root: str, rel: str) -> str:
    return f"{root}.{rel}" if root and rel else root or rel


def _write(path: PathLike, config: dict[str, Any], tensors: dict[str, torch.Tensor],
           config_name: str, weights_name: str) -> Path:
    digest = config_digest(config)  # also fails on an unserialisable spec before touching disk
    existed = target_of(path).exists()
    try:
        with atomic_folder(path, config_name) as tmp:
            config["weights"] = write_weights(tmp, weights_name, tensors, {CONFIG_DIGEST: digest})
            write_json(tmp / config_name, config)
    except OSError as exc:
        kept = "; the checkpoint that was there is unchanged" if existed else ""
        raise CheckpointError(f"could not write the checkpoint {path}: {exc}{kept}") from exc
    return Path(path)


def _start_load(
    model: nn.Module, path: PathLike, fmt: str, strict: bool, other: str,
    allow_other_base_weights: bool, activate: str | Sequence[str] | None,
) -> tuple[dict[str, Any], dict[str, torch.Tensor], LoadResult, list[tuple[nn.Module, str]]]:
    """The steps both loaders share: read and verify the folder, compare the fingerprint and
    the base weights (refused under ``strict``), refuse merged models and unknown set names to
    activate, inject the recorded sets where absent."""
    config, tensors = _read(path, fmt)
    result = LoadResult(conflicts=compare_fingerprint(config["base_model"], model))
    lines, result.other_base_weights = _compare_base_weights(
        config["base_model"].get("weights") or {}, model)
    if not allow_other_base_weights:
        result.conflicts += lines
    if strict and result.conflicts:
        raise CheckpointError(f"{path} was saved from {other}:\n  {result.describe()}")
    _refuse_merged(model)
    if activate is not None:
        known = set(adapter_sets(model)) | {rec["name"] for rec in config["adapter_sets"]}
        wanted = [activate] if isinstance(activate, str) else list(activate)
        if set(wanted) - known:
            raise AdapterStateError(f"cannot activate {sorted(set(wanted) - known)}: neither the "
                                    f"model nor {path} has such a set; sets: {sorted(known)}")
    injected = _restore_sets(model, config["adapter_sets"], result.conflicts)
    return config, tensors, result, injected


def load_adapters(
    model: nn.Module,
    path: PathLike,
    strict: bool = True,
    *,
    allow_other_base_weights: bool = False,
    activate: str | Sequence[str] | None = None,
    restore_requires_grad: bool = False,
) -> LoadResult:
    """Load a `save_adapters` folder into ``model``, injecting the saved sets where absent.

    Everything is checked before any weight changes. With ``strict`` any difference (another
    base model: architecture or weights; missing, unexpected or mis-shaped tensors) raises
    `CheckpointError` listing them and leaves ``model`` as it was; with ``strict=False`` what
    matches is loaded and the rest is reported in the returned `LoadResult` (and a warning).
    ``allow_other_base_weights=True`` loads onto a base whose weights differ from the ones the
    adapters were trained on (architecture checks still apply).

    Afterwards exactly the checkpoint's sets that were active when it was saved are switched on
    (one set, usually; when it recorded none active, its first set) and every other set in the
    model is off; ``activate`` names other set(s) instead. ``requires_grad`` flags of the
    parameters the model already had are left alone (adapters the load injects take their saved
    flags); ``restore_requires_grad=True`` gives every tensor in the file its saved flag and
    freezes everything else, the state `save_adapters` saw.
    """
    config, tensors, result, injected = _start_load(
        model, path, ADAPTER_FORMAT, strict, "another base model", allow_other_base_weights,
        activate)
    expected: set[str] = set()
    for rec in config["adapter_sets"]:
        try:
            root_module = model.get_submodule(rec["root"])
        except AttributeError:
            continue
        for rel in adapter_parameters(root_module, rec["name"]):
            expected.add(_join(rec["root"], rel))
    result = _finish(model, path, config, tensors, expected, result, injected, strict,
                     restore_requires_grad)
    if restore_requires_grad:
        loaded = set(result.loaded)
        for n, p in model.named_parameters():
            if n not in loaded:
                p.requires_grad_(False)
    result.active = _activate(model, config, activate, first_if_none=True)
    return result


def _activate(model: nn.Module, config: dict[str, Any], activate: str | Sequence[str] | None,
              first_if_none: bool) -> list[str]:
    """Switch on ``activate``, or by default the sets the checkpoint recorded active (with
    ``first_if_none``, its first set when it recorded none); every other set goes off."""
    present = adapter_sets(model)
    if activate is not None:
        names = [activate] if isinstance(activate, str) else list(activate)
    else:
        records = config["adapter_sets"]
        names = list(dict.fromkeys(r["name"] for r in records if r["active"]))
        if not names and first_if_none and records:
            names = [records[0]["name"]]
        names = [n for n in names if n in present]  # a set strict=False could not restore
    set_active_adapters(model, names or None)
    return names


def _refuse_merged(model: nn.Module) -> None:
    merged = sorted({a.set_name for _, _, a in iter_adapters(model) if getattr(a, "merged", 0)})
    if merged:
        raise AdapterStateError(
            f"adapter set(s) {merged} are merged; unmerge_adapters(model) before loading weights"
        )


def _finish(
    model: nn.Module, path: PathLike, config: dict[str, Any], tensors: dict[str, torch.Tensor],
    expected: set[str], result: LoadResult, injected: list[tuple[nn.Module, str]], strict: bool,
    restore_requires_grad: bool,
) -> LoadResult:
    """Match file tensors to the model, then either refuse (rolling back) or load. Saved
    ``requires_grad`` flags go to the adapters this load injected, or with
    ``restore_requires_grad`` to every loaded parameter."""
    targets: dict[str, torch.Tensor] = dict(model.named_parameters(remove_duplicate=False))
    targets.update(_persistent_buffers(model, remove_duplicate=False))
    result.missing = sorted(expected - set(tensors))
    result.unexpected = sorted(n for n in tensors if n not in targets)
    result.mismatched = [(n, tuple(t.shape), tuple(targets[n].shape))
                         for n, t in sorted(tensors.items())
                         if n in targets and t.shape != targets[n].shape]
    result.sets = sorted({rec["name"] for rec in config["adapter_sets"]})
    if not result.ok and strict:
        for root_module, name in reversed(injected):
            eject_adapters(root_module, name)
        raise CheckpointError(f"{path} does not fit {type(model).__name__}:\n  {result.describe()}")
    bad = {n for n, _, _ in result.mismatched} | set(result.unexpected)
    with torch.no_grad():
        for n, t in tensors.items():
            if n not in bad:
                targets[n].copy_(t)
                result.loaded.append(n)
    new = {id(p) for root, name in injected for p in adapter_parameters(root, name).values()}
    for n, info in config["tensors"].items():
        flag, param = info.get("requires_grad"), targets.get(n)
        if n in bad or not isinstance(param, nn.Parameter) or not isinstance(flag, bool):
            continue
        if restore_requires_grad or id(param) in new:
            param.requires_grad_(flag)
    if not result.ok:
        warnings.warn(f"partial load of {path}:\n  {result.describe()}", stacklevel=3)
    return result


def _read(path: PathLike, fmt: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read and cross-check a checkpoint folder: JSON, sha256, config digest, safetensors
    header vs JSON."""
    folder = Path(path)
    config, data = _read_folder(folder, header_only=False)
    if config["format"] != fmt:
        other = "load_model_state" if config["format"] == STATE_FORMAT else "load_adapters"
        raise CheckpointError(f"{folder} is an {config['format']} checkpoint; use {other}")
    try:
        tensors = safetensors_from_bytes(data)  # safetensors' own parser: never pickle
    except Exception as exc:  # safetensors raises its own error types and a few builtin ones
        raise CheckpointError(f"{folder / _FILES[fmt][1]} is not a readable safetensors file: "
                              f"{exc}") from None
    declared = config["tensors"]
    diffs = [f"{n}: in the file, not in the JSON" for n in tensors if n not in declared]
    diffs += [f"{n}: in the JSON, not in the file" for n in declared if n not in tensors]
    diffs += [
        f"{n}: JSON says {declared[n].get('shape')} {declared[n].get('dtype')}, file has "
        f"{list(t.shape)} {str(t.dtype).removeprefix('torch.')}"
        for n, t in tensors.items()
        if n in declared and (declared[n]["shape"] != list(t.shape)
                              or declared[n].get("dtype") != str(t.dtype).removeprefix("torch."))
    ]
    if diffs:
        raise CheckpointError(f"{folder}: JSON and weights disagree:\n  " + "\n  ".join(diffs))
    if config["format_version"] < 2:
        warnings.warn(
            f"{folder} has format_version {config['format_version']}: written before the base "
            "weights and the whole config were covered by digests, so a base model with other "
            "weights or an edited config cannot be detected; save it again to add them",
            UserWarning, stacklevel=4,
        )
    return config, tensors


def _persistent_buffers(model: nn.Module, remove_duplicate: bool = True) -> dict[str, torch.Tensor]:
    keys = set(model.state_dict(keep_vars=True))
    return {n: b for n, b in model.named_buffers(remove_duplicate=remove_duplicate) if n in keys}


def save_model_state(model: nn.Module, path: PathLike) -> Path:
    """Save every parameter and persistent buffer of ``model`` (adapters included), atomically.

    The pre-train -> transfer protocol: a recommender pre-trained on the source domain is saved
    whole, then loaded into a fresh instance before the adapters for a target domain go in.
    """
    groups = _groups(model, None)
    tensors: dict[str, torch.Tensor] = {}
    info: dict[str, dict[str, Any]] = {}
    named = {**{n: p for n, p in model.named_parameters()}, **_persistent_buffers(model)}
    for n, t in named.items():
        tensors[n] = t
        info[n] = {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch."),
                   "requires_grad": t.requires_grad if isinstance(t, nn.Parameter) else None,
                   "kind": "state", "set": None}
    modules = sorted({s["module"] for g in groups.values() for s in g["sites"]})
    config = {
        "format": STATE_FORMAT,
        "format_version": FORMAT_VERSION,
        "adarec_version": __version__,
        "torch_version": torch.__version__,
        "base_model": {**fingerprint(model, modules), "weights": {}},  # every tensor is saved
        "adapter_sets": _set_records(groups),
        "tensors": info,
    }
    return _write(path, config, tensors, STATE_CONFIG, STATE_WEIGHTS)


def load_model_state(
    model: nn.Module,
    path: PathLike,
    strict: bool = True,
    *,
    activate: str | Sequence[str] | None = None,
    restore_requires_grad: bool = False,
) -> LoadResult:
    """Load a `save_model_state` folder into a freshly built ``model`` of the same architecture.

    Recorded adapter sets are injected where absent; LoRA sets that were saved merged are marked
    merged again (their delta is already inside the loaded base weights). Afterwards exactly the
    sets that were active when saved are on (possibly none: the saved model is reproduced), or
    ``activate``. ``requires_grad`` flags of the parameters the model already had are left alone
    unless ``restore_requires_grad=True`` (then every parameter gets its saved flag).
    """
    config, tensors, result, injected = _start_load(model, path, STATE_FORMAT, strict,
                                                    "another model", False, activate)
    expected = {n for n in (*dict(model.named_parameters()), *_persistent_buffers(model))}
    result = _finish(model, path, config, tensors, expected, result, injected, strict,
                     restore_requires_grad)
    result.active = _activate(model, config, activate, first_if_none=False)
    for rec in config["adapter_sets"]:
        if rec["merged"]:
            for _, _, a in iter_adapters(model.get_submodule(rec["root"])):
                if a.set_name == rec["name"] and hasattr(a, "merged"):
                    cast(Mergeable, a).merged = True
    return result


__all__ = [
    "FORMAT_VERSION",
    "LoadResult",
    "atomic_folder",
    "checkpoint_info",
    "compare_fingerprint",
    "load_adapters",
    "load_model_state",
    "save_adapters",
    "save_model_state",
    "weights_digest",
]
