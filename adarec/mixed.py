"""Many adapter sets in one batch: each row of the batch names the set that serves it.

Why: a model holding one set per market or category would otherwise serve a batch of mixed
requests by switching the active set once per group (or per request) and running the frozen
backbone once per group. Within `mixed_batch` the backbone runs once for the whole batch and
every adapter layer applies its set to that set's rows only (`adarec.adapters.base.apply_to_rows`,
called by injection's hook); rows naming ``None`` pass through as the base model. Each row then
gets what serving it alone with its set active gives.

It works for the methods whose output for a row depends on that row alone (the bottleneck
family: Houlsby, Pfeiffer, parallel, Compacter; LoRA; (IA)^3); the others (prefix, prompt, side
networks) are refused with the reason (``mixed_batch_refusal`` of their layer). Merged sets are
refused: their update is in the base weights, which every row reads.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from .adapters.base import AdapterLayer
from .errors import AdapterStateError, ConfigError
from .sets import adapter_sets, iter_adapters


def row_groups(set_names: Sequence[str | None]) -> dict[str | None, list[int]]:
    """``set name -> the rows naming it``, in order of first appearance (checked names)."""
    groups: dict[str | None, list[int]] = {}
    for i, name in enumerate(set_names):
        if name is not None and (not isinstance(name, str) or not name):
            raise ConfigError(f"set_names[{i}]={name!r} is not a set name (a non-empty string, "
                              "or None for the base model)")
        groups.setdefault(name, []).append(i)
    return groups


def check_mixable(model: nn.Module, names: Sequence[str]) -> None:
    """Refuse, naming the set and the reason, sets that cannot share a batch."""
    present = adapter_sets(model)
    missing = [n for n in names if n not in present]
    if missing:
        raise AdapterStateError(f"no adapter set named {missing}; sets present: {list(present)}")
    for _, _, a in iter_adapters(model):
        if getattr(a, "merged", False):
            raise AdapterStateError(
                f"adapter set {a.set_name!r} is merged into the base weights, which every row "
                "of a mixed batch reads; unmerge_adapters(model) first")
        reason = getattr(a, "mixed_batch_refusal", "it is not an adarec adapter layer")
        if a.set_name in names and reason is not None:
            method = getattr(a.spec, "method", type(a).__name__)
            raise AdapterStateError(
                f"adapter set {a.set_name!r} ({method}) cannot serve some rows of a batch "
                f"while other rows use other sets: {reason}")


@contextmanager
def mixed_batch(model: nn.Module, set_names: Sequence[str | None]) -> Iterator[nn.Module]:
    """Within the block, row ``i`` of every batch ``model`` runs is served by adapter set
    ``set_names[i]`` (``None``: no set), all rows in one forward. The batch must have exactly
    ``len(set_names)`` rows on dimension 0 of each adapted module (refused otherwise); the
    active sets are restored afterwards."""
    groups = row_groups(set_names)
    names = [n for n in groups if n is not None]
    check_mixable(model, names)
    adapters = [a for _, _, a in iter_adapters(model)]
    saved = [(a.active, getattr(a, "_mixed_rows", None), getattr(a, "_mixed_batch", 0))
             for a in adapters]
    index: dict[tuple[str, torch.device], torch.Tensor] = {}  # rows of a set, on a device

    def rows_of(a: AdapterLayer) -> torch.Tensor | None:
        if a.set_name not in groups:
            return None
        ref = next(a.parameters(), None)
        key = (a.set_name, ref.device if ref is not None else torch.device("cpu"))
        if key not in index:
            index[key] = torch.tensor(groups[a.set_name], dtype=torch.long, device=key[1])
        return index[key]

    try:
        for a in adapters:
            a._mixed_rows = rows_of(a)
            a.active = a._mixed_rows is not None
            a._mixed_batch = len(set_names)
        yield model
    finally:
        for a, (active, rows, batch) in zip(adapters, saved, strict=True):
            a.active, a._mixed_rows, a._mixed_batch = active, rows, batch


__all__ = ["check_mixable", "mixed_batch", "row_groups"]
