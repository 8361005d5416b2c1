"""Resumable training: model, optimiser, scheduler, RNG and loop state in one atomic folder.

A killed job must lose nothing and resume bit for bit, so everything a training loop carries
between steps is written together with adarec's folder machinery (`atomic_folder`: a kill
mid-save leaves the previous state in place) as safetensors + JSON, never pickle. Optimiser and
scheduler state dicts hold tensors and plain values nested in dicts, lists and tuples (with int
keys); they are flattened: tensors go to the safetensors file, the structure to the JSON.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import Tensor, nn

from .errors import CheckpointError
from .folders import atomic_folder, read_folder

STATE_JSON = "training_state.json"
STATE_TENSORS = "training_state.safetensors"
FORMAT = 1


def _flatten(value: Any, tensors: dict[str, Tensor], prefix: str) -> Any:
    if isinstance(value, Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = value.detach().cpu().clone().contiguous()
        return {"__tensor__": key}
    if isinstance(value, dict):
        return {"__dict__": [[_flatten(k, tensors, prefix), _flatten(v, tensors, prefix)]
                             for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [_flatten(v, tensors, prefix) for v in value]}
    if isinstance(value, list):
        return [_flatten(v, tensors, prefix) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise CheckpointError(f"save_training_state: cannot store a {type(value).__name__} at "
                          f"{prefix!r} as safetensors + JSON (tensors, numbers, strings, None, "
                          "and dicts/lists/tuples of them only)")


def _unflatten(value: Any, tensors: dict[str, Tensor]) -> Any:
    if isinstance(value, list):
        return [_unflatten(v, tensors) for v in value]
    if isinstance(value, dict):
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if "__tuple__" in value:
            return tuple(_unflatten(v, tensors) for v in value["__tuple__"])
        return {_unflatten(k, tensors): _unflatten(v, tensors) for k, v in value["__dict__"]}
    return value


def save_training_state(
    path: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None, extra: dict[str, Any] | None = None,
) -> None:
    """Write everything needed to resume training to the folder ``path``, atomically.

    ``extra`` is the loop's own state (epoch, step, early-stopping counters, data order ...):
    tensors and plain values. The RNG states of `random` and torch (CPU) are saved too.
    """
    tensors: dict[str, Tensor] = {}
    record = {
        "format": FORMAT,
        "model": _flatten(model.state_dict(), tensors, "model"),
        "optimizer": None if optimizer is None else _flatten(optimizer.state_dict(), tensors,
                                                             "optimizer"),
        "scheduler": None if scheduler is None else _flatten(scheduler.state_dict(), tensors,
                                                             "scheduler"),
        "rng": _flatten({"torch": torch.get_rng_state(), "python": random.getstate()},
                        tensors, "rng"),
        "extra": _flatten(extra or {}, tensors, "extra"),
    }
    text = json.dumps(record, sort_keys=True).encode()
    blob = save_tensors(tensors, metadata={"json_sha256": hashlib.sha256(text).hexdigest()})
    with atomic_folder(path, STATE_JSON) as tmp:
        (tmp / STATE_TENSORS).write_bytes(blob)
        (tmp / STATE_JSON).write_bytes(text)


def load_training_state(
    path: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
) -> dict[str, Any]:
    """Load a `save_training_state` folder into ``model``/``optimizer``/``scheduler`` (in
    place), restore the RNG states, and return ``extra``. Refuses edited or mismatched folders."""
    files = read_folder(path, (STATE_JSON, STATE_TENSORS))
    if STATE_JSON not in files or STATE_TENSORS not in files:
        raise CheckpointError(f"{path} is not a training-state folder: it needs {STATE_JSON} "
                              f"and {STATE_TENSORS}")
    text, blob = files[STATE_JSON], files[STATE_TENSORS]
    header_len = int.from_bytes(blob[:8], "little")
    bound = json.loads(blob[8:8 + header_len]).get("__metadata__", {}).get("json_sha256")
    if bound != hashlib.sha256(text).hexdigest():
        raise CheckpointError(f"{path}/{STATE_JSON} does not match the sha256 bound into "
                              f"{STATE_TENSORS}: the folder was edited or mixed; save it again")
    record, tensors = json.loads(text), load_tensors(blob)
    if record.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unknown training-state format {record.get('format')!r}")
    for name, target in (("optimizer", optimizer), ("scheduler", scheduler)):
        if (record[name] is None) != (target is None):
            have = "holds no" if record[name] is None else "holds"
            raise CheckpointError(f"{path} {have} {name} state, and {name}= was "
                                  f"{'given' if target is not None else 'not given'}")
    try:
        model.load_state_dict(_unflatten(record["model"], tensors))
    except RuntimeError as err:
        raise CheckpointError(f"{path} holds another model's state: {err}") from err
    if optimizer is not None:
        optimizer.load_state_dict(_unflatten(record["optimizer"], tensors))
    if scheduler is not None:
        scheduler.load_state_dict(_unflatten(record["scheduler"], tensors))
    rng = _unflatten(record["rng"], tensors)
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    extra: dict[str, Any] = _unflatten(record["extra"], tensors)
    return extra


__all__ = ["load_training_state", "save_training_state"]
