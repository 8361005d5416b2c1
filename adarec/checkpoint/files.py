"""Checkpoint files: the format constants, and atomic, checked writes and reads of the JSON
and safetensors halves.

Why one place: every writer and reader goes through these, so the two files always vouch
for each other the same way (sha256 of the weights in the JSON, config digest in the
safetensors metadata)."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from safetensors.torch import load as safetensors_from_bytes

from ..errors import CheckpointError
from ..folders import atomic_folder, target_of

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
    data = read_weights_bytes(file)
    if sha256 is not None:
        _check_sha256(data, {"sha256": sha256}, file)
    return weights_from_bytes(data, file)


def read_weights_bytes(file: Path) -> bytes:
    """The bytes of a weights file, a missing one named as such."""
    try:
        return file.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(_missing_weights(file)) from None


def weights_from_bytes(data: bytes, file: Path) -> dict[str, torch.Tensor]:
    """The tensors of safetensors ``data`` read from ``file``."""
    try:
        return safetensors_from_bytes(data)  # safetensors' own parser: never pickle
    except Exception as exc:  # safetensors raises its own error types and a few builtin ones
        raise CheckpointError(f"{file} is not a readable safetensors file: {exc}") from None


def tensor_record_differences(declared: Mapping[str, Any],
                              tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """How a weights file's tensors differ from the JSON's tensor records (names, shapes,
    dtypes); empty when they agree."""
    def dtype(t: torch.Tensor) -> str:
        return str(t.dtype).removeprefix("torch.")

    diffs = [f"{n}: in the file, not in the JSON" for n in tensors if n not in declared]
    diffs += [f"{n}: in the JSON, not in the file" for n in declared if n not in tensors]
    diffs += [
        f"{n}: JSON says {declared[n].get('shape')} {declared[n].get('dtype')}, file has "
        f"{list(t.shape)} {dtype(t)}"
        for n, t in tensors.items()
        if n in declared and (declared[n].get("shape") != list(t.shape)
                              or declared[n].get("dtype") != dtype(t))
    ]
    return diffs


def config_is_bound(data: bytes, config: Mapping[str, Any], file: Path) -> bool:
    """Whether the weights ``data`` carry the `config_digest` of ``config`` in their metadata
    (written by ``write_weights(..., {CONFIG_DIGEST: config_digest(config)})``)."""
    return _safetensors_metadata(data, file).get(CONFIG_DIGEST) == config_digest(config)


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
