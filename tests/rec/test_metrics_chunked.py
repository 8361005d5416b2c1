"""Full-ranking evaluation over item chunks gives exactly the one-table result: the same ranks,
tie counts and metrics under every tie rule, with exclusions and targets in any chunk."""

from __future__ import annotations

import pytest
import torch

from adarec.errors import EvaluationError
from adarec.rec.metrics import (
    TIES,
    evaluate_full_ranking,
    full_ranking_counts,
    full_ranking_ranks,
)

N = 5000  # > 2 chunks of 2048 (chunks are whole score tiles)


def _tied_data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Small integer vectors: many items score exactly alike, so ties decide ranks."""
    g = torch.Generator().manual_seed(seed)
    users = torch.randint(-2, 3, (37, 4), generator=g).float()
    items = torch.randint(-2, 3, (N + 1, 4), generator=g).float()
    targets = torch.randint(1, N + 1, (37,), generator=g)
    targets[:3] = torch.tensor([1, 2048, N])  # the first item, a chunk edge, the last item
    histories = torch.randint(0, N + 1, (37, 30), generator=g)  # 0: padding
    histories[0, :2] = torch.tensor([1, 4095])
    return users, items, targets, histories


@pytest.mark.parametrize("ties", [t for t in TIES if t != "expected"])
@pytest.mark.parametrize("exclude_history", [True, False])
def test_chunked_ranks_equal_one_table(ties: str, exclude_history: bool) -> None:
    users, items, targets, histories = _tied_data()
    kw = dict(batch_size=16, exclude_history=exclude_history, ties=ties, seed=3)
    one = full_ranking_ranks(users, items, targets, histories, item_chunk=N + 1, **kw)
    for chunk in (2048, 4096, 1):  # 1 rounds up to one tile
        chunked = full_ranking_ranks(users, items, targets, histories, item_chunk=chunk, **kw)
        assert torch.equal(one, chunked), (ties, chunk)
    assert ties == "optimistic" or len(set(one.tolist())) > 1


def test_chunked_tie_counts_and_metrics_equal_one_table() -> None:
    users, items, targets, histories = _tied_data(1)
    higher, tied = full_ranking_counts(users, items, targets, histories, item_chunk=N + 1,
                                       temperature=0.7)
    assert int(tied.sum()) > 0  # the data does tie
    h2, t2 = full_ranking_counts(users, items, targets, histories, item_chunk=2048,
                                 temperature=0.7)
    assert torch.equal(higher, h2) and torch.equal(tied, t2)
    for ties in TIES:
        a = evaluate_full_ranking(users, items, targets, histories, ks=(1, 10, 100),
                                  ties=ties, item_chunk=N + 1)
        b = evaluate_full_ranking(users, items, targets, histories, ks=(1, 10, 100),
                                  ties=ties, item_chunk=2048)
        assert a == b, ties


def test_chunked_evaluation_of_continuous_scores_equals_one_table() -> None:
    g = torch.Generator().manual_seed(2)
    users, items = torch.randn(40, 16, generator=g), torch.randn(N + 1, 16, generator=g)
    targets = torch.randint(1, N + 1, (40,), generator=g)
    a = full_ranking_ranks(users, items, targets, item_chunk=N + 1)
    b = full_ranking_ranks(users, items, targets, item_chunk=2048)
    assert torch.equal(a, b)


def test_chunked_evaluation_refuses_nan_naming_the_item() -> None:
    users, items, targets, histories = _tied_data()
    items[4500, 0] = float("nan")
    targets[targets == 4500] = 1
    for chunk in (N + 1, 2048):
        with pytest.raises(EvaluationError, match="NaN score for item 4500 "):
            full_ranking_ranks(users, items, targets, histories, item_chunk=chunk)


def test_bad_item_chunk_and_targets_are_refused() -> None:
    users, items, targets, _ = _tied_data()
    with pytest.raises(EvaluationError, match="item_chunk must be >= 1"):
        full_ranking_ranks(users, items, targets, item_chunk=0)
    with pytest.raises(EvaluationError, match=r"targets must be item indices in 1\.\.5000"):
        full_ranking_ranks(users, items, torch.full((37,), N + 1), item_chunk=2048)
