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

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from adarec.errors import AdapterStateError
from adarec.inject import set_active_adapters
from adarec.mixed import mixed_batch, row_groups
from adarec.rec.inference import as_item_vectors
from adarec.rec.item_tower import ItemTableCache, device_of, inference
from adarec.rec.scoring import check_finite, in_user_tiles, prepare
from adarec.sets import active_adapters, adapter_sets

SetName = str | None


@contextmanager
def only_set(model: Any, name: SetName) -> Iterator[None]:
    """Set ``name`` alone active in the block (``None``: none); the active sets restored after."""
    before = active_adapters(model)
    set_active_adapters(model, name)
    try:
        yield
    finally:
        set_active_adapters(model, before)


def check_set_names(model: Any, set_names: Sequence[SetName]) -> list[SetName]:
    """The distinct names, each refused unless the model holds that set."""
    names = list(row_groups(set_names))
    present = adapter_sets(model)
    missing = [n for n in names if n is not None and n not in present]
    if missing:
        raise AdapterStateError(f"no adapter set named {missing}; sets present: {list(present)}")
    return names


def set_item_table(model: Any, name: SetName, batch_size: int = 512) -> Tensor:
    """The raw item table serving with set ``name`` alone active reads, from that set's cache."""
    cache = model._set_items.setdefault(name, ItemTableCache())
    with only_set(model, name):
        return cache.get(model, batch_size)


def set_tables(model: Any, set_names: Sequence[SetName]) -> dict[SetName, Tensor]:
    """Raw item table of each set named in ``set_names`` (checked)."""
    return {n: set_item_table(model, n) for n in check_set_names(model, set_names)}


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
           "set_item_vectors", "set_tables"]
