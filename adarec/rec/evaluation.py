"""Full-ranking evaluation of a TransRec-style model on ``(history, target)`` pairs, over the
vectors of `adarec.rec.inference` and the metrics of `adarec.rec.metrics`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from adarec.rec.data import pad_left
from adarec.rec.inference import item_vectors, user_vectors
from adarec.rec.metrics import ITEM_CHUNK, METRICS, Ties, evaluate_full_ranking


def evaluate_ranking(
    model: Any,
    pairs: Sequence[tuple[Sequence[int], int]],
    ks: Sequence[int] = (10, 20),
    metrics: Sequence[str] = METRICS,
    max_len: int | None = None,
    batch_size: int = 256,
    exclude_history: bool = True,
    ties: Ties = "pessimistic",
    seed: int = 0,
    item_chunk: int = ITEM_CHUNK,
) -> dict[str, float]:
    """Full-ranking metrics of ``(history, target)`` pairs (e.g. a leave-one-out split's
    ``valid`` or ``test``): every item is scored with the cached item table, the padding
    item is never ranked, and the most recent ``max_len`` items (default: the user
    encoder's ``max_len``) are the input. Two protocols: ``exclude_history=True`` ("history
    masked", adarec's default) ranks the target only against items outside the user's
    whole history; ``False`` ("history unmasked", RecBole's sequential full sort and most
    SASRec papers) ranks it against every item, so numbers are lower (about half on
    MovieLens-100k): say which one a number is. Eval mode and no grad for the call; run it
    under ``torch.autocast`` to encode in bf16 (scores are computed and compared in float32
    all the same). ``ties``/``seed``: the tie rule (`adarec.rec.metrics`; default: a target
    ranks below every item it ties with). ``item_chunk``: items scored at a time per user
    batch (bigger catalogues are counted chunk by chunk, with the same metrics)."""
    length = max_len or int(model.user_encoder.max_len)
    table = item_vectors(model)
    histories = pad_left([h for h, _ in pairs], length).to(table.device)
    return evaluate_full_ranking(
        lambda idx: user_vectors(model, histories[idx.to(table.device)]), table,
        [t for _, t in pairs], [list(h) for h, _ in pairs], ks=ks, batch_size=batch_size,
        metrics=metrics, exclude_history=exclude_history, ties=ties, seed=seed,
        temperature=model.temperature, item_chunk=item_chunk,
    )


__all__ = ["evaluate_ranking"]
