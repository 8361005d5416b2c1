"""The MIPS -> L2 reduction of `ItemIndex` (`l2_reduction=True`) and trained non-IVF storage:
top-k equal to the exact one where the index is exact, saved indexes reload identically."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import tiny_transrec as helpers
import torch

pytest.importorskip("faiss")

from adarec.errors import CheckpointError
from adarec.rec import PrecomputedItemEncoder, TransRec
from adarec.rec.ann import ItemIndex, l2_query, mips_to_l2

N, D = 3000, 16
HISTORIES = [[1, 2, 3], [40, 41], [7], [2999, 5, 6, 100]]


def _model(trainable: bool = False) -> TransRec:
    """Rows of very different norms, where inner product and L2 rank differently."""
    torch.manual_seed(0)
    table = torch.randn(N + 1, D) * torch.rand(N + 1, 1) * 4
    return TransRec(PrecomputedItemEncoder(table, trainable=trainable), dtl=False, user_dim=D,
                    max_len=5, dropout=0.0).eval()


def test_reduction_ranks_like_inner_product() -> None:
    rng = np.random.default_rng(0)
    rows = (rng.standard_normal((500, 8)) * rng.uniform(0.1, 3, (500, 1))).astype(np.float32)
    queries = rng.standard_normal((20, 8)).astype(np.float32)
    norm = float(np.linalg.norm(rows, axis=1).max())
    items, q = mips_to_l2(rows, norm), l2_query(queries, norm)
    assert np.allclose(np.linalg.norm(items, axis=1), norm, rtol=1e-5)
    l2 = ((q[:, None, :] - items[None]) ** 2).sum(-1)
    by_ip = np.argsort(-(queries @ rows.T), axis=1, kind="stable")[:, :10]
    assert (np.argsort(l2, axis=1, kind="stable")[:, :10] == by_ip).mean() > 0.99
    by_l2_raw = np.argsort(((queries[:, None] - rows[None]) ** 2).sum(-1), axis=1)[:, :10]
    assert (by_l2_raw == by_ip).mean() < 0.5  # without the extra column L2 is another ranking
    assert mips_to_l2(rows, None) is not None and mips_to_l2(rows, None).shape == rows.shape


@pytest.mark.parametrize("kind", ["flat", "ivfpq"])
def test_reduced_index_equals_exact_recommend(kind: str) -> None:
    """Flat, and IVF probing every list with a wide N (its default factory is made for the
    ``d + 1`` reduced dimensions): exact, so equal to `recommend` item for item."""
    model = _model()
    index = (ItemIndex.build(model, kind, l2_reduction=True) if kind == "flat" else
             ItemIndex.build(model, kind, l2_reduction=True, nprobe=10_000, oversample=100))
    norm = float(model.item_vectors()[1:].norm(dim=1).max())
    assert index.l2_max_norm == pytest.approx(norm, rel=1e-6)
    assert (index.index.d, index.dim) == (D + 1, D)
    exact = model.recommend(HISTORIES, k=10)
    got = index.search(HISTORIES, k=10)
    assert torch.equal(got.indices, exact.indices) and torch.equal(got.scores, exact.scores)
    users = model.user_vectors(torch.tensor([[0, 0, 1, 2, 3]]))
    assert torch.equal(index.search(users, k=10).indices,
                       model.recommend([[1, 2, 3]], k=10, exclude_seen=False).indices)


@pytest.mark.parametrize("factory", ["IDMap,HNSW32", "IDMap,HNSW32_SQ8"])
def test_reduced_hnsw_reloads_identically_and_rebuilds_reduced(factory: str,
                                                                tmp_path: Path) -> None:
    model = _model(trainable=True)
    index = ItemIndex.build(model, "hnsw", factory=factory, l2_reduction=True, ef_search=512)
    index.remove_items([11, 12])
    before = index.search(HISTORIES, k=10)
    folder = index.save(tmp_path / "ann")
    assert json.loads((folder / "ann.json").read_text())["l2_max_norm"] == index.l2_max_norm
    loaded = ItemIndex.load(folder, model)
    assert (loaded.l2_max_norm, loaded.factory, loaded.removed) == (
        index.l2_max_norm, factory, [11, 12])
    after = loaded.search(HISTORIES, k=10)
    assert torch.equal(after.indices, before.indices) and torch.equal(after.scores, before.scores)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    model.item_embeddings(torch.tensor([1, 2, 3])).sum().backward()
    opt.step()
    model.eval()
    again = ItemIndex.load(folder, model, rebuild=True)
    assert again.l2_max_norm is not None and again.removed == [11, 12]


def test_format_1_record_reads_as_inner_product_and_bad_dim_refused(tmp_path: Path) -> None:
    model = _model()
    folder = ItemIndex.build(model, "flat").save(tmp_path / "ann")
    record = json.loads((folder / "ann.json").read_text())
    assert record["l2_max_norm"] is None
    old = {k: v for k, v in record.items() if k != "l2_max_norm"} | {"format_version": 1}
    (folder / "ann.json").write_text(json.dumps(old))
    loaded = ItemIndex.load(folder, model)
    assert loaded.l2_max_norm is None
    assert torch.equal(loaded.search(HISTORIES, k=10).indices,
                       model.recommend(HISTORIES, k=10).indices)
    (folder / "ann.json").write_text(json.dumps({**record, "l2_max_norm": 3.0}))
    with pytest.raises(CheckpointError, match="dimensions"):
        ItemIndex.load(folder, model)


def test_items_added_after_a_reduced_build_are_found() -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_transrec import Tok

    model = helpers.text_model().eval()
    index = ItemIndex.build(model, "flat", l2_reduction=True)
    new = model.add_items([13, 14, 15], ["a b c", "d e", "f g h i"], Tok())
    assert index.add_items() == new
    got = index.search([[1, 2]], k=3, candidates=[*new, 4])
    exact = model.recommend([[1, 2]], k=3, candidates=[[*new, 4]])
    assert torch.equal(got.indices, exact.indices) and torch.equal(got.scores, exact.scores)
