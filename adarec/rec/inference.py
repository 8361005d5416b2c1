"""The vectors and scores every inference path of a TransRec-style model reads.

`score`, `full_sort_scores`, `evaluate_ranking` and `recommend` all score ``user_vectors``
against ``item_vectors`` through `adarec.rec.scoring` (float32, temperature, NaN/inf refused,
ties to the lower item index), so they give the same floats for the same inputs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from adarec.rec.data import PAD
from adarec.rec.item_tower import device_of, inference
from adarec.rec.scoring import check_finite, in_user_tiles, prepare, score_block, score_candidates


def user_vectors(model: Any, history_ids: Tensor) -> Tensor:
    """Inference user vectors ``[B, dim]`` as scores read them (float32, normalised for
    cosine), the user encoder run on fixed tiles of histories (`in_user_tiles`)."""
    with inference(model):
        users = in_user_tiles(
            lambda h: prepare(model.user_embeddings(h).float(), model.similarity),
            history_ids.to(device_of(model)))
    check_finite(users, "the user vectors")
    return users


def item_vectors(model: Any, batch_size: int = 512) -> Tensor:
    """The item table as scores read it (float32, normalised for cosine)."""
    return as_item_vectors(model, model.item_table(batch_size))


def as_item_vectors(model: Any, table: Tensor) -> Tensor:
    """A raw item table ``[n_items + 1, dim]`` as scores read it (also per adapter set)."""
    vectors = prepare(table.float(), model.similarity)
    check_finite(vectors[1:], "the item vectors")
    return vectors


@torch.no_grad()
def candidate_scores(model: Any, history_ids: Tensor, candidate_ids: Tensor) -> Tensor:
    """Scores ``[B, C]`` of each row's candidates."""
    table = item_vectors(model)
    return score_candidates(user_vectors(model, history_ids), table,
                            candidate_ids.to(table.device), model.temperature)


@torch.no_grad()
def full_sort_scores(model: Any, history_ids: Tensor, exclude_history: bool = True,
                     exclude_ids: Tensor | None = None, batch_size: int = 512) -> Tensor:
    """Scores of every item ``[B, n_items + 1]``; the padding item, and with
    ``exclude_history`` the history ids (plus ``exclude_ids``), get ``-inf``."""
    table = item_vectors(model, batch_size)
    history_ids = history_ids.to(table.device)
    scores = score_block(user_vectors(model, history_ids), table, model.temperature)
    scores[:, PAD] = float("-inf")
    if exclude_history:
        scores.scatter_(1, history_ids, float("-inf"))
        if exclude_ids is not None:
            scores.scatter_(1, exclude_ids.to(table.device), float("-inf"))
    return scores


__all__ = [
    "as_item_vectors", "candidate_scores", "full_sort_scores", "item_vectors", "user_vectors",
]
