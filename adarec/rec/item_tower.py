"""The item tower of a TransRec-style model: item encoder -> adaptor (DTL; the active set's own
DTL where it has one, `adarec.rec.set_dtl`) -> ID fusion, each distinct item of a batch encoded
once, and the cached table of every item.

The table is valid while the modules it is computed from are in the same state (weights and
their versions, active/merged adapter sets, hooks, modes, item features, the fusion's excluded
items; `adarec.state_key`; switched-off adapter layers change nothing and are skipped) and
autocast is as it was; `ItemTableCache` holds it with that key.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol, cast

import torch
from torch import Tensor, nn

from adarec.errors import ConfigError
from adarec.precision import stable_size
from adarec.rec.item_encoder import ItemEncoder
from adarec.rec.set_dtl import check_one_dtl
from adarec.rec.shard_files import state_fingerprint
from adarec.rec.side_encoding import eval_flags
from adarec.sets import inactive_adapters
from adarec.state_key import StateKey, autocast_state


class ItemTower(Protocol):
    """The attributes of a model the item tower reads."""

    @property
    def item_encoder(self) -> ItemEncoder: ...
    @property
    def dtl(self) -> nn.Module: ...
    @property
    def dtl_sets(self) -> nn.Module: ...
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


def recommender_dtype(model: ItemTower) -> torch.dtype:
    """The floating dtype of the recommender's own layers (DTL, else the user encoder)."""
    for part in (model.dtl, getattr(model, "user_encoder", None)):
        if isinstance(part, nn.Module):
            for p in part.parameters():
                if p.is_floating_point():
                    return p.dtype
    return torch.get_default_dtype()


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
    # an item encoder kept in bf16/fp16 (a large frozen LLM) hands its vectors over in the
    # recommender's own dtype: the DTL and the user side train in it
    content = content.to(recommender_dtype(model))
    check_one_dtl(model.dtl_sets)
    emb = model.dtl_sets(content, model.dtl(content))
    return emb if model.id_fusion is None else model.id_fusion(ids, emb)


def _tower_parts(model: ItemTower) -> tuple[tuple[nn.Module, ...], list[nn.Module]]:
    """What the table depends on: the item encoder, the DTL (shared and per set) and the ID
    fusion, with the switched-off adapter layers skipped (`adarec.sets.inactive_adapters`)."""
    fusion = () if model.id_fusion is None else (model.id_fusion,)
    roots = (cast(nn.Module, model.item_encoder), model.dtl, model.dtl_sets, *fusion)
    return roots, [a for r in roots for a in inactive_adapters(r)]


def table_key(model: ItemTower) -> StateKey:
    """The tower's state: a set's table stays valid while other sets' weights change (mixed
    serving keeps one table per set)."""
    roots, skip = _tower_parts(model)
    return StateKey.of(*roots, skip=skip, extra=(autocast_state(device_of(model).type),))


def tower_fingerprint(model: ItemTower) -> str:
    """The persistent twin of `table_key` (`adarec.rec.shard_files.state_fingerprint`), for a
    table written to disk: equal in another process exactly when the table would be the same."""
    roots, skip = _tower_parts(model)
    return state_fingerprint(*roots, skip=skip, modes=False,
                             extra=(autocast_state(device_of(model).type),))


def table_chunks(model: ItemTower, batch_size: int = 512) -> list[Tensor]:
    """The item ids of each batch the table is computed in (row 0, the padding item, first)."""
    n = int(model.item_encoder.n_items) + 1
    return list(torch.arange(n, device=device_of(model)).split(batch_size))


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
            table = torch.cat([encode_items(model, c) for c in table_chunks(model, batch_size)])
            self.table, self.key = table, key
            return table

    def put(self, model: ItemTower, table: Tensor) -> None:
        """Keep ``table`` as ``model``'s current table (one built elsewhere, e.g. by ranks)."""
        n = int(model.item_encoder.n_items) + 1
        if table.dim() != 2 or tuple(table.shape) != (n, model.dim):
            raise ConfigError(f"an item table of shape {tuple(table.shape)}; the model's is "
                              f"{(n, model.dim)}")
        with inference(model):  # the key as `get` computes it
            self.table, self.key = table, table_key(model)

    def lookup(self, model: ItemTower, ids: Tensor) -> Tensor:
        """``ids`` of any shape -> ``[*ids.shape, dim]``, from the table when it is valid and no
        gradient is needed."""
        if not torch.is_grad_enabled() and self.valid(model):
            assert self.table is not None
            return self.table[ids.to(self.table.device)]
        return encode_items(model, ids.reshape(-1)).view(*ids.shape, model.dim)


__all__ = ["ItemTableCache", "ItemTower", "device_of", "encode_items", "inference", "table_chunks",
           "table_key", "tower_fingerprint"]
