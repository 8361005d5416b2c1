"""Tests for full-ranking metrics, chunked top-k and the popularity baseline."""

from __future__ import annotations

import math

import pytest
import torch

from adarec.rec.metrics import (
    PopularityRecommender,
    evaluate_full_ranking,
    full_ranking_ranks,
    ranking_metrics,
    target_ranks,
    topk_chunked,
)

SCORES = torch.tensor(
    [
        [9.0, 0.5, 0.9, 0.1, 0.9, 0.3],  # target 2 ties with item 4; item 0 is padding
        [9.0, 0.5, 0.9, 0.1, 0.9, 0.3],  # target 3: items 1, 2, 4, 5 score higher
    ]
)
TARGETS = torch.tensor([2, 3])


def test_ranks_by_hand() -> None:
    assert target_ranks(SCORES, TARGETS, ties="optimistic").tolist() == [1, 5]
    assert target_ranks(SCORES, TARGETS).tolist() == [2, 5]  # ties count against the target


def test_history_masked_but_target_stays_rankable() -> None:
    history = torch.tensor([[4, 0], [1, 3]])  # row 2 has its target in the history
    assert target_ranks(SCORES, TARGETS, history, ties="pessimistic").tolist() == [1, 4]
    as_mask = torch.zeros_like(SCORES, dtype=torch.bool)
    as_mask[0, 4] = as_mask[1, 1] = as_mask[1, 3] = True
    assert target_ranks(SCORES, TARGETS, as_mask, ties="pessimistic").tolist() == [1, 4]
    assert target_ranks(SCORES, TARGETS, [[4], [1, 3]], ties="pessimistic").tolist() == [1, 4]


def test_ranks_reject_bad_input() -> None:
    with pytest.raises(ValueError, match=r"1\.\.5"):
        target_ranks(SCORES, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="NaN"):
        target_ranks(torch.full((1, 3), float("nan")), torch.tensor([1]))
    with pytest.raises(ValueError, match="ties"):
        target_ranks(SCORES, TARGETS, ties="first")  # type: ignore[arg-type]


def test_metrics_by_hand() -> None:
    out = ranking_metrics(torch.tensor([1, 4, 12]), ks=(10,))
    assert out["hr@10"] == pytest.approx(2 / 3)
    assert out["ndcg@10"] == pytest.approx((1 + 1 / math.log2(5)) / 3)
    assert out["mrr@10"] == pytest.approx((1 + 1 / 4) / 3)
    out = ranking_metrics(torch.tensor([1, 4, 12]), ks=(1, 20), metrics=("hr",))
    assert out == {"hr@1": pytest.approx(1 / 3), "hr@20": 1.0}
    with pytest.raises(ValueError, match="unknown"):
        ranking_metrics(torch.tensor([1]), metrics=("auc",))


def test_full_ranking_matches_one_big_matrix() -> None:
    gen = torch.Generator().manual_seed(0)
    users, items = torch.randn(37, 8, generator=gen), torch.randn(51, 8, generator=gen)
    targets = torch.randint(1, 51, (37,), generator=gen)
    histories = [torch.randint(1, 51, (int(n),), generator=gen).tolist() for n in targets % 7]
    expected = target_ranks(users @ items.T, targets, histories)
    for batch_size in (1, 5, 37, 100):
        got = full_ranking_ranks(users, items, targets, histories, batch_size=batch_size)
        assert torch.equal(got, expected)
    lazy = full_ranking_ranks(lambda idx: users[idx], items, targets, histories, batch_size=8)
    assert torch.equal(lazy, expected)
    no_mask = full_ranking_ranks(users, items, targets, histories, exclude_history=False)
    assert torch.equal(no_mask, target_ranks(users @ items.T, targets))
    assert evaluate_full_ranking(users, items, targets, histories) == ranking_metrics(expected)


@pytest.mark.parametrize("chunk", [1, 3, 16, 50, 64, 1000])
@pytest.mark.parametrize("k", [1, 7, 50])
def test_topk_chunked_equals_plain_topk(chunk: int, k: int) -> None:
    gen = torch.Generator().manual_seed(chunk * 100 + k)
    users, items = torch.randn(9, 4, generator=gen), torch.randn(50, 4, generator=gen)
    values, indices = topk_chunked(users, items, k, item_chunk=chunk)
    ref_values, ref_indices = torch.topk(users @ items.T, k, dim=1)
    assert torch.allclose(values, ref_values, atol=1e-5) and torch.equal(indices, ref_indices)


def test_topk_chunked_exclude() -> None:
    gen = torch.Generator().manual_seed(1)
    users, items = torch.randn(5, 4, generator=gen), torch.randn(30, 4, generator=gen)
    exclude = torch.randint(0, 30, (5, 6), generator=gen)
    exclude[:, -1] = -1  # padding entry: must not exclude anything
    scores = users @ items.T
    scores.scatter_(1, exclude[:, :-1], float("-inf"))
    values, indices = topk_chunked(users, items, 10, item_chunk=7, exclude=exclude)
    ref_values, ref_indices = torch.topk(scores, 10, dim=1)
    assert torch.allclose(values, ref_values, atol=1e-5) and torch.equal(indices, ref_indices)
    with pytest.raises(ValueError, match="k must be"):
        topk_chunked(users, items, 31)


def test_popularity_recommender() -> None:
    pop = PopularityRecommender(n_items=5).fit([[1, 2, 2], [2, 3, 3, 3], [0, 4]])
    assert pop.counts.tolist() == [0, 1, 3, 3, 1, 0]
    assert pop.scores(2).shape == (2, 6)
    # targets: 3 (tie with 2 -> pessimistic 2), 1 (behind 2, 3; tied with 4), 2 with 3 in history
    targets, histories = [3, 1, 2], [[1], [5], [3, 3]]
    ranks = full_ranking_ranks(torch.ones(3, 1), pop.item_embeddings, targets, histories)
    assert ranks.tolist() == [2, 4, 1]
    optimistic = full_ranking_ranks(torch.ones(3, 1), pop.item_embeddings, targets, histories,
                                    ties="optimistic")
    assert optimistic.tolist() == [1, 3, 1]
    out = pop.evaluate(targets, histories, ks=(1,), metrics=("hr",))
    assert out == {"hr@1": pytest.approx(1 / 3)}  # pessimistic ranks [2, 4, 1]
    out = pop.evaluate(targets, histories, ks=(1,), ties="expected", metrics=("hr",))
    assert out == {"hr@1": pytest.approx((1 / 2 + 0 + 1) / 3)}
