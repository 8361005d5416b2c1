"""The one-pass ranking (flags + scatter, float row sums) against a plain per-row definition."""

from __future__ import annotations

import pytest
import torch

from adarec.rec import metrics
from adarec.rec.metrics import full_ranking_counts, full_ranking_ranks, target_ranks, tie_counts


def _reference(scores: torch.Tensor, targets: torch.Tensor, history: list[list[int]],
               ties: str) -> list[int]:
    """Rank = 1 + #items (not padding, not in history, not the target) beating the target."""
    out = []
    for row, target, hist in zip(scores.tolist(), targets.tolist(), history, strict=True):
        t = row[target]
        skip = {0, target} | set(hist)
        beat = [s > t if ties == "optimistic" else s >= t for s in row]
        out.append(1 + sum(b for i, b in enumerate(beat) if i not in skip))
    return out


@pytest.mark.parametrize("ties", ["optimistic", "pessimistic"])
@pytest.mark.parametrize("seed", range(5))
def test_matches_reference_with_ties_duplicates_and_target_in_history(ties: str,
                                                                      seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 6, (9, 23), generator=g).float()  # many ties
    targets = torch.randint(1, 23, (9,), generator=g)
    history = [torch.randint(0, 23, (int(n),), generator=g).tolist()
               for n in torch.randint(0, 12, (9,), generator=g)]
    history[0] = [int(targets[0]), int(targets[0]), 3, 3]
    expected = _reference(scores, targets, history, ties)
    assert target_ranks(scores, targets, history, ties).tolist() == expected  # type: ignore[arg-type]
    mask = torch.zeros_like(scores, dtype=torch.bool)
    for r, h in enumerate(history):
        mask[r, h] = True
    assert target_ranks(scores, targets, mask, ties).tolist() == expected  # type: ignore[arg-type]
    users = torch.eye(9)  # scores = users @ items.T, through the buffered in-place path
    got = full_ranking_ranks(users, scores.T.contiguous(), targets, history, batch_size=4,
                             ties=ties)  # type: ignore[arg-type]
    assert got.tolist() == expected
    # both counts of the two-pass rules, through the public function and the buffered path
    higher = _reference(scores, targets, history, "optimistic")
    level = _reference(scores, targets, history, "pessimistic")
    tied = [b - a for a, b in zip(higher, level, strict=True)]
    for h, t in (tie_counts(scores, targets, history),
                 full_ranking_counts(users, scores.T.contiguous(), targets, history, batch_size=4)):
        assert (h + 1).tolist() == higher and t.tolist() == tied


def test_counts_stay_exact_across_float32_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "_EXACT_F32", 5)
    g = torch.Generator().manual_seed(0)
    scores, targets = torch.randn(6, 37, generator=g), torch.randint(1, 37, (6,), generator=g)
    expected = _reference(scores, targets, [[]] * 6, "optimistic")
    assert target_ranks(scores, targets).tolist() == expected


def test_public_target_ranks_leaves_scores_untouched() -> None:
    scores = torch.randn(3, 11)
    before = scores.clone()
    target_ranks(scores, torch.tensor([1, 2, 3]), [[4], [5], [6]])
    assert torch.equal(scores, before)
