"""Fold LoRA sets into the base weights for inference, and take them out again.

LoRA can be merged because its update ``(alpha/r) B A x`` is linear in the module input, so it is
a weight delta. Bottleneck adapters (Houlsby, Pfeiffer, parallel, Compacter) apply a non-linear
activation between their projections; no weight matrix reproduces them, so they are refused, as
is every set whose layers implement no ``merge``/``unmerge``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from torch import nn

from .adapters.base import Mergeable
from .errors import AdapterStateError
from .inject import active_adapters, adapter_sets, eject_adapters, iter_adapters

_NONLINEAR = (
    "it applies a non-linear activation between its projections, and a non-linear function of "
    "the activations cannot be folded into a weight matrix"
)
_WHY = {
    "houlsby": _NONLINEAR,
    "pfeiffer": _NONLINEAR,
    "parallel": _NONLINEAR,
    "compacter": _NONLINEAR,
    "kadapter": "its side network is non-linear and adds to the model output, not to a weight",
    "prompt": "it adds input positions, which no weight change reproduces",
}
_WHY_DEFAULT = "its adapter layers implement no merge()"


def _mergeable(model: nn.Module, name: str) -> bool:
    """LoRA-like layers say so by implementing ``merge``/``unmerge`` (duck typing, as elsewhere)."""
    return all(
        callable(getattr(a, "merge", None)) and callable(getattr(a, "unmerge", None))
        for _, _, a in iter_adapters(model) if a.set_name == name
    )


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
    refused = {n: present[n].method for n in names if not _mergeable(model, n)}
    if refused:
        why = "; ".join(f"{n!r} ({m}): {_WHY.get(m, _WHY_DEFAULT)}" for n, m in refused.items())
        raise AdapterStateError(f"cannot merge adapter set(s) into the base weights: {why}")
    return names


def _chosen(model: nn.Module, names: list[str]) -> list[tuple[nn.Module, Mergeable]]:
    """The adapted modules and layers of sets ``names`` (checked mergeable by `_selected`)."""
    return [(m, cast(Mergeable, a)) for _, m, a in iter_adapters(model) if a.set_name in names]


def merge_adapters(
    model: nn.Module, name: str | Sequence[str] | None = None, *, unload: bool = False
) -> nn.Module:
    """Fold LoRA set(s) ``name`` (default: every active set) into the base weights.

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
    """Subtract merged LoRA set(s) ``name`` (default: every merged set) from the base weights."""
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
