"""The item tower of a TransRec-style model: item encoder -> adaptor (DTL) -> ID fusion, each
distinct item of a batch encoded once, and the cached table of every item.

The table is valid while the modules it is computed from are in the same state (weights and
their versions, active/merged adapter sets, hooks, modes, item features, the fusion's excluded
items; `adarec.state_key`) and autocast is as it was; `ItemTableCache` holds it with that key.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol, cast

import torch
from torch import Tensor, nn

from adarec.precision import stable_size
from adarec.rec.item_encoder import ItemEncoder
from adarec.rec.side_encoding import eval_flags
from adarec.state_key import StateKey, autocast_state


class ItemTower(Protocol):
    """The attributes of a model the item tower reads."""

    @property
    def item_encoder(self) -> ItemEncoder: ...
    @property
    def dtl(self) -> nn.Module: ...
    @property
    def id_fusion(self) -> nn.Module | None: ...
    @property
    def dedup(self) -> bool: ...
    @property
    def dim(self) -> int: ...

    def modules(self) -> Iterator[nn.Module]: ...
    def parameters(self) -> Iterator[nn.Parameter]: ...
    def buffers(self) -> Iterator[Tensor]: ...


def device_of(model: nn.Module | Any) -> torch.device:
    t = next(itertools.chain(model.parameters(), model.buffers()), None)
    return t.device if t is not None else torch.device("cpu")


def encode_items(model: ItemTower, ids: Tensor) -> Tensor:
    """Encoder + DTL (+ ID fusion) for a flat id vector, each distinct id encoded once (with
    ``model.dedup``; False: once per occurrence, for tests). Under CPU autocast the distinct
    ids are padded to a `stable_size` (copies of one id), so their count does not give every
    batch new matmul shapes."""
    if model.dedup:
        uniq, inverse = torch.unique(ids, return_inverse=True)
        rows = stable_size(uniq.numel(), uniq.device)  # few shapes under CPU autocast
        if rows > uniq.numel():  # copies of the first id; ``inverse`` never reads them
            uniq = torch.cat([uniq, uniq[:1].expand(rows - uniq.numel())])
        return _adapt(model, uniq, model.item_encoder(uniq))[inverse]
    return _adapt(model, ids, model.item_encoder(ids))


def _adapt(model: ItemTower, ids: Tensor, content: Tensor) -> Tensor:
    emb = model.dtl(content)
    return emb if model.id_fusion is None else model.id_fusion(ids, emb)


def table_key(model: ItemTower) -> StateKey:
    fusion = () if model.id_fusion is None else (model.id_fusion,)
    return StateKey.of(cast(nn.Module, model.item_encoder), model.dtl, *fusion,
                       extra=(autocast_state(device_of(model).type),))


@contextmanager
def inference(model: nn.Module | Any) -> Iterator[None]:
    """Eval-mode flags and no grad, without calling ``train()`` (which drops the cache)."""
    with eval_flags(model), torch.no_grad():
        yield


class ItemTableCache:
    """Every item's embedding ``[n_items + 1, dim]`` in eval mode, kept with its `table_key`."""

    def __init__(self) -> None:
        self.table: Tensor | None = None
        self.key: StateKey | None = None

    def clear(self) -> None:
        self.table, self.key = None, None

    def valid(self, model: ItemTower) -> bool:
        return self.table is not None and self.key == table_key(model)

    def get(self, model: ItemTower, batch_size: int = 512) -> Tensor:
        """The table, rebuilt when the tower changed since it was computed."""
        with inference(model):
            key = table_key(model)
            if self.table is not None and self.key == key:
                return self.table
            n = int(model.item_encoder.n_items) + 1
            ids = torch.arange(n, device=device_of(model))
            table = torch.cat([encode_items(model, c) for c in ids.split(batch_size)])
            self.table, self.key = table, key
            return table

    def lookup(self, model: ItemTower, ids: Tensor) -> Tensor:
        """``ids`` of any shape -> ``[*ids.shape, dim]``, from the table when it is valid and no
        gradient is needed."""
        if not torch.is_grad_enabled() and self.valid(model):
            assert self.table is not None
            return self.table[ids.to(self.table.device)]
        return encode_items(model, ids.reshape(-1)).view(*ids.shape, model.dim)


__all__ = ["ItemTableCache", "ItemTower", "device_of", "encode_items", "inference", "table_key"]
