"""Serving a TransRec-style model: raw item ids in and out (`set_item_map`, `item_index`),
top-k per history (`recommend`) and items the model never trained on (`add_items`).

Scores are those of `adarec.rec.inference` (the floats `score` and `full_sort_scores` give,
temperature included); exact ties go to the lower item index at any chunk or batch size.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from numbers import Integral
from typing import Any

import torch
from torch import Tensor

from adarec.errors import ConfigError, DataError, UnknownItemError
from adarec.mixed import row_groups
from adarec.rec import mixed_serving
from adarec.rec.data import PAD, pad_left, pad_right
from adarec.rec.inference import item_vectors, user_vectors
from adarec.rec.scoring import topk, topk_of_candidates

logger = logging.getLogger(__name__)


@dataclass
class Recommendations:
    """Top-k of each history, best first: ``items`` as raw ids when the model has an item map
    (else indices), ``scores`` ``[B, k]`` and ``indices`` ``[B, k]``. A row with fewer than k
    rankable items is shorter in ``items`` and padded with index 0 / score ``-inf``."""

    items: list[list[Hashable]]
    scores: Tensor
    indices: Tensor


def set_item_map(model: Any, item_ids: Sequence[Hashable | None],
                 item_texts: Sequence[str] | None = None) -> None:
    """Give each index its raw item id (``item_ids[0]`` is the padding item) and optionally
    its text; both travel with `save_pretrained`, and `recommend` then speaks raw ids."""
    ids = list(item_ids)
    if len(ids) != model.n_items + 1:
        raise ConfigError(f"item_ids has {len(ids)} entries; the model has n_items + 1 = "
                          f"{model.n_items + 1} (index 0 is the padding item)")
    index: dict[Hashable, int] = {}
    for i, raw in enumerate(ids[1:], 1):
        if raw in index:
            raise DataError(f"raw item id {raw!r} appears twice (indices {index[raw]}, {i})")
        index[raw] = i
    if item_texts is not None and len(item_texts) != len(ids):
        raise ConfigError(f"item_texts has {len(item_texts)} entries, item_ids {len(ids)}")
    model.item_ids, model._index = [None, *ids[1:]], index
    model.item_texts = None if item_texts is None else list(item_texts)


def item_index(model: Any, items: Sequence[Hashable], unknown: str = "raise") -> list[int]:
    """Indices of raw ids (with an item map) or checked indices (without one).

    ``unknown="raise"`` refuses ids the model does not know with `UnknownItemError` naming
    them; ``"skip"`` leaves them out (counted in the log)."""
    if unknown not in ("raise", "skip"):
        raise ConfigError(f"unknown={unknown!r} is not 'raise' or 'skip'")
    n = model.n_items
    if model.item_ids is not None:
        out = [model._index.get(raw, -1) for raw in items]
    else:
        out = [int(i) if isinstance(i, Integral) and not isinstance(i, bool)
               and 1 <= int(i) <= n else -1 for i in items]
    bad = [raw for raw, i in zip(items, out, strict=True) if i < 0]
    if bad and unknown == "raise":
        what = "raw item ids" if model.item_ids is not None else (
            f"item indices (no item map: expected ints in 1..{n}; call set_item_map to use "
            "raw ids)")
        raise UnknownItemError(f"{len(bad)} unknown {what}: {bad[:5]} (pass unknown='skip' "
                               "to leave them out, or add_items to add new ones)")
    if bad:
        logger.info("skipped %d unknown item(s), e.g. %s", len(bad), bad[:3])
    return [i for i in out if i >= 0]


@torch.no_grad()
def recommend(
    model: Any,
    histories: Sequence[Sequence[Hashable]] | Tensor,
    k: int = 10,
    exclude_seen: bool = True,
    exclude: Sequence[Sequence[Hashable]] | None = None,
    candidates: Sequence[Sequence[Hashable]] | None = None,
    unknown: str = "raise",
    batch_size: int = 256,
    item_chunk: int = 65536,
    set_names: Sequence[str | None] | None = None,
) -> Recommendations:
    """Top-``k`` items for each history (see `TransRec.recommend`); with ``set_names`` row ``i``
    is served by adapter set ``set_names[i]`` (`adarec.rec.mixed_serving`)."""
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    if isinstance(histories, Tensor):
        if model.item_ids is not None:
            raise ConfigError("a tensor of indices cannot be read as raw ids; pass lists of "
                              "raw ids (the model has an item map)")
        histories = [[i for i in row if i != PAD] for row in histories.tolist()]
    if candidates is not None and len(candidates) != len(histories):
        raise ConfigError(f"{len(candidates)} candidate lists for {len(histories)} histories")
    if set_names is not None and len(set_names) != len(histories):
        raise ConfigError(f"{len(set_names)} set names for {len(histories)} histories")
    if exclude is not None and len(exclude) != len(histories):
        raise ConfigError(f"{len(exclude)} exclude lists for {len(histories)} histories")
    seqs = [item_index(model, h, unknown) for h in histories]
    empty = [i for i, h in enumerate(seqs) if not h]
    if empty:
        raise DataError(f"histories {empty[:5]} hold no known item; a sequential model needs "
                        "at least one (serve such users from a fallback, e.g. popularity)")
    extra = [item_index(model, e, "skip") for e in exclude] if exclude is not None else None
    cands = ([list(dict.fromkeys(item_index(model, c, unknown))) for c in candidates]
             if candidates is not None else None)  # a candidate listed twice counts once
    length = int(model.user_encoder.max_len)
    raw = mixed_serving.set_tables(model, set_names) if set_names is not None else None
    tables: dict[str | None, Tensor] = (mixed_serving.set_item_vectors(model, raw)
                                         if raw is not None else {None: item_vectors(model)})
    scores_out, index_out = [], []
    for start in range(0, len(seqs), batch_size):
        rows = list(range(start, min(start + batch_size, len(seqs))))
        histories_in = pad_left([seqs[r] for r in rows], length)
        if raw is None or set_names is None:
            user = user_vectors(model, histories_in)
            groups: dict[str | None, list[int]] = {None: list(range(len(rows)))}
        else:
            names = [set_names[r] for r in rows]
            user = mixed_serving.mixed_user_vectors(model, histories_in, names, raw)
            groups = row_groups(names)
        values = torch.full((len(rows), k), float("-inf"))
        indices_b = torch.zeros(len(rows), k, dtype=torch.long)
        for name, members in groups.items():
            table = tables[name]
            values_g, idx = _rank(model, user[members], table, [rows[m] for m in members],
                                  seqs, extra, cands, exclude_seen, k, item_chunk)
            values[members, : values_g.size(1)] = values_g.cpu()
            indices_b[members, : idx.size(1)] = idx.cpu()
        scores_out.append(values)
        index_out.append(indices_b)
    scores, indices = torch.cat(scores_out), torch.cat(index_out)
    names = model.item_ids
    items = [[names[i] if names is not None else i for i in row if i != PAD]
             for row in indices.tolist()]
    return Recommendations(items, scores, indices)


def _rank(model: Any, user: Tensor, table: Tensor, rows: list[int], seqs: list[list[int]],
          extra: list[list[int]] | None, cands: list[list[int]] | None, exclude_seen: bool,
          k: int, item_chunk: int) -> tuple[Tensor, Tensor]:
    """Top-k of users ``rows`` against ``table``: scores and indices (index 0 where a row has
    fewer than k rankable items)."""
    drop = [[PAD, *(seqs[r] if exclude_seen else []), *(extra[r] if extra else [])]
            for r in rows]
    excluded = pad_right(drop).to(table.device)
    if cands is None:
        values, idx = topk(user, table, min(k, table.size(0)), model.temperature,
                           excluded, item_chunk)
    else:
        values, idx = topk_of_candidates(
            user, table, pad_right([cands[r] for r in rows]).to(table.device), k,
            model.temperature, excluded)
    return values, idx.masked_fill(values == float("-inf"), PAD)


def add_items(model: Any, item_ids: Sequence[Hashable], inputs: Sequence[Any],
              preprocessor: Any = None, texts: Sequence[str] | None = None) -> list[int]:
    """Append items from their raw ``inputs`` (texts, images: what the item encoder reads) and
    map them to ``item_ids``; ``texts`` are recorded as the items' texts. Returns their new
    indices."""
    if len(item_ids) != len(inputs):
        raise ConfigError(f"{len(item_ids)} item ids for {len(inputs)} inputs")
    if model.item_ids is not None:
        known = [raw for raw in item_ids if raw in model._index]
        if known or len(set(item_ids)) != len(item_ids):
            raise DataError(f"item ids already present or repeated: {known[:5] or item_ids}")
    first = model.n_items + 1
    expected = list(range(first, first + len(item_ids)))
    if model.item_ids is None and any(raw != i for raw, i in zip(item_ids, expected,
                                                                 strict=True)):
        raise ConfigError(f"without an item map new items get the next indices {expected[:3]}"
                          "...; call set_item_map first to use raw ids")
    model.item_encoder.add_items(list(inputs), preprocessor)
    if model.id_fusion is not None:  # new items have no trained ID: content alone scores them
        model.id_fusion.grow(model.n_items)
    new = list(range(first, model.n_items + 1))
    if model.item_ids is not None:
        old_texts = model.item_texts
        item_texts = None
        if old_texts is not None:
            item_texts = [*old_texts, *(texts if texts is not None else [""] * len(new))]
        set_item_map(model, [*model.item_ids, *item_ids], item_texts)
    model.invalidate_cache()
    logger.info("added %d item(s): indices %d..%d", len(new), first, model.n_items)
    return new


def add_items_from(model: Any, item_ids: Sequence[Hashable], *, texts: Sequence[str] | None,
                   tokenizer: Any, images: Sequence[Any] | None, audio: Sequence[Any] | None,
                   inputs: Sequence[Any] | None, processor: Any) -> list[int]:
    """`add_items` from exactly one kind of input (`TransRec.add_items`' keywords)."""
    given = {k: v for k, v in (("texts", texts), ("images", images), ("audio", audio),
                               ("inputs", inputs)) if v is not None}
    if len(given) != 1:
        raise ConfigError("pass the new items' texts, images, audio or inputs (one of them), "
                          f"not {sorted(given) or 'none'}")
    if texts is None and tokenizer is not None:
        raise ConfigError("tokenizer goes with texts; pass processor= for the other inputs")
    return add_items(model, item_ids, next(iter(given.values())),
                     tokenizer if texts is not None else processor, texts)


__all__ = ["Recommendations", "add_items", "add_items_from", "item_index", "recommend",
           "set_item_map"]
