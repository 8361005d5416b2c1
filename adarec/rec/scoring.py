"""One score for every path: how user and item vectors become scores, top-k lists and tie order.

Every inference path (`TransRec.score` without gradients, `full_sort_scores`, the ranks behind
`evaluate_ranking`, `recommend`, re-ranking of candidate lists) scores through this file, so they
return the same float for the same user and item.

**Why fixed tiles.** BLAS kernels choose their blocking from the matrix shapes, so one dot product
computed inside a ``[256, N]`` product and inside a ``[3, N]`` product can differ in the last bit
(on an AMD EPYC with AVX-512, 2 % of the scores of a 37 x 5003 x 64 product changed when the
users were split into blocks of 8, 83 % when items were scored one at a time). With exact ties
broken by item index and no tolerance anywhere, such bits would decide rankings. Here every score
comes from a product of one shape, ``[USER_TILE, d] @ [d, ITEM_TILE]`` (zero-padded), so a score
depends on its user and item vectors alone: not on the batch size, the chunk size or the path.
User towers run on tiles of ``USER_TILE`` histories for the same reason (`in_user_tiles`).

**Tie order.** Among exactly equal scores the lower item index ranks first, at any chunk size
(`topk`). Scores are float32 (float64 inputs stay float64 in `score_block`); non-finite user or
item vectors are refused (`check_finite`), never ranked.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from adarec.errors import ConfigError, NonFiniteScoreError

USER_TILE = 16
ITEM_TILE = 2048
SIMILARITIES = ("dot", "cosine")
_LOW = 0xFFFFFFFF


def score_dtype(*tensors: Tensor) -> torch.dtype:
    """At least float32: bf16 scores (a matmul under autocast) have 8 significant bits, so items
    a float32 score separates would tie and the tie rule, not the model, would order them."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def max_abs(x: Tensor) -> float:
    """The largest magnitude in ``x`` (NaN when it holds a NaN): one reduction, no temporary."""
    if x.numel() == 0:
        return 0.0
    lo, hi = torch.aminmax(x.detach())
    return max(-float(lo), float(hi)) if not bool(torch.isnan(hi)) else math.nan


def products_are_finite(users_max: float, items_max: float, dim: int, dtype: torch.dtype) -> bool:
    """Finite inputs whose products cannot overflow give finite scores, so score tables need no
    NaN scan: a check on ``(U + N) * d`` values, not ``U * N``."""
    bound = 2.0 * dim * users_max * items_max  # x2: rounding of the inputs under autocast
    return math.isfinite(bound) and bound < torch.finfo(dtype).max


def check_finite(x: Tensor, what: str) -> float:
    """Refuse NaN/inf in ``x`` (rows = users or items), naming the first rows; returns max |x|."""
    peak = max_abs(x)
    if math.isfinite(peak):
        return peak
    bad = (~torch.isfinite(x.reshape(x.size(0), -1))).any(1).nonzero().flatten()[:5].tolist()
    raise NonFiniteScoreError(
        f"{what} hold NaN or inf (rows {bad}): a model with non-finite weights or inputs cannot "
        "rank; nothing was scored (check the weights, e.g. after a diverged training step)"
    )


def check_similarity(similarity: str, temperature: float) -> None:
    if similarity not in SIMILARITIES:
        raise ConfigError(f"similarity={similarity!r} is not one of {list(SIMILARITIES)}")
    if not temperature > 0 or not math.isfinite(temperature):
        raise ConfigError(f"temperature must be a finite number > 0, got {temperature}")


def prepare(x: Tensor, similarity: str) -> Tensor:
    """Vectors as they enter a score: L2-normalised for cosine, unchanged for dot."""
    return F.normalize(x, dim=-1) if similarity == "cosine" else x


def in_user_tiles(encode: Callable[..., Tensor], histories: Tensor,
                  labels: Sequence[Any] | None = None) -> Tensor:
    """``encode`` over tiles of exactly ``USER_TILE`` rows (the last one filled up with copies of
    its first row), so a user's vector does not depend on who else is in the batch. With
    ``labels`` (one per history, e.g. the adapter set serving it) ``encode(tile, tile_labels)``
    gets the tile's labels, filled up the same way."""
    if histories.size(0) == 0:
        return encode(histories) if labels is None else encode(histories, [])
    out = []
    for start in range(0, histories.size(0), USER_TILE):
        tile = histories[start : start + USER_TILE]
        rows = tile.size(0)
        if rows < USER_TILE:
            tile = torch.cat([tile, tile[:1].expand(USER_TILE - rows, *tile.shape[1:])])
        if labels is None:
            out.append(encode(tile)[:rows])
            continue
        mine = list(labels[start : start + rows])
        out.append(encode(tile, mine + mine[:1] * (USER_TILE - rows))[:rows])
    return torch.cat(out)


@torch.no_grad()
def score_block(users: Tensor, items: Tensor, temperature: float = 1.0,
                out: Tensor | None = None) -> Tensor:
    """``users [B, d]`` against ``items [N, d]`` -> ``[B, N]`` scores (divided by
    ``temperature``), every product of the fixed tile shape (see the module docstring).
    ``out``: a ``[>= B, N]`` buffer to write into (reused across batches by evaluation)."""
    dtype = score_dtype(users, items)
    rows, n, dim = users.size(0), items.size(0), users.size(-1)
    device = items.device
    if out is None or out.size(0) < rows or out.size(1) != n or out.dtype != dtype:
        out = torch.empty(rows, n, dtype=dtype, device=device)
    else:
        out = out[:rows]
    user_tile = torch.zeros(USER_TILE, dim, dtype=dtype, device=device)
    item_tile = torch.zeros(ITEM_TILE, dim, dtype=dtype, device=device)
    tile = torch.empty(USER_TILE, ITEM_TILE, dtype=dtype, device=device)
    with torch.autocast(device.type, enabled=False):
        for j in range(0, n, ITEM_TILE):
            cols = min(ITEM_TILE, n - j)
            item_tile[cols:].zero_()
            item_tile[:cols].copy_(items[j : j + cols])
            for i in range(0, rows, USER_TILE):
                m = min(USER_TILE, rows - i)
                user_tile[m:].zero_()
                user_tile[:m].copy_(users[i : i + m])
                torch.mm(user_tile, item_tile.T, out=tile)
                out[i : i + m, j : j + cols] = tile[:m, :cols]
    if temperature != 1.0:
        out.div_(temperature)
    return out


def order_keys(scores: Tensor, index: Tensor) -> Tensor:
    """int64 keys ordered like (score descending, item index ascending) for float32 scores: one
    ``topk`` on them is a top-k whose ties go to the lower index, whatever the chunking."""
    bits = (scores.float() + 0.0).view(torch.int32)  # + 0.0: -0.0 and 0.0 are one score
    mono = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # int32 order == float order
    return (mono.long() << 32) | (_LOW - index)


def decode_keys(keys: Tensor) -> tuple[Tensor, Tensor]:
    """``(scores, indices)`` back from `order_keys`."""
    mono = (keys >> 32).int()
    bits = mono ^ ((mono >> 31) & 0x7FFFFFFF)
    return bits.view(torch.float32), _LOW - (keys & _LOW)


def _refuse_nan(scores: Tensor) -> None:
    """Scan a score table for NaN (only needed when `products_are_finite` cannot vouch)."""
    if bool(torch.isnan(scores).any()):
        raise NonFiniteScoreError(
            "scores are NaN: the user or item vectors hold NaN/inf or are too large to score in "
            "float32; nothing was ranked (check the weights, e.g. after a diverged training step)")


def _mask_ids(scores: Tensor, ids: Tensor | None, start: int) -> None:
    """Set ``scores[b, ids[b] - start]`` to -inf for the ids inside this chunk (negative ids are
    padding)."""
    if ids is None:
        return
    inside = (ids >= start) & (ids < start + scores.size(1))
    rows, cols = inside.nonzero(as_tuple=True)
    scores[rows, ids[rows, cols] - start] = float("-inf")


@torch.no_grad()
def topk(users: Tensor, items: Tensor, k: int, temperature: float = 1.0,
         exclude: Tensor | None = None, item_chunk: int = 65536) -> tuple[Tensor, Tensor]:
    """Exact top-``k`` of `score_block` over every item, best first, ties to the lower index.

    Scores are merged chunk by chunk, so memory is ``B * (item_chunk + k)`` however many items
    there are; the result does not depend on ``item_chunk``. ``exclude`` ``[B, E]`` holds item
    indices scored ``-inf`` (negative entries are padding); rows with fewer than ``k`` rankable
    items end in ``-inf`` slots. Scores are float32."""
    if not 0 < k <= items.size(0):
        raise ConfigError(f"k must be in 1..{items.size(0)}, got {k}")
    if item_chunk < 1:
        raise ConfigError(f"item_chunk must be >= 1, got {item_chunk}")
    users, items = users.float(), items.float()
    safe = products_are_finite(max_abs(users), max_abs(items), users.size(-1), torch.float32)
    best = torch.empty(users.size(0), 0, dtype=torch.long, device=items.device)
    chunk = max(ITEM_TILE, item_chunk // ITEM_TILE * ITEM_TILE)
    for start in range(0, items.size(0), chunk):
        scores = score_block(users, items[start : start + chunk], temperature)
        _mask_ids(scores, exclude, start)
        if not safe:
            _refuse_nan(scores)
        best = torch.cat([best, _chunk_top(scores, min(k, scores.size(1)), start)], dim=1)
        best = best.topk(min(k, best.size(1)), dim=1).values
    return decode_keys(best)


def _chunk_top(scores: Tensor, k: int, start: int) -> Tensor:
    """`order_keys` of a chunk's top ``k`` (ties at the k-th score go to the lowest indices):
    a float ``topk`` and one comparison pass, int64 keys only for the ``k`` picks."""
    kth = scores.topk(k, dim=1).values[:, -1:]
    where = (scores >= kth).nonzero()
    if where.size(0) != scores.size(0) * k:  # more items tie at the k-th score than slots left
        counts = torch.bincount(where[:, 0], minlength=scores.size(0))
        crowded = (counts > k).nonzero().flatten()
        rows = scores[crowded]
        above, level = rows > kth[crowded], rows == kth[crowded]
        need = k - above.sum(1, keepdim=True)
        picks = (above | (level & (level.cumsum(1) <= need))).nonzero()
        picks[:, 0] = crowded[picks[:, 0]]
        keep = where[(counts[where[:, 0]] <= k)]
        where = torch.cat([keep, picks])
        where = where[where[:, 0].argsort(stable=True)]  # row-major again, columns ascending
    cols = where[:, 1].view(scores.size(0), k)
    return order_keys(scores.gather(1, cols), cols + start)


@torch.no_grad()
def score_candidates(users: Tensor, items: Tensor, candidates: Tensor,
                     temperature: float = 1.0) -> Tensor:
    """Scores ``[B, C]`` of each row's ``candidates`` (item indices into ``items``), computed as
    `score_block` computes them (over the union of the lists, then gathered)."""
    union, column = torch.unique(candidates, return_inverse=True)
    flat = score_block(users, items[union], temperature)
    return flat.gather(1, column.view(users.size(0), -1)).view(candidates.shape)


@torch.no_grad()
def topk_of_candidates(users: Tensor, items: Tensor, candidates: Tensor, k: int,
                       temperature: float = 1.0, exclude: Tensor | None = None
                       ) -> tuple[Tensor, Tensor]:
    """Top-``k`` among each row's own ``candidates`` ``[B, C]`` (item indices, 0-padded: rows may
    be of different lengths), scored exactly as `topk` scores them; excluded ids, padding and
    repeated ids score once at most. Returns ``(scores, indices)`` ``[B, min(k, C)]``."""
    users, items = users.float(), items.float()
    union = torch.unique(candidates)
    scores = score_candidates(users, items, candidates, temperature)
    drop = candidates == 0
    if exclude is not None and exclude.numel():
        ordered = exclude.sort(dim=1).values
        where = torch.searchsorted(ordered, candidates).clamp_(max=ordered.size(1) - 1)
        drop |= ordered.gather(1, where) == candidates
    order = candidates.sort(dim=1, stable=True)  # a candidate listed twice is ranked once
    again = torch.zeros_like(drop)
    again[:, 1:] = order.values[:, 1:] == order.values[:, :-1]
    repeated = torch.zeros_like(drop).scatter_(1, order.indices, again)
    scores = scores.masked_fill(drop | repeated, float("-inf"))
    if not products_are_finite(max_abs(users), max_abs(items[union[union > 0]]), users.size(-1),
                               torch.float32):
        _refuse_nan(scores)
    keys = order_keys(scores, candidates)
    return decode_keys(keys.topk(min(k, keys.size(1)), dim=1).values)


__all__ = [
    "ITEM_TILE",
    "SIMILARITIES",
    "USER_TILE",
    "check_finite",
    "decode_keys",
    "in_user_tiles",
    "order_keys",
    "prepare",
    "score_block",
    "score_candidates",
    "score_dtype",
    "topk",
    "topk_of_candidates",
]
