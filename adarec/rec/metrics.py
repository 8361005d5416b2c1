"""Full-ranking metrics (RecBole definitions), chunked top-k and a popularity baseline.

Score tables have ``N + 1`` columns: column 0 is the padding item and is never ranked.
With ``r`` the 1-based rank of the target among rankable items,
HR@K = [r <= K], NDCG@K = 1 / log2(r + 1) and MRR@K = 1 / r (both 0 when r > K).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor

from adarec.rec.data import PAD, pad_right

Ties = Literal["optimistic", "pessimistic"]
METRICS = ("hr", "ndcg", "mrr")


def _as_ids(ids: Tensor | Sequence[Sequence[int]], device: torch.device) -> Tensor:
    if isinstance(ids, Tensor):
        return ids.to(device=device, dtype=torch.long)
    return pad_right(ids).to(device)


def target_ranks(
    scores: Tensor,
    targets: Tensor,
    exclude: Tensor | Sequence[Sequence[int]] | None = None,
    ties: Ties = "optimistic",
) -> Tensor:
    """1-based rank of each target among the rankable items of its row of ``scores`` ``[B, N+1]``.

    ``exclude`` is a bool mask ``[B, N+1]`` or padded item ids ``[B, H]`` (usually the user's
    history; 0-padding is harmless). Excluded items and the padding item are not ranked, but
    the target itself always is: if it also occurs in the history it stays rankable, as
    RecBole does for leave-one-out. ``ties="optimistic"`` counts only strictly higher scores
    (r = 1 + #higher, the definition used here); ``"pessimistic"`` also counts equal scores,
    which matters for models with many tied scores, e.g. popularity counts.
    """
    return _target_ranks(scores, targets, exclude, ties, in_place=False)


def _target_ranks(
    scores: Tensor,
    targets: Tensor,
    exclude: Tensor | Sequence[Sequence[int]] | None,
    ties: Ties,
    in_place: bool,
) -> Tensor:
    """`target_ranks` in one pass over ``scores`` and no ``[B, N+1]`` bool mask: write a 0/1
    "beats the target" flag per item, zero the flags of the few unrankable items (padding,
    history, the target itself) by scatter, and sum. ``in_place`` writes the flags over
    ``scores`` (which `full_ranking_ranks` owns)."""
    if ties not in ("optimistic", "pessimistic"):
        raise ValueError(f"ties must be 'optimistic' or 'pessimistic', got {ties!r}")
    targets = targets.to(device=scores.device, dtype=torch.long).view(-1, 1)
    if targets.numel() and not 1 <= int(targets.min()) <= int(targets.max()) < scores.size(1):
        raise ValueError(f"targets must be item indices in 1..{scores.size(1) - 1}")
    target_scores = scores.gather(1, targets)
    if torch.isnan(target_scores).any():
        raise ValueError("NaN target score: a NaN would silently rank first")
    if in_place and scores.dtype in (torch.float32, torch.float64):
        flags = scores
    else:  # 0/1 floats: a float row sum is much faster on CPU than a bool one
        flags = torch.empty(scores.shape, dtype=torch.float32, device=scores.device)
    beats = torch.gt if ties == "optimistic" else torch.ge
    beats(scores, target_scores, out=flags)
    flags[:, PAD] = 0
    if isinstance(exclude, Tensor) and exclude.dtype == torch.bool:
        flags.masked_fill_(exclude.to(scores.device), 0)
    elif exclude is not None:  # repeated ids are harmless: zeroing is idempotent
        flags.scatter_(1, _as_ids(exclude, scores.device), 0)
    flags.scatter_(1, targets, 0)  # the target stays rankable; it never counts against itself
    return 1 + _row_count(flags)


_EXACT_F32 = 1 << 24
"""float32 adds up 0/1 flags exactly until the sum reaches 2**24."""


def _row_count(flags: Tensor) -> Tensor:
    """Row sums of 0/1 ``flags`` as int64, exact at any width (float32 in 2**24 slices)."""
    step = flags.size(1) if flags.dtype == torch.float64 else _EXACT_F32
    count = torch.zeros(flags.size(0), dtype=torch.long, device=flags.device)
    for start in range(0, flags.size(1), step):
        count += flags[:, start : start + step].sum(1).long()
    return count


def ranking_metrics(
    ranks: Tensor, ks: Sequence[int] = (10, 20), metrics: Sequence[str] = METRICS
) -> dict[str, float]:
    """Mean HR/NDCG/MRR at each K over 1-based ``ranks``; keys look like ``"ndcg@10"``."""
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; choose from {METRICS}")
    if ranks.numel() == 0:
        raise ValueError("no ranks to average")
    r = ranks.to(torch.float64)
    out: dict[str, float] = {}
    for k in ks:
        hit = (r <= k).to(torch.float64)
        values = {"hr": hit, "ndcg": hit / torch.log2(r + 1), "mrr": hit / r}
        for name in metrics:
            out[f"{name}@{k}"] = values[name].mean().item()
    return out


@torch.no_grad()
def full_ranking_ranks(
    user_embeddings: Tensor | Callable[[Tensor], Tensor],
    item_embeddings: Tensor,
    targets: Tensor | Sequence[int],
    histories: Tensor | Sequence[Sequence[int]] | None = None,
    batch_size: int = 256,
    exclude_history: bool = True,
    ties: Ties = "optimistic",
) -> Tensor:
    """Ranks of all targets, scoring one user batch at a time against the item table.

    ``user_embeddings`` is ``[U, d]`` or a function from user positions (a LongTensor) to
    ``[b, d]`` representations, so a model can encode users lazily. Peak memory is one
    ``batch_size * (N + 1)`` score table, reused from batch to batch (at 1M items and the
    default 256 users that is 1 GiB in float32: lower ``batch_size`` for bigger catalogs).
    ``item_embeddings`` is ``[N + 1, d]`` (row 0 = padding).
    """
    device = item_embeddings.device
    targets = torch.as_tensor(targets, dtype=torch.long)
    ranks = []
    buffer: Tensor | None = None
    for start in range(0, len(targets), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(targets)))
        users = user_embeddings(idx) if callable(user_embeddings) else user_embeddings[idx]
        scores, buffer = _scores_into(users.to(device), item_embeddings.T, buffer)
        exclude = None
        if exclude_history and histories is not None:
            exclude = histories[start : start + len(idx)]
        ranks.append(_target_ranks(scores, targets[idx], exclude, ties, in_place=True).cpu())
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)


def _scores_into(a: Tensor, b: Tensor, buffer: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """``a @ b``, written into the rows of ``buffer`` when it fits: a fresh ``[B, N]`` tensor per
    batch costs page faults on every batch (on CPU about as much as the product itself at 100k
    items). Autocast ignores ``out=``, so under autocast every batch gets a fresh tensor."""
    rows, cols = a.size(0), b.size(1)
    fits = (
        buffer is not None and buffer.size(0) >= rows and buffer.size(1) == cols
        and buffer.dtype == torch.result_type(a, b) and not torch.is_autocast_enabled(a.device.type)
    )
    if not fits:
        out = a @ b
        return out, out
    assert buffer is not None
    out = buffer[:rows]
    torch.matmul(a, b, out=out)
    return out, buffer


def evaluate_full_ranking(
    user_embeddings: Tensor | Callable[[Tensor], Tensor],
    item_embeddings: Tensor,
    targets: Tensor | Sequence[int],
    histories: Tensor | Sequence[Sequence[int]] | None = None,
    ks: Sequence[int] = (10, 20),
    batch_size: int = 256,
    exclude_history: bool = True,
    metrics: Sequence[str] = METRICS,
    ties: Ties = "optimistic",
) -> dict[str, float]:
    """Full-ranking HR/NDCG/MRR over every item (see :func:`full_ranking_ranks`)."""
    ranks = full_ranking_ranks(
        user_embeddings, item_embeddings, targets, histories, batch_size, exclude_history, ties
    )
    return ranking_metrics(ranks, ks, metrics)


@torch.no_grad()
def topk_chunked(
    user_emb: Tensor,
    item_emb: Tensor,
    k: int,
    item_chunk: int = 65536,
    exclude: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Exact top-k of ``user_emb @ item_emb.T`` without materialising all ``[U, N]`` scores.

    Keeps a running top-k and merges it with each chunk's top-k, so memory is
    ``U * (item_chunk + k)``. ``exclude`` ``[U, H]`` holds item indices to skip; negative
    entries are padding (0-padding excludes item 0, which suits tables with a padding row).
    Returns ``(values, indices)`` sorted by descending score; excluded slots score ``-inf``
    if fewer than ``k`` items remain.
    """
    if not 0 < k <= item_emb.size(0):
        raise ValueError(f"k must be in 1..{item_emb.size(0)}, got {k}")
    values = user_emb.new_empty(user_emb.size(0), 0)
    indices = torch.empty(user_emb.size(0), 0, dtype=torch.long, device=user_emb.device)
    flat: Tensor | None = None  # one chunk-sized score buffer, reused (see _scores_into)
    for start in range(0, item_emb.size(0), item_chunk):
        chunk = item_emb[start : start + item_chunk]
        if flat is None:
            scores = user_emb @ chunk.T
            if not torch.is_autocast_enabled(user_emb.device.type):
                flat = scores.view(-1)
        else:
            scores = flat[: user_emb.size(0) * chunk.size(0)].view(user_emb.size(0), -1)
            torch.matmul(user_emb, chunk.T, out=scores)
        if exclude is not None:
            inside = (exclude >= start) & (exclude < start + scores.size(1))
            rows, cols = inside.nonzero(as_tuple=True)
            scores[rows, exclude[rows, cols] - start] = float("-inf")
        chunk_values, chunk_indices = scores.topk(min(k, scores.size(1)), dim=1)
        values = torch.cat([values, chunk_values], dim=1)
        indices = torch.cat([indices, chunk_indices + start], dim=1)
        values, keep = values.topk(min(k, values.size(1)), dim=1)
        indices = indices.gather(1, keep)
    return values, indices


class PopularityRecommender:
    """Non-personalised baseline: every user scores an item by its training frequency.

    Expressed as a 1-d "embedding" (user = 1, item = count) so it goes through exactly the
    same :func:`evaluate_full_ranking` path as a neural model. Counts tie a lot; compare with
    ``ties="pessimistic"`` as well to see how much optimistic tie-breaking helps it.
    """

    def __init__(self, n_items: int) -> None:
        self.n_items = n_items
        self.counts = torch.zeros(n_items + 1)

    def fit(self, train_sequences: Sequence[Sequence[int]]) -> PopularityRecommender:
        flat = torch.tensor([i for seq in train_sequences for i in seq], dtype=torch.long)
        self.counts = torch.bincount(flat, minlength=self.n_items + 1).float()
        self.counts[PAD] = 0.0
        return self

    @property
    def item_embeddings(self) -> Tensor:
        return self.counts.unsqueeze(1)

    def scores(self, n_users: int) -> Tensor:
        """Score table ``[n_users, N + 1]`` (the same row for everyone)."""
        return self.counts.expand(n_users, -1)

    def evaluate(
        self,
        targets: Tensor | Sequence[int],
        histories: Tensor | Sequence[Sequence[int]] | None = None,
        ks: Sequence[int] = (10, 20),
        batch_size: int = 256,
        exclude_history: bool = True,
        metrics: Sequence[str] = METRICS,
        ties: Ties = "optimistic",
    ) -> dict[str, float]:
        users = torch.ones(len(targets), 1)
        return evaluate_full_ranking(
            users, self.item_embeddings, targets, histories, ks=ks, batch_size=batch_size,
            exclude_history=exclude_history, metrics=metrics, ties=ties,
        )  # fmt: skip
