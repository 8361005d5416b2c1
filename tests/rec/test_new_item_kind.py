"""A new item encoder kind from this file alone: it registers itself, trains inside TransRec,
saves, loads in the same process as from a folder, recommends the same items, and grows with
`add_items`. No adarec file names it."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from adarec.rec import ItemEncoderBase, PartSource, TransRec, register_kind, unregister_kind
from adarec.rec.data import TrainCollator, TrainDataset

BUCKETS = 64


def _trigrams(texts: Sequence[str]) -> Tensor:
    """Bag of hashed character trigrams per text ``[len(texts), BUCKETS]``."""
    out = torch.zeros(len(texts), BUCKETS)
    for row, text in enumerate(texts):
        padded = f"  {text.lower()} "
        for i in range(len(padded) - 2):
            out[row, zlib.crc32(padded[i:i + 3].encode()) % BUCKETS] += 1.0
    return out


@register_kind("test_trigram")
class TrigramItemEncoder(ItemEncoderBase):
    """Item text -> hashed trigram counts -> a learned projection (a fastText-like encoder)."""

    bags: Tensor

    def __init__(self, bags: Tensor, dim: int = 16) -> None:
        super().__init__()
        self.dim = dim
        self.register_buffer("bags", bags.float(), persistent=False)  # a feature, not a weight
        self.proj = nn.Linear(BUCKETS, dim)

    @classmethod
    def from_item_texts(cls, texts: Sequence[str], dim: int = 16) -> TrigramItemEncoder:
        return cls(torch.cat([torch.zeros(1, BUCKETS), _trigrams(texts)]), dim)

    @property
    def n_items(self) -> int:
        return self.bags.size(0) - 1

    def forward(self, item_ids: Tensor) -> Tensor:
        return torch.tanh(self.proj(self.bags[item_ids.reshape(-1)]))

    def add_items(self, inputs: Sequence[Any], preprocessor: Any = None) -> None:
        self.bags = torch.cat([self.bags, _trigrams(inputs).to(self.bags)])

    def features(self) -> dict[str, Tensor]:
        return {"bags": self.bags}

    def to_config(self) -> dict[str, Any]:
        return {"dim": self.dim}

    @classmethod
    def from_config(cls, config: dict[str, Any], source: PartSource) -> TrigramItemEncoder:
        return cls(source.feature("bags"), int(config["dim"]))


TITLES = ["toy story", "toy story 2", "heat", "casino", "jumanji", "sabrina", "golden eye",
          "balto", "nixon", "cutthroat island", "sense and sensibility", "four rooms"]
SEQS = [[1, 2, 5, 8], [3, 4, 9, 10], [1, 2, 7, 5, 8], [11, 6, 12, 3], [2, 1, 5]]


def test_a_kind_defined_here_trains_saves_loads_and_recommends(tmp_path: Path) -> None:
    try:
        torch.manual_seed(0)
        model = TransRec(TrigramItemEncoder.from_item_texts(TITLES), user_dim=16, max_len=5,
                         dropout=0.0)
        model.set_item_map([None, *TITLES])
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        ds = TrainDataset(SEQS, 5)
        batch = TrainCollator(len(TITLES), 5, 1, seed=0)([ds[i] for i in range(len(ds))])
        first = None
        for _ in range(20):
            loss = model.loss(batch)
            first = loss.item() if first is None else first
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert loss.item() < first  # it trains
        model.eval()
        model.save_pretrained(tmp_path / "m")
        loaded = TransRec.from_pretrained(tmp_path / "m")
        assert type(loaded.item_encoder) is TrigramItemEncoder
        hist = [["toy story", "heat"], ["balto"]]
        a, b = model.recommend(hist, k=4), loaded.recommend(hist, k=4)
        assert a.items == b.items and torch.equal(a.scores, b.scores)
        for m in (model, loaded):
            m.add_items(["toy story 3"], texts=["toy story 3"])
        assert loaded.recommend(hist, k=12).items == model.recommend(hist, k=12).items
    finally:
        unregister_kind("test_trigram")
