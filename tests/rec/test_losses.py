"""Tests for the training losses against straightforward reference computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from adarec.rec.losses import LOSSES, bce_loss, full_softmax_loss, sampled_softmax_loss


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def _bce_reference(
    user: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, mask: torch.Tensor
) -> float:
    total, count = 0.0, 0
    for b in range(user.size(0)):
        for t in range(user.size(1)):
            if not mask[b, t]:
                continue
            count += 1
            total -= math.log(torch.sigmoid(user[b, t] @ pos[b, t]).item())
            for j in range(neg.size(2)):
                total -= math.log(1 - torch.sigmoid(user[b, t] @ neg[b, t, j]).item())
    return total / count


def test_bce_matches_reference_and_ignores_padding() -> None:
    g = _gen()
    user, pos = torch.randn(3, 5, 4, generator=g), torch.randn(3, 5, 4, generator=g)
    neg = torch.randn(3, 5, 2, 4, generator=g)
    mask = torch.rand(3, 5, generator=g) > 0.4
    mask[0, 0] = True
    expected = _bce_reference(user, pos, neg, mask)
    assert bce_loss(user, pos, neg, mask).item() == pytest.approx(expected, rel=1e-5)
    # NaN at padded positions must not leak; gradients there are zero
    user = user.clone().masked_fill(~mask.unsqueeze(-1), float("nan")).requires_grad_()
    loss = bce_loss(user, pos, neg, mask)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert (user.grad[~mask] == 0).all()


def test_bce_single_negative_shapes_and_empty_mask() -> None:
    g = _gen()
    user, pos, neg = (torch.randn(2, 3, 4, generator=g) for _ in range(3))
    mask = torch.ones(2, 3, dtype=torch.bool)
    assert torch.equal(bce_loss(user, pos, neg, mask), bce_loss(user, pos, neg[:, :, None], mask))
    empty = bce_loss(user.requires_grad_(), pos, neg, torch.zeros(2, 3, dtype=torch.bool))
    assert empty.item() == 0.0 and empty.requires_grad


def test_sampled_softmax_reference_temperature_and_logq() -> None:
    g = _gen()
    user, cands = torch.randn(6, 4, generator=g), torch.randn(5, 4, generator=g)
    pos_index = torch.tensor([0, 1, 2, 3, 4, 0])
    logits = user @ cands.T
    assert sampled_softmax_loss(user, cands, pos_index).item() == pytest.approx(
        F.cross_entropy(logits, pos_index).item(), rel=1e-6
    )
    logq = torch.log(torch.tensor([0.4, 0.3, 0.1, 0.1, 0.1]))
    got = sampled_softmax_loss(user, cands, pos_index, logq=logq, temperature=0.5)
    assert got.item() == pytest.approx(
        F.cross_entropy(logits / 0.5 - logq, pos_index).item(), rel=1e-6
    )
    # only differences of logq matter: a constant offset changes nothing
    offset = sampled_softmax_loss(user, cands, pos_index, logq=logq - 3.0, temperature=0.5)
    assert offset.item() == pytest.approx(got.item(), rel=1e-6)


def test_sampled_softmax_masks_accidental_hits_and_padding() -> None:
    g = _gen()
    user = torch.randn(4, 3, generator=g)
    items = torch.randn(10, 3, generator=g)
    # non-deduplicated in-batch candidates: item 7 appears twice, padding item 0 once
    ids = torch.tensor([7, 2, 7, 5, 0])
    pos_index = torch.tensor([0, 1, 2, 3])
    got = sampled_softmax_loss(user, items[ids], pos_index, candidate_ids=ids)
    logits = user @ items[ids].T
    expected = []
    for m, p in enumerate(pos_index.tolist()):
        keep = [c for c in range(len(ids)) if c == p or (ids[c] != ids[p] and ids[c] != 0)]
        expected.append(-F.log_softmax(logits[m, keep], 0)[keep.index(p)])
    assert got.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-6)


def test_full_softmax_excludes_padding() -> None:
    g = _gen()
    user, table = torch.randn(5, 4, generator=g), torch.randn(8, 4, generator=g)
    targets = torch.tensor([1, 7, 3, 3, 2])
    logits = user @ table.T
    logits[:, 0] = float("-inf")
    expected = -F.log_softmax(logits, 1).gather(1, targets[:, None]).mean()
    assert full_softmax_loss(user, table, targets).item() == pytest.approx(expected.item())
    table[0] = 1e4  # a huge padding row must not matter
    assert full_softmax_loss(user, table, targets).item() == pytest.approx(expected.item())
    with pytest.raises(ValueError, match="padding"):
        full_softmax_loss(user, table, torch.tensor([0, 1, 2, 3, 4]))


def test_registry() -> None:
    assert LOSSES["bce"] is bce_loss
    assert LOSSES["sampled_softmax"] is sampled_softmax_loss
    assert LOSSES["full_softmax"] is full_softmax_loss
