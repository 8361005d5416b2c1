"""Adapter-only checkpoints: `save_adapters` / `load_adapters`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import AdapterStateError
from ..freezing import adapter_parameters
from ..inject import (
    adapter_sets,
)
from ..version import __version__
from .digests import _base_tensors, weights_digest
from .files import ADAPTER_CONFIG, ADAPTER_FORMAT, ADAPTER_WEIGHTS, FORMAT_VERSION, PathLike, _write
from .fingerprints import fingerprint
from .loading import _activate, _finish, _start_load
from .records import LoadResult
from .set_records import _canonical, _groups, _join, _set_records


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
