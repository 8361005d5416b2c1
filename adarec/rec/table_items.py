"""Item encoders over tables: `IDItemEncoder` (the SASRec baseline) and
`PrecomputedItemEncoder` (embeddings computed once, the cheapest frozen-encoder baseline)."""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import Tensor, nn

from adarec.errors import CheckpointError, DataError
from adarec.rec.item_encoder import ItemEncoder, ItemEncoderBase
from adarec.rec.kinds import PartSource, register_kind


@register_kind("id")
class IDItemEncoder(ItemEncoderBase):
    """Plain ID embeddings (the SASRec baseline); row 0 is the padding item and stays zero."""

    transferable = False

    def __init__(self, n_items: int, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.embedding = nn.Embedding(n_items + 1, dim, padding_idx=0)
        nn.init.normal_(self.embedding.weight, std=0.02)
        with torch.no_grad():
            self.embedding.weight[0].zero_()

    @property
    def n_items(self) -> int:
        return self.embedding.num_embeddings - 1

    def to_config(self) -> dict[str, Any]:
        return {"n_items": self.n_items, "dim": self.dim}

    @classmethod
    def from_config(cls, config: dict[str, Any], source: PartSource) -> IDItemEncoder:
        return cls(int(config["n_items"]), int(config["dim"]))  # weights follow

    def forward(self, item_ids: Tensor) -> Tensor:
        return self.embedding(item_ids.reshape(-1))


@register_kind("precomputed")
class PrecomputedItemEncoder(ItemEncoderBase):
    """A fixed (or, with ``trainable``, fine-tuned) table ``[n_items + 1, d]``, e.g. frozen text
    embeddings computed once: the cheapest "frozen encoder" baseline."""

    transferable = False
    table: Tensor  # a Parameter when trainable, else a buffer

    def __init__(self, table: Tensor, trainable: bool = False) -> None:
        super().__init__()
        if table.dim() != 2:
            raise DataError(f"table must be [n_items + 1, d], got {tuple(table.shape)}")
        self.dim = int(table.size(1))
        self.trainable = trainable
        if trainable:
            self.table = nn.Parameter(table.detach().clone())
        else:
            self.register_buffer("table", table.detach().clone(), persistent=False)

    @classmethod
    @torch.no_grad()
    def from_encoder(
        cls, encoder: nn.Module, batch_size: int = 512, trainable: bool = False
    ) -> PrecomputedItemEncoder:
        """Encode every item of ``encoder`` once (eval mode, no grad)."""
        was_training = encoder.training
        encoder.eval()
        ids = torch.arange(cast(ItemEncoder, encoder).n_items + 1)
        table = torch.cat([encoder(c) for c in ids.split(batch_size)]).float().cpu()
        encoder.train(was_training)
        return cls(table, trainable)

    @property
    def n_items(self) -> int:
        return self.table.size(0) - 1

    def to_config(self) -> dict[str, Any]:
        return {"trainable": self.trainable}

    def features(self) -> dict[str, Tensor]:
        return {} if self.trainable else {"table": self.table}

    @classmethod
    def from_config(cls, config: dict[str, Any], source: PartSource) -> PrecomputedItemEncoder:
        table = source.feature("table") if source.has_feature("table") else source.weight("table")
        if table is None:
            raise CheckpointError(f"{source.folder}: the precomputed item table is missing")
        return cls(table, trainable=bool(config.get("trainable")))

    def forward(self, item_ids: Tensor) -> Tensor:
        return self.table[item_ids.reshape(-1).to(self.table.device)]


__all__ = ["IDItemEncoder", "PrecomputedItemEncoder"]
