"""Full-ranking metrics (RecBole definitions), chunked top-k and a popularity baseline.

Score tables have ``N + 1`` columns: column 0 is the padding item and is never ranked.
With ``r`` the 1-based rank of the target among rankable items,
HR@K = [r <= K], NDCG@K = 1 / log2(r + 1) and MRR@K = 1 / r (both 0 when r > K).

**Ties.** Items scoring exactly what the target scores have no order, so ``r`` needs a rule
(``ties=``); with ``h`` items scoring higher and ``t`` other rankable items tied with the target:

- ``"pessimistic"`` (default): ``r = h + t + 1``, the target ranks below every item it ties
  with. The reported number is one every tie-break order reaches or beats, so a model never
  gains from scores it cannot tell apart (all-equal scores give 0, not 1), it is deterministic
  (no seed, the same at any batch size), and it costs one comparison pass, like a tie-free rule.
- ``"expected"``: the exact mean of each metric over the ``t + 1`` equally likely positions
  ``h + 1 .. h + t + 1`` (McSherry & Najork, ECIR 2008): what a random tie-break gives on average,
  without the noise. Use it to compare a model whose scores tie a lot (popularity counts) fairly;
  it needs a second pass over the scores and gives metrics, not one rank per target.
- ``"random"``: ``r`` drawn uniformly from those positions with a seeded generator (``seed``),
  one draw per target in target order, so the result does not depend on the batch size.
- ``"optimistic"``: ``r = h + 1``, ties count for the target (what a plain ``scores > target``
  count gives); it flatters coarse scores and is never the default.

With continuous scores (a trained neural model) ties are rare and the rules agree; where they
differ, the model cannot separate the tied items. NaN scores are refused: a NaN compares false
with everything, so it would silently rank below (or, as the target, above) every item.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor

from adarec.errors import EvaluationError
from adarec.rec.data import PAD, pad_right
from adarec.rec.scoring import (
    ITEM_TILE,
    max_abs,
    products_are_finite,
    score_block,
    score_candidates,
    score_dtype,
    topk,
)

Ties = Literal["pessimistic", "optimistic", "expected", "random"]
TIES: tuple[Ties, ...] = ("pessimistic", "optimistic", "expected", "random")
"""The tie rules; the first is the default everywhere."""
METRICS = ("hr", "ndcg", "mrr")
ITEM_CHUNK = 65536
"""Items scored at a time in full-ranking evaluation (per user batch): bigger catalogues are
counted chunk by chunk (at 256 users, 64 MiB of float32 scores whatever N is)."""


def _as_ids(ids: Tensor | Sequence[Sequence[int]], device: torch.device) -> Tensor:
    if isinstance(ids, Tensor):
        return ids.to(device=device, dtype=torch.long)
    return pad_right(ids).to(device)


def _check_ties(ties: str, ranks: bool) -> None:
    if ties not in TIES:
        raise EvaluationError(f"ties must be one of {list(TIES)}, got {ties!r}")
    if ranks and ties == "expected":
        raise EvaluationError(
            "ties='expected' averages each metric over the tied positions, so it has no single "
            "rank per target: use evaluate_full_ranking(..., ties='expected'), or tie_counts / "
            "full_ranking_counts with ranking_metrics(higher + 1, tied=tied)"
        )


def _check_ks(ks: Sequence[int]) -> list[int]:
    ks = list(ks)
    bad = [k for k in ks if isinstance(k, bool) or not isinstance(k, int) or k < 1]
    if not ks or bad:
        raise EvaluationError(
            f"ks must be one or more integer cut-offs >= 1, got {ks!r}"
            + (f" ({bad} not allowed: a cut-off of 0 or less counts nothing)" if bad else "")
        )
    return ks


def _check_metrics(metrics: Sequence[str]) -> None:
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise EvaluationError(f"unknown metrics {sorted(unknown)}; choose from {METRICS}")


def target_ranks(
    scores: Tensor,
    targets: Tensor,
    exclude: Tensor | Sequence[Sequence[int]] | None = None,
    ties: Ties = "pessimistic",
    seed: int = 0,
) -> Tensor:
    """1-based rank of each target among the rankable items of its row of ``scores`` ``[B, N+1]``.

    ``exclude`` is a bool mask ``[B, N+1]`` or padded item ids ``[B, H]`` (usually the user's
    history; 0-padding is harmless). Excluded items and the padding item are not ranked, but
    the target itself always is: if it also occurs in the history it stays rankable, as
    RecBole does for leave-one-out. ``ties`` is ``"pessimistic"`` (default), ``"optimistic"``
    or ``"random"`` (drawn with ``seed``); see the module docstring. NaN scores (other than the
    padding item's) are refused.
    """
    _check_ties(ties, ranks=True)
    count, tied, _ = _counts(scores, targets, exclude, ties, in_place=False)
    return _to_ranks(count, tied, ties, seed)


def tie_counts(
    scores: Tensor, targets: Tensor, exclude: Tensor | Sequence[Sequence[int]] | None = None
) -> tuple[Tensor, Tensor]:
    """``(higher, tied)`` per row: rankable items scoring above the target, and the other
    rankable items scoring exactly the same (see `target_ranks` for ``exclude``).
    ``ranking_metrics(higher + 1, tied=tied)`` gives the ``"expected"`` metrics."""
    higher, tied, _ = _counts(scores, targets, exclude, "expected", in_place=False)
    assert tied is not None
    return higher, tied


def _counts(
    scores: Tensor,
    targets: Tensor,
    exclude: Tensor | Sequence[Sequence[int]] | None,
    ties: Ties,
    in_place: bool,
    scan_nan: bool = True,
    spare: Tensor | None = None,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """``(count, tied, spare)`` in one or two passes over ``scores``, with no ``[B, N+1]`` bool
    mask: write a 0/1 flag per item ("beats the target"), zero the flags of the few unrankable
    items (padding, history, the target itself) by scatter, and sum.

    ``"optimistic"``/``"pessimistic"``: one pass, ``count`` = items above / at or above the
    target, ``tied`` None. ``"expected"``/``"random"``: ``count`` = items above, ``tied`` = the
    other items level with the target (a second pass). ``in_place`` writes the last pass's
    flags over ``scores`` (which `full_ranking_ranks` owns); ``spare`` is a float32 buffer the
    first of two passes may write into (returned for reuse)."""
    _check_ties(ties, ranks=False)
    targets = targets.to(device=scores.device, dtype=torch.long).view(-1, 1)
    if targets.size(0) != scores.size(0):
        raise EvaluationError(f"{targets.size(0)} target(s) for {scores.size(0)} score rows: one "
                              "target per row")
    if targets.numel() and not 1 <= int(targets.min()) <= int(targets.max()) < scores.size(1):
        raise EvaluationError(f"targets must be item indices in 1..{scores.size(1) - 1}")
    target_scores = scores.gather(1, targets)
    if torch.isnan(target_scores).any():
        raise EvaluationError("NaN target score: a NaN would silently rank first")
    if scan_nan:
        _refuse_nan(scores)
    if ties in ("optimistic", "pessimistic"):
        count = _count(scores, target_scores, targets, exclude, ties == "pessimistic", in_place)
        return count, None, spare
    if spare is None or spare.size(0) < scores.size(0) or spare.size(1) != scores.size(1):
        spare = torch.empty(scores.shape, dtype=torch.float32, device=scores.device)
    flags = spare[: scores.size(0)]
    higher = _count(scores, target_scores, targets, exclude, False, False, out=flags)
    at_least = _count(scores, target_scores, targets, exclude, True, in_place,
                      out=None if in_place else flags)
    return higher, at_least - higher, spare


def _refuse_nan(scores: Tensor, start: int = 0) -> None:
    """A NaN on any rankable column would silently rank below the target (column 0, the
    padding item, is never ranked); ``scores`` holds the columns from item ``start`` on."""
    first = 1 if start == 0 else 0
    nan = torch.isnan(scores[:, first:])
    if nan.any():
        row, col = (int(i) for i in nan.nonzero()[0])
        raise EvaluationError(
            f"NaN score for item {start + first + col} in row {row} ({int(nan.sum())} NaN "
            "scores in all): "
            "a NaN compares false with every score and would silently rank below the target"
        )


def _count(
    scores: Tensor, target_scores: Tensor, targets: Tensor,
    exclude: Tensor | Sequence[Sequence[int]] | None, level_counts: bool, in_place: bool,
    out: Tensor | None = None, start: int = 0,
) -> Tensor:
    """Rankable items scoring above (``level_counts``: at or above) the target, per row;
    ``scores`` holds the columns of items ``start ..`` (one chunk of the catalogue)."""
    if out is not None:
        flags = out
    elif in_place and scores.dtype in (torch.float32, torch.float64):
        flags = scores
    else:  # 0/1 floats: a float row sum is much faster on CPU than a bool one
        flags = torch.empty(scores.shape, dtype=torch.float32, device=scores.device)
    (torch.ge if level_counts else torch.gt)(scores, target_scores, out=flags)
    if start == 0:
        flags[:, PAD] = 0
    if isinstance(exclude, Tensor) and exclude.dtype == torch.bool:
        flags.masked_fill_(exclude[:, start : start + flags.size(1)].to(scores.device), 0)
    elif exclude is not None:  # repeated ids are harmless: zeroing is idempotent
        _zero_ids(flags, _as_ids(exclude, scores.device), start)
    _zero_ids(flags, targets, start)  # the target stays rankable; never counts against itself
    return _row_count(flags)


def _zero_ids(flags: Tensor, ids: Tensor, start: int) -> None:
    """``flags[b, ids[b] - start] = 0`` for the ids among the columns ``flags`` holds."""
    if start == 0 and (ids.numel() == 0 or int(ids.max()) < flags.size(1)):
        flags.scatter_(1, ids, 0)
        return
    inside = (ids >= start) & (ids < start + flags.size(1))
    rows, cols = inside.nonzero(as_tuple=True)
    flags[rows, ids[rows, cols] - start] = 0


def _to_ranks(count: Tensor, tied: Tensor | None, ties: Ties, seed: int) -> Tensor:
    if ties != "random":
        return 1 + count
    assert tied is not None
    return _draw(count, tied, seed)


def _draw(higher: Tensor, tied: Tensor, seed: int) -> Tensor:
    """Uniform ranks in ``higher + 1 .. higher + tied + 1``, one seeded draw per target."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(higher.numel(), generator=g, dtype=torch.float64)
    offset = (u * (tied.cpu().double() + 1)).floor().long()
    return (1 + higher.cpu() + offset).to(higher.device)


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
    ranks: Tensor,
    ks: Sequence[int] = (10, 20),
    metrics: Sequence[str] = METRICS,
    tied: Tensor | None = None,
) -> dict[str, float]:
    """Mean HR/NDCG/MRR at each K over 1-based ``ranks``; keys look like ``"ndcg@10"``.

    With ``tied`` (items level with each target, from `tie_counts`) ``ranks`` are the highest
    positions the targets can take (``higher + 1``) and each metric is its exact mean over the
    ``tied + 1`` equally likely positions (the ``"expected"`` tie rule)."""
    _check_metrics(metrics)
    ks = _check_ks(ks)
    if ranks.numel() == 0:
        raise EvaluationError("no ranks to average")
    r = ranks.to(torch.float64).reshape(-1)
    if bool((r < 1).any()):
        raise EvaluationError(f"ranks are 1-based; got a rank of {int(r.min())}")
    if tied is not None:
        return _expected_metrics(r, tied.to(r.device, torch.float64).reshape(-1), ks, metrics)
    out: dict[str, float] = {}
    for k in ks:
        hit = (r <= k).to(torch.float64)
        values = {"hr": hit, "ndcg": hit / torch.log2(r + 1), "mrr": hit / r}
        for name in metrics:
            out[f"{name}@{k}"] = values[name].mean().item()
    return out


def _expected_metrics(first: Tensor, tied: Tensor, ks: list[int], metrics: Sequence[str]
                      ) -> dict[str, float]:
    """Each metric averaged over positions ``first .. first + tied``, through prefix sums
    of the per-position gains up to K (terms beyond K are zero)."""
    if tied.shape != first.shape or bool((tied < 0).any()):
        raise EvaluationError("tied must hold one count >= 0 per rank")
    positions = tied + 1
    last = first + tied
    out: dict[str, float] = {}
    for k in ks:
        pos = torch.arange(1, k + 1, dtype=torch.float64, device=first.device)
        gains = {"hr": torch.ones_like(pos), "ndcg": 1 / torch.log2(pos + 1), "mrr": 1 / pos}
        lo = (first - 1).clamp(max=k).long()  # positions 1..lo lie before the target's first
        hi = last.clamp(max=k).long()
        for name in metrics:
            prefix = torch.cat([pos.new_zeros(1), gains[name].cumsum(0)])
            out[f"{name}@{k}"] = ((prefix[hi] - prefix[lo]) / positions).mean().item()
    return out


@torch.no_grad()
def full_ranking_ranks(
    user_embeddings: Tensor | Callable[[Tensor], Tensor],
    item_embeddings: Tensor,
    targets: Tensor | Sequence[int],
    histories: Tensor | Sequence[Sequence[int]] | None = None,
    batch_size: int = 256,
    exclude_history: bool = True,
    ties: Ties = "pessimistic",
    seed: int = 0,
    temperature: float = 1.0,
    item_chunk: int = ITEM_CHUNK,
) -> Tensor:
    """Ranks of all targets, scoring one user batch at a time against the item table.

    ``user_embeddings`` is ``[U, d]`` or a function from user positions (a LongTensor) to
    ``[b, d]`` representations, so a model can encode users lazily. Peak memory is one
    ``batch_size * min(N + 1, item_chunk)`` float32 score table, reused from batch to batch
    (the ``"expected"`` and ``"random"`` rules need a second one): a catalogue larger than
    ``item_chunk`` is scored and counted chunk by chunk, with the same ranks, ties included.
    ``item_embeddings`` is ``[N + 1, d]`` (row 0 = padding). ``ties``: see `target_ranks`.
    """
    _check_ties(ties, ranks=True)
    higher, tied = _full_ranking(user_embeddings, item_embeddings, targets, histories,
                                 batch_size, exclude_history, ties, temperature, item_chunk)
    return _to_ranks(higher, tied, ties, seed)


@torch.no_grad()
def full_ranking_counts(
    user_embeddings: Tensor | Callable[[Tensor], Tensor],
    item_embeddings: Tensor,
    targets: Tensor | Sequence[int],
    histories: Tensor | Sequence[Sequence[int]] | None = None,
    batch_size: int = 256,
    exclude_history: bool = True,
    temperature: float = 1.0,
    item_chunk: int = ITEM_CHUNK,
) -> tuple[Tensor, Tensor]:
    """`tie_counts` of every target, scored as in `full_ranking_ranks`: ``(higher, tied)``."""
    higher, tied = _full_ranking(user_embeddings, item_embeddings, targets, histories,
                                 batch_size, exclude_history, "expected", temperature,
                                 item_chunk)
    assert tied is not None
    return higher, tied


def _full_ranking(
    user_embeddings: Tensor | Callable[[Tensor], Tensor],
    item_embeddings: Tensor,
    targets: Tensor | Sequence[int],
    histories: Tensor | Sequence[Sequence[int]] | None,
    batch_size: int,
    exclude_history: bool,
    ties: Ties,
    temperature: float = 1.0,
    item_chunk: int = ITEM_CHUNK,
) -> tuple[Tensor, Tensor | None]:
    if item_chunk < 1:
        raise EvaluationError(f"item_chunk must be >= 1, got {item_chunk}")
    chunk = max(ITEM_TILE, item_chunk // ITEM_TILE * ITEM_TILE)  # the one table's tiles
    device = item_embeddings.device
    items = item_embeddings.to(score_dtype(item_embeddings))
    targets = torch.as_tensor(targets, dtype=torch.long)
    counts, tied = [], []
    buffer: Tensor | None = None
    spare: Tensor | None = None
    items_max = max_abs(items[1:])  # the padding row is never ranked
    for start in range(0, len(targets), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(targets)))
        users = user_embeddings(idx) if callable(user_embeddings) else user_embeddings[idx]
        if torch.promote_types(users.dtype, items.dtype) != items.dtype:  # float64 users
            items = items.to(users.dtype)
        users = users.to(device=device, dtype=items.dtype)
        exclude = None
        if exclude_history and histories is not None:
            exclude = histories[start : start + len(idx)]
        scan = not products_are_finite(max_abs(users), items_max, users.size(-1), items.dtype)
        if items.size(0) > chunk:
            count, level = _chunked_counts(users, items, targets[idx], exclude, ties,
                                           temperature, chunk, scan)
            counts.append(count.cpu())
            if level is not None:
                tied.append(level.cpu())
            continue
        scores = score_block(users, items, temperature, out=buffer)
        if buffer is None or buffer.size(0) < scores.size(0) or buffer.dtype != scores.dtype:
            buffer = scores
        count, level, spare = _counts(scores, targets[idx], exclude, ties, in_place=True,
                                      scan_nan=scan, spare=spare)
        counts.append(count.cpu())
        if level is not None:
            tied.append(level.cpu())
    if not counts:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, (empty if ties in ("expected", "random") else None)
    return torch.cat(counts), (torch.cat(tied) if tied else None)


def _chunked_counts(users: Tensor, items: Tensor, targets: Tensor,
                    exclude: Tensor | Sequence[Sequence[int]] | None, ties: Ties,
                    temperature: float, chunk: int, scan_nan: bool
                    ) -> tuple[Tensor, Tensor | None]:
    """`_counts` over the catalogue in chunks of ``chunk`` items, for ``[b, chunk]`` memory
    instead of ``[b, N + 1]``. Exact: counts of disjoint columns add up, and a score depends on
    its user and item alone (`adarec.rec.scoring`), so the targets' own scores, taken first,
    are the floats the one table holds and every comparison is the one it makes."""
    targets = targets.to(device=items.device, dtype=torch.long).view(-1, 1)
    if targets.numel() and not 1 <= int(targets.min()) <= int(targets.max()) < items.size(0):
        raise EvaluationError(f"targets must be item indices in 1..{items.size(0) - 1}")
    if exclude is not None and not isinstance(exclude, Tensor):
        exclude = _as_ids(exclude, items.device)  # once, not per chunk
    target_scores = score_candidates(users, items, targets, temperature)
    if torch.isnan(target_scores).any():
        raise EvaluationError("NaN target score: a NaN would silently rank first")
    two = ties in ("expected", "random")
    above = torch.zeros(users.size(0), dtype=torch.long, device=items.device)
    at_least = torch.zeros_like(above)
    buffer: Tensor | None = None
    for start in range(0, items.size(0), chunk):
        part = items[start : start + chunk]
        if buffer is not None and buffer.size(1) != part.size(0):
            buffer = None  # the last, narrower chunk
        scores = buffer = score_block(users, part, temperature, out=buffer)
        if scan_nan:
            _refuse_nan(scores, start)
        if two or ties == "optimistic":
            above += _count(scores, target_scores, targets, exclude, False,
                            in_place=ties == "optimistic", start=start)
        if ties != "optimistic":
            at_least += _count(scores, target_scores, targets, exclude, True, in_place=True,
                               start=start)
    if ties == "optimistic":
        return above, None
    if ties == "pessimistic":
        return at_least, None
    return above, at_least - above


def evaluate_full_ranking(
    user_embeddings: Tensor | Callable[[Tensor], Tensor],
    item_embeddings: Tensor,
    targets: Tensor | Sequence[int],
    histories: Tensor | Sequence[Sequence[int]] | None = None,
    ks: Sequence[int] = (10, 20),
    batch_size: int = 256,
    exclude_history: bool = True,
    metrics: Sequence[str] = METRICS,
    ties: Ties = "pessimistic",
    seed: int = 0,
    temperature: float = 1.0,
    item_chunk: int = ITEM_CHUNK,
) -> dict[str, float]:
    """Full-ranking HR/NDCG/MRR over every item (see :func:`full_ranking_ranks`); ``ties`` is
    any rule of the module docstring, ``"expected"`` included. Scores are those of
    `adarec.rec.scoring` (``temperature`` divides them, as a model with a temperature does)."""
    _check_metrics(metrics)
    _check_ks(ks)
    _check_ties(ties, ranks=False)
    higher, tied = _full_ranking(user_embeddings, item_embeddings, targets, histories,
                                 batch_size, exclude_history, ties, temperature, item_chunk)
    if ties == "expected":
        return ranking_metrics(higher + 1, ks, metrics, tied=tied)
    return ranking_metrics(_to_ranks(higher, tied, ties, seed), ks, metrics)


@torch.no_grad()
def topk_chunked(
    user_emb: Tensor,
    item_emb: Tensor,
    k: int,
    item_chunk: int = 65536,
    exclude: Tensor | None = None,
    temperature: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Exact top-k of the scores of `adarec.rec.scoring` without materialising all ``[U, N]``
    of them: ``(values, indices)`` best first, exact ties to the lower item index, the same at
    every ``item_chunk``. ``exclude`` ``[U, H]`` holds item indices to skip; negative entries are
    padding (0-padding excludes item 0, which suits tables with a padding row); rows with fewer
    than ``k`` rankable items end in ``-inf`` slots. Scores are float32, under autocast too."""
    if not 0 < k <= item_emb.size(0):
        raise EvaluationError(f"k must be in 1..{item_emb.size(0)}, got {k}")
    return topk(user_emb, item_emb, k, temperature, exclude, item_chunk)


class PopularityRecommender:
    """Non-personalised baseline: every user scores an item by its training frequency.

    Expressed as a 1-d "embedding" (user = 1, item = count) so it goes through exactly the
    same :func:`evaluate_full_ranking` path as a neural model. Counts tie a lot, so the tie rule
    matters here: the default counts ties against the target; ``ties="expected"`` gives what a
    random order among equally popular items would score on average.
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
        ties: Ties = "pessimistic",
        seed: int = 0,
    ) -> dict[str, float]:
        users = torch.ones(len(targets), 1)
        return evaluate_full_ranking(
            users, self.item_embeddings, targets, histories, ks=ks, batch_size=batch_size,
            exclude_history=exclude_history, metrics=metrics, ties=ties, seed=seed,
        )  # fmt: skip
