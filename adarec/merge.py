"""Fold weight-level sets (LoRA, (IA)^3) into the base weights for inference, and take them out.

A method says whether it merges (and if not, why) in its `adarec.registry.MethodDef`: LoRA's
update ``(alpha/r) B A x`` is linear in the module input, so it is a weight delta; a bottleneck
adapter applies a non-linear activation between its projections, which no weight matrix
reproduces. Sets of methods that do not merge are refused with that reason, as is every set whose
layers implement no ``merge``/``unmerge``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from torch import nn

from .adapters.base import Mergeable
from .errors import AdapterStateError
from .inject import active_adapters, adapter_sets, eject_adapters, iter_adapters
from .registry import method_info


def _why_not(model: nn.Module, name: str, method: str) -> str | None:
    """Why set ``name`` cannot be merged, or ``None`` when it can: its method must say it merges
    and its layers must implement ``merge``/``unmerge``."""
    info = method_info(method)
    if not info.merges:
        return info.merge_note or f"method {method!r} does not merge"
    if not all(callable(getattr(a, "merge", None)) and callable(getattr(a, "unmerge", None))
               for _, _, a in iter_adapters(model) if a.set_name == name):
        return "its adapter layers implement no merge()"
    return None


def _selected(model: nn.Module, name: str | Sequence[str] | None) -> list[str]:
    """The named sets (default: the active ones), refusing unknown and unmergeable sets."""
    present = adapter_sets(model)
    if name is None:
        names = active_adapters(model)
    else:
        names = [name] if isinstance(name, str) else list(name)
    missing = [n for n in names if n not in present]
    if missing:
        raise AdapterStateError(f"no adapter set named {missing}; sets present: {list(present)}")
    refused = {n: (present[n].method, _why_not(model, n, present[n].method)) for n in names}
    why = "; ".join(f"{n!r} ({m}): {w}" for n, (m, w) in refused.items() if w is not None)
    if why:
        raise AdapterStateError(f"cannot merge adapter set(s) into the base weights: {why}")
    return names


def _chosen(model: nn.Module, names: list[str]) -> list[tuple[nn.Module, Mergeable]]:
    """The adapted modules and layers of sets ``names`` (checked mergeable by `_selected`)."""
    return [(m, cast(Mergeable, a)) for _, m, a in iter_adapters(model) if a.set_name in names]


def merge_adapters(
    model: nn.Module, name: str | Sequence[str] | None = None, *, unload: bool = False
) -> nn.Module:
    """Fold set(s) ``name`` (default: every active set) into the base weights.

    The merged model computes the same outputs (to float rounding) without the LoRA matmuls.
    All sets are checked before any weight changes. With ``unload`` the adapters are then removed,
    leaving a plain model whose weights carry the update (it cannot be unmerged afterwards).
    """
    names = _selected(model, name)
    chosen = _chosen(model, names)
    inactive = sorted({a.set_name for _, a in chosen if not a.active})
    if inactive:
        raise AdapterStateError(
            f"adapter set(s) {inactive} are not active; merging them would change the outputs. "
            "set_active_adapters(model, ...) first"
        )
    already = sorted({a.set_name for _, a in chosen if a.merged})
    if already:
        raise AdapterStateError(f"adapter set(s) {already} are already merged")
    for module, adapter in chosen:
        adapter.merge(module)
    if unload:
        for _, adapter in chosen:
            adapter.merged = False  # the delta stays in the weights; eject must not subtract it
        for n in names:
            eject_adapters(model, n)
    return model


def unmerge_adapters(model: nn.Module, name: str | Sequence[str] | None = None) -> nn.Module:
    """Take merged set(s) ``name`` (default: every merged set) out of the base weights again."""
    if name is None:
        names = sorted({a.set_name for _, _, a in iter_adapters(model) if getattr(a, "merged", 0)})
    else:
        names = _selected(model, name)
    chosen = _chosen(model, names)
    not_merged = sorted({a.set_name for _, a in chosen if not a.merged})
    if not_merged:
        raise AdapterStateError(f"adapter set(s) {not_merged} are not merged")
    for module, adapter in chosen:
        adapter.unmerge(module)
    return model


__all__ = ["merge_adapters", "unmerge_adapters"]
