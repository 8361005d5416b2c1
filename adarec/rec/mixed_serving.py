"""Serving a TransRec whose rows name their adapter set: one model per market or category
sharing one frozen backbone, all of a batch's rows in one user-encoder call.

Why: switching the active set per request (or per group of requests) runs the user encoder
once per group and, worse, makes the item table's state key change at every switch, so the
table is encoded again each time. Here each set's item table (the item encoder with that set's
adapters or side network, then the set's own DTL or the shared one, `adarec.rec.set_dtl`) is
cached in a cache of its own, keyed like the model's (`adarec.rec.item_tower`: the key skips
switched-off layers, so a set's table is reused exactly while the tower computes what it did
with that set active alone, whatever happens to the other sets), side networks of every set
read the item encoder's one hidden-state cache of the frozen backbone, and the user encoder runs
the whole batch once under `adarec.mixed.mixed_batch`. Row ``i`` gets what serving it alone
with set ``set_names[i]`` active gives (``None``: no set).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, cast

import torch
from torch import Tensor

from adarec.errors import AdapterStateError
from adarec.inject import set_active_adapters
from adarec.mixed import mixed_batch, row_groups
from adarec.rec.inference import as_item_vectors
from adarec.rec.item_tower import ItemTableCache, device_of, inference
from adarec.rec.scoring import check_finite, in_user_tiles, prepare
from adarec.sets import adapter_sets, iter_adapters

SetName = str | None


@contextmanager
def sets_alone(model: Any) -> Iterator[Callable[[SetName], None]]:
    """A switch ``use(name)`` that leaves set ``name`` alone active (``None``: none); the active
    sets restored after. It flips the flags of the adapters found once, where
    `set_active_adapters` walks the model at every call (the walks were most of a warm mixed
    call); a model holding a merged set goes through `set_active_adapters`, which checks the
    merge rules."""
    adapters = [a for _, _, a in iter_adapters(model)]
    saved = [a.active for a in adapters]
    merged = any(getattr(a, "merged", False) for a in adapters)

    def use(name: SetName) -> None:
        if merged:
            set_active_adapters(model, name)
            return
        for a in adapters:
            a.active = a.set_name == name

    try:
        yield use
    finally:
        for a, flag in zip(adapters, saved, strict=True):
            a.active = flag


@contextmanager
def only_set(model: Any, name: SetName) -> Iterator[None]:
    """Set ``name`` alone active in the block (``None``: none); the active sets restored after."""
    check_set_names(model, [name])
    with sets_alone(model) as use:
        use(name)
        yield


def check_set_names(model: Any, set_names: Sequence[SetName]) -> list[SetName]:
    """The distinct names, each refused unless the model holds that set."""
    names = list(row_groups(set_names))
    present = adapter_sets(model)
    missing = [n for n in names if n is not None and n not in present]
    if missing:
        raise AdapterStateError(f"no adapter set named {missing}; sets present: {list(present)}")
    return names


def _cached_table(model: Any, name: SetName, batch_size: int) -> Tensor:
    """Set ``name``'s table from its own cache; the set must be the one active alone."""
    return cast(Tensor, model._set_items.setdefault(name, ItemTableCache()).get(model,
                                                                                batch_size))


def set_item_table(model: Any, name: SetName, batch_size: int = 512) -> Tensor:
    """The raw item table serving with set ``name`` alone active reads, from that set's cache."""
    with only_set(model, name):
        return _cached_table(model, name, batch_size)


def set_tables(model: Any, set_names: Sequence[SetName]) -> dict[SetName, Tensor]:
    """Raw item table of each set named in ``set_names`` (checked)."""
    names = check_set_names(model, set_names)
    tables: dict[SetName, Tensor] = {}
    with sets_alone(model) as use:
        for name in names:
            use(name)
            tables[name] = _cached_table(model, name, 512)
    return tables


def mixed_user_vectors(model: Any, history_ids: Tensor, set_names: Sequence[SetName],
                       tables: Mapping[SetName, Tensor]) -> Tensor:
    """`adarec.rec.inference.user_vectors` with row ``i`` served by set ``set_names[i]``: its
    history read from that set's item table, the user encoder run once per tile under
    `mixed_batch` (a set without user-encoder adapters serves its rows as the base encoder)."""
    if len(set_names) != history_ids.size(0):
        raise AdapterStateError(f"{len(set_names)} set names for {history_ids.size(0)} histories")
    in_user = adapter_sets(model.user_encoder)
    user_name = {n: n if n in in_user else None for n in tables}

    def encode(tile: Tensor, names: list[SetName]) -> Tensor:
        emb = torch.empty(*tile.shape, model.dim, device=tile.device,
                          dtype=next(iter(tables.values())).dtype)
        for name, rows in row_groups(names).items():
            index = torch.tensor(rows, device=tile.device)
            table = tables[name]
            emb[index] = table[tile[index].to(table.device)].to(emb.device)
        with mixed_batch(model.user_encoder, [user_name[n] for n in names]):
            out = model.sequence_output(tile, emb)[:, -1]
        return prepare(out.float(), model.similarity)

    # rows of one set side by side, so most tiles hold one set and run without a split
    order = sorted(range(len(set_names)), key=lambda i: (set_names[i] is not None,
                                                         set_names[i] or ""))
    perm = torch.tensor(order, dtype=torch.long)
    with inference(model):
        users = in_user_tiles(encode, history_ids[perm].to(device_of(model)),
                              [set_names[i] for i in order])
    check_finite(users, "the user vectors")
    return users[torch.argsort(perm).to(users.device)]


def set_item_vectors(model: Any, tables: Mapping[SetName, Tensor]) -> dict[SetName, Tensor]:
    """Each set's table as scores read it."""
    return {n: as_item_vectors(model, t) for n, t in tables.items()}


__all__ = ["check_set_names", "mixed_user_vectors", "only_set", "set_item_table",
           "set_item_vectors", "set_tables", "sets_alone"]
