"""Reading a checkpoint folder as a verified pair: structure, version, sha256 and config-digest
checks, and the tensors cross-checked against the JSON, before anything is loaded."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..folders import MissingFile, read_folder
from ..version import __version__
from .files import (
    _FILES,
    ADAPTER_CONFIG,
    FORMAT_VERSION,
    STATE_CONFIG,
    STATE_FORMAT,
    PathLike,
    _check_sha256,
    _missing_weights,
    _need,
    _not_found,
    _parse_json,
    config_is_bound,
    tensor_record_differences,
    weights_from_bytes,
)


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
    if config["format_version"] >= 2 and not config_is_bound(data, config,
                                                              folder / weights_name):
        raise CheckpointError(
            f"{folder / config_name} was edited after it was written: its sha256 does not "
            f"match the one bound into {weights_name} when both were saved (every field is "
            "covered: specs, active flags, tensor records, the base-model fingerprint); "
            "restore the original file or save the checkpoint again"
        )
    return config, data


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


def _read(path: PathLike, fmt: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read and cross-check a checkpoint folder: JSON, sha256, config digest, safetensors
    header vs JSON."""
    folder = Path(path)
    config, data = _read_folder(folder, header_only=False)
    if config["format"] != fmt:
        other = "load_model_state" if config["format"] == STATE_FORMAT else "load_adapters"
        raise CheckpointError(f"{folder} is an {config['format']} checkpoint; use {other}")
    tensors = weights_from_bytes(data, folder / _FILES[fmt][1])
    diffs = tensor_record_differences(config["tensors"], tensors)
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
