"""Sharded builds: the hidden-state cache and the item table computed by the ranks of a
``torchrun`` job, each rank its contiguous run of the one-process build's chunks.

    torchrun --nproc-per-node 4 my_job.py     # calls build_item_table(model, "tables/")

Every rank computes its chunks (the same chunks, in the same batches, as one process:
`adarec.rec.state_cache.build_chunks`, `adarec.rec.item_tower.table_chunks`), writes them to
one memory-mapped safetensors file and, once all have, reads every shard back into the table it
serves from (`adarec.rec.shard_files`). The table is bitwise the one a single process builds
(float32; tested with two gloo ranks). Without ``torchrun`` the same call is a one-shard build.
The folder keeps the shards with a manifest fingerprinting the model state, so a later process
loads them (`load_item_table`, `load_state_cache`) instead of recomputing, and a model in any
other state is refused.
"""

from __future__ import annotations

import os
from typing import Any

from torch import Tensor

from adarec.errors import ConfigError
from adarec.rec.item_tower import (
    device_of,
    encode_items,
    inference,
    table_chunks,
    tower_fingerprint,
)
from adarec.rec.shard_files import Build, build_shards, load_table
from adarec.rec.side_encoding import SideEncoding
from adarec.rec.state_cache import HiddenStateCache, build_chunks

STATES, ITEMS = "hidden_states", "item_table"
Folder = str | os.PathLike[str]


def _side_encoder(encoder: Any) -> SideEncoding:
    if not isinstance(encoder, SideEncoding):
        raise ConfigError(f"{type(encoder).__name__} has no hidden-state cache (it reads no side "
                          "network); build the item table with build_item_table")
    return encoder


def build_state_cache(encoder: Any, folder: Folder,
                      progress: bool | None = None) -> HiddenStateCache | None:
    """Build the hidden-state cache of ``encoder``'s active side networks over the ranks into
    ``folder`` and make it the encoder's cache on every rank (``None`` when a direct forward
    disagrees with it, as in the one-process build). Every rank must call it."""
    side = _side_encoder(encoder)
    plan = side.state_plan()
    build = Build(STATES, side.state_fingerprint(plan.sides, plan.device), plan.n_rows,
                  build_chunks(plan.n_rows, plan.chunk_size, plan.order), plan.compute,
                  plan.dtype, plan.tokens)
    build_shards(build, folder, progress)
    return load_state_cache(side, folder)


def load_state_cache(encoder: Any, folder: Folder) -> HiddenStateCache | None:
    """Make the shards of ``folder`` the encoder's hidden-state cache (merged in memory, or in a
    memory-mapped file in its ``cache_dir``); refused (`CheckpointError`) when they were built
    from another model state, are partial, or were edited."""
    side = _side_encoder(encoder)
    plan = side.state_plan()
    table, file = load_table(folder, STATES, side.state_fingerprint(plan.sides, plan.device),
                             side.cache_dir)  # on the CPU, as a one-process build keeps it
    return side.adopt_state_cache(plan, HiddenStateCache(table, plan.key, file))


def build_item_table(model: Any, folder: Folder, batch_size: int = 512,
                     progress: bool | None = None) -> Tensor:
    """Build the item table of a `TransRec` over the ranks into ``folder`` (first the
    hidden-state cache when the item encoder caches side-network states) and make it the
    model's table on every rank, so `recommend` serves from it. Every rank must call it."""
    encoder = model.item_encoder
    if isinstance(encoder, SideEncoding) and encoder.cache_states and encoder.side_networks():
        build_state_cache(encoder, folder, progress)
    device = device_of(model)

    def compute(ids: Tensor) -> Tensor:
        return encode_items(model, ids.to(device))

    with inference(model):
        chunks = table_chunks(model, batch_size)
        build = Build(ITEMS, tower_fingerprint(model), sum(c.numel() for c in chunks), chunks,
                      compute)
        build_shards(build, folder, progress)
    return load_item_table(model, folder)


def load_item_table(model: Any, folder: Folder) -> Tensor:
    """Make the item-table shards of ``folder`` the model's table; refused (`CheckpointError`)
    when they were built from another state of the item tower, are partial, or were edited."""
    with inference(model):
        fingerprint = tower_fingerprint(model)
    table, _ = load_table(folder, ITEMS, fingerprint)
    table = table.to(device_of(model))
    model._items.put(model, table)
    return table


__all__ = ["build_item_table", "build_state_cache", "load_item_table", "load_state_cache"]
