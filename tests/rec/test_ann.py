"""Approximate retrieval (adarec.rec.ann): a faiss index retrieves, the model's scoring re-ranks,
so results equal `recommend`'s where the index finds the true top k (always, for flat)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import tiny_transrec as helpers
import torch

pytest.importorskip("faiss")
import faiss

from adarec.errors import CheckpointError, ConfigError
from adarec.rec import PrecomputedItemEncoder, TransRec
from adarec.rec.ann import ItemIndex, StaleIndexError, default_factory
from adarec.rec.scoring import topk

N, D = 3000, 16
HISTORIES = [[1, 2, 3], [40, 41], [7], [2999, 5, 6, 100]]


def _model(similarity: str = "dot", temperature: float = 1.0, n: int = N, d: int = D,
           trainable: bool = False, seed: int = 0) -> TransRec:
    torch.manual_seed(seed)
    table = torch.randn(n + 1, d)
    return TransRec(PrecomputedItemEncoder(table, trainable=trainable), dtl=False, user_dim=d,
                    max_len=5, dropout=0.0, similarity=similarity,
                    temperature=temperature).eval()


def _build(model: TransRec, kind: str) -> ItemIndex:
    """IVF-PQ probing every list with a wide N: exact on these small tables, so results can be
    compared with `recommend` item for item."""
    if kind == "ivfpq":
        return ItemIndex.build(model, kind, nprobe=10_000, oversample=100)
    return ItemIndex.build(model, kind)


@pytest.fixture(scope="module")
def dot() -> TransRec:
    return _model()


@pytest.mark.parametrize(("similarity", "temperature"), [("dot", 1.0), ("cosine", 0.07)])
def test_flat_index_equals_exact_recommend(similarity: str, temperature: float) -> None:
    model = _model(similarity, temperature)
    index = ItemIndex.build(model, "flat")
    exact = model.recommend(HISTORIES, k=10)
    got = index.search(HISTORIES, k=10)
    assert torch.equal(got.indices, exact.indices)
    assert torch.equal(got.scores, exact.scores)  # the model's own floats, temperature included
    assert got.items == exact.items
    if similarity == "cosine":  # scores are cosine / temperature, not raw inner products
        assert float(got.scores.abs().max()) <= 1 / temperature + 1e-3
    users = model.user_vectors(torch.tensor([[0, 0, 1, 2, 3]]))
    by_vector = index.search(users, k=10)  # vectors: nothing is "seen"
    assert torch.equal(by_vector.indices, model.recommend([[1, 2, 3]], k=10,
                                                          exclude_seen=False).indices)


def test_hnsw_recall_at_10_on_20k_random_items() -> None:
    model = _model(n=20_000, d=64)
    index = ItemIndex.build(model, "hnsw")
    users = torch.nn.functional.normalize(torch.randn(200, 64), dim=1) * 3
    _, truth = topk(users, model.item_vectors(), 10, exclude=torch.zeros(200, 1, dtype=torch.long))
    got = index.search(users, k=10)
    hits = sum(len(set(a) & set(b)) for a, b in zip(got.indices.tolist(), truth.tolist(),
                                                     strict=True))
    assert hits / truth.numel() >= 0.99


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_exclusions_keep_k_results(dot: TransRec, kind: str) -> None:
    index = _build(dot, kind)
    top = dot.recommend(HISTORIES, k=60).indices.tolist()  # exclude each row's true top 60
    exact = dot.recommend(HISTORIES, k=10, exclude=top)
    got = index.search(HISTORIES, k=10, exclude=top)
    assert (got.scores > float("-inf")).all()
    assert torch.equal(got.indices, exact.indices)
    assert torch.equal(got.scores, exact.scores)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
@pytest.mark.parametrize("share", [0.3, 0.02])  # searched in faiss / ranked exactly
def test_candidate_filter(dot: TransRec, kind: str, share: float) -> None:
    index = _build(dot, kind)
    order = torch.randperm(N, generator=torch.Generator().manual_seed(1)) + 1
    in_stock = order[: int(share * N)]
    exact = dot.recommend(HISTORIES, k=10, candidates=[in_stock.tolist()] * len(HISTORIES))
    for candidates in (in_stock.tolist(), torch.zeros(N + 1, dtype=torch.bool)
                       .index_fill_(0, in_stock, True)):
        got = index.search(HISTORIES, k=10, candidates=candidates)
        assert set(got.indices.flatten().tolist()) <= set(in_stock.tolist())
        assert torch.equal(got.indices, exact.indices)
        assert torch.equal(got.scores, exact.scores)
    few = index.search(HISTORIES, k=10, candidates=in_stock[:3].tolist())  # fewer than k exist
    assert (few.scores[:, :3] > float("-inf")).all() and (few.scores[:, 3:] == float("-inf")).all()
    assert all(len(row) == 3 for row in few.items)


def test_similar_items(dot: TransRec) -> None:
    index = ItemIndex.build(dot, "flat")
    table = dot.item_vectors()
    got = index.similar_items([5, 77], k=8)
    for row, item in zip(got.indices.tolist(), [5, 77], strict=True):
        scores = table @ table[item]
        scores[[0, item]] = float("-inf")
        assert row == scores.topk(8).indices.tolist()
    assert 5 not in got.indices[0].tolist()


def test_stale_table_refused_and_rebuilt_on_request(tmp_path: Path) -> None:
    model = _model(trainable=True)
    index = ItemIndex.build(model, "hnsw")
    index.save(tmp_path / "ann")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    model.item_embeddings(torch.tensor([1, 2, 3])).sum().backward()
    opt.step()
    model.eval()
    with pytest.raises(StaleIndexError, match="not the one this index was built from"):
        index.search(HISTORIES, k=5)
    with pytest.raises(StaleIndexError, match="rebuild=True"):
        ItemIndex.load(tmp_path / "ann", model)
    again = ItemIndex.load(tmp_path / "ann", model, rebuild=True)
    assert again.kind == "hnsw"
    exact = model.recommend(HISTORIES, k=5)
    assert torch.equal(again.search(HISTORIES, k=5).indices, exact.indices)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_save_load_round_trip(dot: TransRec, kind: str, tmp_path: Path) -> None:
    index = _build(dot, kind)
    index.remove_items([11, 12])
    before = index.search(HISTORIES, k=10)
    index.save(tmp_path / "ann")
    loaded = ItemIndex.load(tmp_path / "ann", dot)
    assert (loaded.kind, loaded.factory, loaded.removed) == (kind, index.factory, [11, 12])
    after = loaded.search(HISTORIES, k=10)
    assert torch.equal(after.indices, before.indices) and torch.equal(after.scores, before.scores)


def test_corrupted_truncated_or_edited_index_refused(dot: TransRec, tmp_path: Path) -> None:
    folder = ItemIndex.build(dot, "flat").save(tmp_path / "ann")
    blob = (folder / "index.faiss").read_bytes()
    (folder / "index.faiss").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        ItemIndex.load(folder, dot)
    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 1
    (folder / "index.faiss").write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        ItemIndex.load(folder, dot)
    (folder / "index.faiss").write_bytes(blob)
    record = json.loads((folder / "ann.json").read_text())
    (folder / "ann.json").write_text(json.dumps({**record, "format": "other"}))
    with pytest.raises(CheckpointError, match="not a valid index record"):
        ItemIndex.load(folder, dot)
    (folder / "ann.json").unlink()
    with pytest.raises(CheckpointError, match=r"ann\.json"):
        ItemIndex.load(folder, dot)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_remove_items(dot: TransRec, kind: str) -> None:
    index = _build(dot, kind)
    top = dot.recommend(HISTORIES, k=5).indices
    gone = sorted(set(top.flatten().tolist()))
    assert index.remove_items(gone) == gone
    assert index.index.ntotal == (N if kind == "hnsw" else N - len(gone))  # HNSW: marked only
    got = index.search(HISTORIES, k=10)
    assert not set(got.indices.flatten().tolist()) & set(gone)
    exact = dot.recommend(HISTORIES, k=10, exclude=[gone] * len(HISTORIES))
    assert torch.equal(got.indices, exact.indices)


def test_add_items_without_rebuild() -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_transrec import Tok

    model = helpers.text_model().eval()
    index = ItemIndex.build(model, "flat")
    new = model.add_items([13, 14, 15], ["a b c", "d e", "f g h i"], Tok())
    with pytest.raises(StaleIndexError, match=r"index.add_items\(\)"):
        index.search([[1, 2]], k=3)
    assert index.add_items() == new
    assert index.index.ntotal == helpers.N_ITEMS + 3
    got = index.search([[1, 2]], k=3, candidates=[*new, 4])
    exact = model.recommend([[1, 2]], k=3, candidates=[[*new, 4]])
    assert torch.equal(got.indices, exact.indices) and torch.equal(got.scores, exact.scores)


def test_bad_input_and_threads(dot: TransRec, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="kind="):
        ItemIndex.build(dot, "annoy")
    index = ItemIndex.build(dot, "flat")
    with pytest.raises(ConfigError, match=r"\[B, 16\]"):
        index.search(torch.randn(2, 8), k=3)
    with pytest.raises(ConfigError, match="not L2-normalised"):
        ItemIndex.build(_model("cosine")).search(torch.randn(2, D) * 5, k=3)
    torch.set_num_threads(1)
    index.search(HISTORIES, k=3)
    assert faiss.omp_get_max_threads() == 1
    assert default_factory("ivfpq", 1_000_000, 64) == "IVF4000,PQ32x4fs"
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(ImportError, match=r"adarec\[ann\]"):
        ItemIndex.build(dot, "flat")


def test_rows_left_short_are_searched_again(dot: TransRec) -> None:
    """One IVF list probed under a filter yields fewer than k items: the row is searched with a
    larger N until it has k (here: until N covers the filter, then exactly)."""
    index = ItemIndex.build(dot, "ivfpq", nprobe=1)
    order = torch.randperm(N, generator=torch.Generator().manual_seed(2)) + 1
    in_stock = order[:300].tolist()  # ~4 per IVF list
    got = index.search(HISTORIES, k=10, candidates=in_stock)
    exact = dot.recommend(HISTORIES, k=10, candidates=[in_stock] * len(HISTORIES))
    assert (got.scores > float("-inf")).all()
    assert torch.equal(got.indices, exact.indices) and torch.equal(got.scores, exact.scores)
