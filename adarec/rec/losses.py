"""Training losses for next-item prediction: SASRec BCE, sampled softmax and full softmax."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from adarec.errors import DataError
from adarec.precision import stable_size
from adarec.rec.data import PAD

_IGNORED = -100
"""The target of a padded row: `F.cross_entropy` leaves it out of the mean."""

GatherCandidates = Callable[[Tensor, Tensor], tuple[Tensor, Tensor, int]]
"""``(ids, emb) -> (all ids, all emb, offset of the local rows)``: other processes' candidates
as extra negatives (`adarec.distributed.enable_cross_rank_negatives`)."""


def bce_loss(user_repr: Tensor, pos_emb: Tensor, neg_emb: Tensor, mask: Tensor) -> Tensor:
    """SASRec binary cross-entropy (Kang & McAuley 2018) with ``k`` sampled negatives.

    ``user_repr``/``pos_emb`` are ``[B, L, d]``, ``neg_emb`` ``[B, L, k, d]`` (or ``[B, L, d]``
    for k = 1), ``mask`` ``[B, L]`` marks real positions. Every negative is its own binary
    example (summed over k, as in word2vec negative sampling; identical to SASRec for k = 1);
    the sum is averaged over real positions. Padded positions are dropped before any math, so
    even NaN there cannot leak into the loss.
    """
    if neg_emb.dim() == user_repr.dim():
        neg_emb = neg_emb.unsqueeze(-2)
    user = user_repr[mask]
    pos_logits = (user * pos_emb[mask]).sum(-1)
    neg_logits = torch.einsum("md,mkd->mk", user, neg_emb[mask])
    loss = F.binary_cross_entropy_with_logits(
        pos_logits, torch.ones_like(pos_logits), reduction="sum"
    ) + F.binary_cross_entropy_with_logits(
        neg_logits, torch.zeros_like(neg_logits), reduction="sum"
    )
    return loss / max(user.size(0), 1)


def sampled_softmax_loss(
    user_repr: Tensor,
    candidates: Tensor,
    pos_index: Tensor,
    logq: Tensor | None = None,
    temperature: float = 1.0,
    candidate_ids: Tensor | None = None,
) -> Tensor:
    """In-batch sampled softmax over ``candidates`` ``[C, d]``; row m's positive is
    ``candidates[pos_index[m]]``.

    Logits are ``user_repr @ candidates.T / temperature - logq`` (logQ correction, Yi et al.
    2019: subtracting each candidate's log sampling probability makes the sampled softmax an
    unbiased estimate of the full one; only differences matter, so logq may be off by a
    constant). With ``candidate_ids`` ``[C]``, accidental hits are masked: a candidate with the
    positive's id at another column (duplicate in-batch items) or the padding item. Typical
    use: ``ids, pos_index = torch.unique(target_ids, return_inverse=True)``. Under CPU autocast
    rows and columns are zero-padded to a `stable_size` (padded logits -inf, padded rows
    ignored: the same loss), so the batch's counts do not give every step new matmul shapes.
    """
    m, c = user_repr.size(0), candidates.size(0)
    rows, cols = stable_size(m, user_repr.device), stable_size(c, candidates.device)
    targets = pos_index
    if (rows, cols) != (m, c):  # zero rows and columns: -inf logits, ignored targets
        user_repr = F.pad(user_repr, (0, 0, 0, rows - m))
        candidates = F.pad(candidates, (0, 0, 0, cols - c))
        targets = F.pad(pos_index, (0, rows - m), value=_IGNORED)
    logits = user_repr @ candidates.T / temperature
    if logq is not None:
        logits = logits - F.pad(logq, (0, cols - c))
    if candidate_ids is not None:
        positive_ids = candidate_ids[pos_index]
        hit = (candidate_ids.unsqueeze(0) == positive_ids.unsqueeze(1)) | (
            candidate_ids.unsqueeze(0) == PAD
        )
        hit[torch.arange(len(pos_index), device=hit.device), pos_index] = False
        logits = logits.masked_fill(F.pad(hit, (0, cols - c, 0, rows - m)), float("-inf"))
    if cols > c:
        logits = logits.masked_fill(torch.arange(cols, device=logits.device) >= c,
                                    float("-inf"))
    return F.cross_entropy(logits, targets, ignore_index=_IGNORED)


def full_softmax_loss(
    user_repr: Tensor, item_table: Tensor, targets: Tensor, items: Tensor | None = None
) -> Tensor:
    """Cross-entropy over every real item: ``item_table`` ``[N + 1, d]``, row 0 (padding) left
    out of the softmax, ``targets`` ``[M]`` in 1..N. ``items`` (bool ``[N + 1]``) restricts the
    softmax to the items marked True (e.g. all but held-out cold items); targets must be
    among them."""
    if targets.numel() and int(targets.min()) < 1:
        raise DataError("targets must be item indices >= 1 (0 is the padding item)")
    logits = user_repr @ item_table[1:].T
    if items is not None:
        if targets.numel() and not bool(items[targets].all()):
            raise DataError("a target is outside the items allowed in the softmax")
        logits = logits.masked_fill(~items[1:], float("-inf"))
    return F.cross_entropy(logits, targets - 1)


class Candidates(NamedTuple):
    """Deduplicated sampled-softmax candidates: ``ids`` ``[C]``, ``embeddings`` ``[C, d]``,
    each positive's column ``pos_index`` ``[M]`` and the logQ term ``logq`` ``[C]`` (or None)."""

    ids: Tensor
    embeddings: Tensor
    pos_index: Tensor
    logq: Tensor | None


def in_batch_candidates(
    pos_ids: Tensor,
    pos_emb: Tensor,
    neg_ids: Tensor,
    neg_emb: Tensor,
    logq_correction: bool = True,
    gather: GatherCandidates | None = None,
) -> Candidates:
    """The candidate set of an in-batch sampled softmax: the batch's positives ``[M]`` plus any
    sampled negatives ``[K]`` (with their embeddings), each distinct id once.

    With ``gather`` (several processes) every process's candidates join, and this process's
    positives are found at the offset it returns. ``logq_correction`` estimates each
    candidate's sampling probability by its frequency among the (gathered) candidates before
    deduplication (Yi et al. 2019); duplicates of one id share one column, so a popular item
    appearing as another row's positive is never a negative against itself.
    """
    ids = torch.cat([pos_ids, neg_ids.reshape(-1)])
    emb = torch.cat([pos_emb, neg_emb.reshape(-1, pos_emb.size(-1))])
    offset = 0  # where this process's positives start among the (gathered) candidates
    if gather is not None:
        ids, emb, offset = gather(ids, emb)
    cand_ids, cand_index = torch.unique(ids, return_inverse=True)
    first = torch.full((cand_ids.numel(),), -1, dtype=torch.long, device=ids.device)
    first.scatter_reduce_(0, cand_index, torch.arange(cand_index.numel(), device=ids.device),
                          reduce="amin", include_self=False)
    logq = None
    if logq_correction:
        logq = torch.bincount(cand_index, minlength=cand_ids.numel()).float().log()
    return Candidates(cand_ids, emb[first], cand_index[offset : offset + pos_ids.numel()], logq)


LOSSES: dict[str, Callable[..., Tensor]] = {
    "bce": bce_loss,
    "sampled_softmax": sampled_softmax_loss,
    "full_softmax": full_softmax_loss,
}

__all__ = [
    "LOSSES",
    "Candidates",
    "GatherCandidates",
    "bce_loss",
    "full_softmax_loss",
    "in_batch_candidates",
    "sampled_softmax_loss",
]
