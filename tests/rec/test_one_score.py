"""One score whatever the path: `score` (no grad), `full_sort_scores`, `recommend` (full catalogue
and candidate lists) and the ranks of `evaluate_ranking` give the same floats for the same user and
item, at any batch size, chunk size and candidate-list length; exact ties go to the lower item
index; NaN is refused on every path."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from adarec.errors import EvaluationError, NonFiniteScoreError
from adarec.rec import IDItemEncoder, TransRec
from adarec.rec.data import pad_left, pad_right
from adarec.rec.metrics import full_ranking_ranks, target_ranks
from adarec.rec.scoring import ITEM_TILE, score_block, topk

N_ITEMS = 60


def _model(similarity: str = "cosine", temperature: float = 0.07, seed: int = 0) -> TransRec:
    torch.manual_seed(seed)
    model = TransRec(IDItemEncoder(N_ITEMS, 8), user_dim=8, dtl=False, max_len=6, n_layers=1,
                     n_heads=2, similarity=similarity, temperature=temperature)
    return model.eval()


HISTORIES = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10, 11, 12], [13], [2, 40, 41], [50, 51, 52, 53]]


def test_recommend_scores_are_the_model_scores_with_the_temperature() -> None:
    """recommend divided nothing by the temperature: its cosine scores were 1/0.07 of score()'s."""
    model = _model()
    rec = model.recommend(HISTORIES, k=5)
    hist = pad_left(HISTORIES, 6)
    with torch.no_grad():
        direct = model.score(hist, rec.indices)
    full = model.full_sort_scores(hist)
    assert torch.equal(rec.scores, direct)
    assert torch.equal(rec.scores, full.gather(1, rec.indices))


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 7), chunk=st.integers(1, 5000), sim=st.sampled_from(["dot", "cosine"]),
       temperature=st.sampled_from([1.0, 0.07, 3.0]), seed=st.integers(0, 3))
def test_every_path_gives_the_same_floats(batch: int, chunk: int, sim: str, temperature: float,
                                          seed: int) -> None:
    model = _model(sim, temperature, seed)
    hist = pad_left(HISTORIES, 6)
    full = model.full_sort_scores(hist)
    rec = model.recommend(HISTORIES, k=N_ITEMS, batch_size=batch, item_chunk=chunk)
    ok = rec.scores > float("-inf")
    assert torch.equal(rec.scores[ok], full.gather(1, rec.indices)[ok])
    cands = [h[::-1] + [30, 31, 32][: i % 4] for i, h in enumerate(HISTORIES)]  # ragged lists
    again = model.recommend(HISTORIES, k=3, candidates=cands, exclude_seen=False,
                            batch_size=batch)
    keep = again.scores > float("-inf")
    assert torch.equal(again.scores[keep], full_unmasked(model, hist).gather(
        1, again.indices)[keep])
    # evaluation ranks: the ranks behind evaluate_ranking (from the model's vectors) are the
    # ranks of full_sort_scores' floats, for every recommended item of every row
    users, table = model.user_vectors(hist), model.item_vectors()
    whole = model.full_sort_scores(hist, exclude_ids=pad_right(HISTORIES))  # untruncated history
    for j in range(0, N_ITEMS - 13, 7):
        targets = rec.indices[:, j]
        ranks = full_ranking_ranks(users, table, targets, HISTORIES, temperature=temperature)
        assert torch.equal(ranks, target_ranks(whole, targets))
        s = whole.gather(1, targets[:, None])
        assert torch.equal(ranks, (whole >= s).sum(1))  # pessimistic: every tie counts against


def full_unmasked(model: TransRec, hist: torch.Tensor) -> torch.Tensor:
    return model.full_sort_scores(hist, exclude_history=False)


@settings(max_examples=25, deadline=None)
@given(k=st.integers(1, 40), chunk=st.integers(1, 3 * ITEM_TILE), values=st.integers(1, 4),
       seed=st.integers(0, 100))
def test_ties_go_to_the_lower_index_at_any_chunk(k: int, chunk: int, values: int,
                                                 seed: int) -> None:
    """Scores from few distinct values tie a lot; the top-k equals a sort by (score, index)."""
    g = torch.Generator().manual_seed(seed)
    users = torch.randint(0, values, (4, 3), generator=g).float()
    items = torch.randint(0, values, (3000, 3), generator=g).float()
    got_values, got = topk(users, items, k, item_chunk=chunk)
    scores = score_block(users, items)
    for r in range(4):
        order = sorted(range(3000), key=lambda j: (-float(scores[r, j]), j))[:k]
        assert got[r].tolist() == order
        assert torch.equal(got_values[r], scores[r, order])


def test_batch_size_does_not_change_a_users_vector() -> None:
    model = _model("dot", 1.0)
    hist = pad_left(HISTORIES, 6)
    alone = torch.cat([model.user_vectors(hist[i : i + 1]) for i in range(len(HISTORIES))])
    assert torch.equal(alone, model.user_vectors(hist))


def test_nan_weight_is_refused_on_every_path() -> None:
    """recommend served [nan, nan, nan] as a top-3 where evaluate_ranking refused."""
    model = _model("dot", 1.0)
    with torch.no_grad():
        model.item_encoder.embedding.weight[7] = float("nan")
    model.invalidate_cache()
    hist = pad_left(HISTORIES, 6)
    with pytest.raises(NonFiniteScoreError, match="NaN or inf"):
        model.recommend(HISTORIES, k=3)
    with pytest.raises(NonFiniteScoreError):
        model.recommend(HISTORIES, k=3, candidates=[[1, 2]] * len(HISTORIES))
    with pytest.raises(NonFiniteScoreError):
        model.full_sort_scores(hist)
    with pytest.raises(EvaluationError):
        model.evaluate_ranking([(h, 20) for h in HISTORIES])
    with pytest.raises(NonFiniteScoreError), torch.no_grad():
        model.score(hist, hist)
