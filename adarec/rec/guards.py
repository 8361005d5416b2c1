"""Guards a training loop calls so that a run that went wrong stops with a clear error instead
of ending with a "best" model that ranks nothing.

A collapsed model (every item scored alike for every user: item vectors all equal, or user
vectors all zero) ties every target with every item; the honest tie rule then reports zeros,
and early stopping would still keep its first epoch as best and save it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from adarec.errors import TrainingError
from adarec.rec.data import PAD, pad_left
from adarec.rec.inference import item_vectors, user_vectors
from adarec.rec.scoring import score_block


@torch.no_grad()
def all_scores_tied(model: Any, pairs: Sequence[tuple[Sequence[int], int]],
                    max_len: int | None = None, batch_size: int = 256) -> bool:
    """True when, for every ``(history, target)`` pair, every real item gets the same score (as
    `TransRec.evaluate_ranking` scores them). Stops at the first batch with a spread, so a
    healthy model costs one batch of users."""
    if not pairs:
        return False
    length = max_len or int(model.user_encoder.max_len)
    table = item_vectors(model)
    for start in range(0, len(pairs), batch_size):
        histories = pad_left([h for h, _ in pairs[start:start + batch_size]], length)
        scores = score_block(user_vectors(model, histories.to(table.device)), table,
                             model.temperature)[:, PAD + 1:]
        if bool((scores.amax(1) != scores.amin(1)).any()):
            return False
    return True


def refuse_collapsed(model: Any, pairs: Sequence[tuple[Sequence[int], int]],
                     max_len: int | None = None, epoch: int | None = None) -> None:
    """Raise `TrainingError` when the validation scores are all tied (`all_scores_tied`): call
    it before early stopping records the epoch, so a collapsed model is never kept as best."""
    if all_scores_tied(model, pairs, max_len):
        when = f" after epoch {epoch}" if epoch is not None else ""
        raise TrainingError(
            f"validation scores are all tied{when}: the model gives every item the same score "
            f"for all {len(pairs)} validation users (a collapsed model), so it ranks nothing; "
            "stopped without keeping it. Check that the item texts differ (a text column that "
            "was not matched), lower the learning rate, or add ID fusion")


__all__ = ["all_scores_tied", "refuse_collapsed"]
