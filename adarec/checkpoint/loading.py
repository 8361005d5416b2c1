"""The load steps both checkpoint kinds share: verify, compare, inject the recorded sets, then
refuse (rolling back) or copy the tensors and switch the recorded sets on."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import AdapterStateError, CheckpointError
from ..freezing import adapter_parameters
from ..inject import (
    adapter_sets,
    eject_adapters,
    iter_adapters,
    set_active_adapters,
)
from .digests import _compare_base_weights, _persistent_buffers
from .files import PathLike
from .fingerprints import compare_fingerprint
from .reading import _read
from .records import LoadResult
from .set_records import _restore_sets


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
