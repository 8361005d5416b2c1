"""The next-item training loss of a TransRec-style model on a collated batch: where the loss
is taken (every position, or the last one for CPC), which items are encoded, and which loss of
`adarec.rec.losses` scores them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from adarec.errors import ConfigError, DataError
from adarec.rec.data import PAD
from adarec.rec.item_tower import encode_items
from adarec.rec.losses import (
    LOSSES,
    bce_loss,
    full_softmax_loss,
    in_batch_candidates,
    sampled_softmax_loss,
)
from adarec.rec.scoring import prepare

OBJECTIVES = ("sasrec", "cpc")
"""Where the loss is taken: every real position (SASRec) or the last one only (CPC)."""
LOSS_NAMES = tuple(LOSSES)


def check_objective(objective: str, loss: str, num_negatives: int) -> None:
    """Refuse an objective, loss or negative count `next_item_loss` cannot train with."""
    if objective not in OBJECTIVES:
        raise ConfigError(f"objective={objective!r} is not one of {list(OBJECTIVES)}")
    if loss not in LOSS_NAMES:
        raise ConfigError(f"loss={loss!r} is not one of {list(LOSS_NAMES)}")
    if num_negatives < (0 if loss == "sampled_softmax" else 1):
        raise ConfigError(f"num_negatives={num_negatives} is too small for loss={loss!r} "
                          "(0, in-batch negatives only, needs loss='sampled_softmax')")


def _loss_mask(model: Any, batch: Mapping[str, Tensor]) -> Tensor:
    targets = batch["target_ids"]
    mask = batch["mask"].bool() if "mask" in batch else targets != PAD
    if model.objective == "cpc":
        last = torch.zeros_like(mask)
        last[:, -1] = mask[:, -1]
        mask = last
    return mask


def hold_out_items(model: Any, items: Sequence[int], n_items: int) -> None:
    """Mark ``items`` (indices 1..``n_items``) as held out of training, e.g. the cold items of
    `adarec.rec.splits.cold_item_split`: training refuses to score them (`refuse_held_out`) and
    an ID fusion switches its ID part off for them, so they are ranked by their content alone,
    as an item that arrives after training would be. Draw negatives with
    ``TrainCollator(..., exclude_items=items)``."""
    ids = torch.as_tensor(list(items), dtype=torch.long)
    if ids.numel() and not 1 <= int(ids.min()) <= int(ids.max()) <= n_items:
        raise DataError(f"held-out items must be item indices in 1..{n_items}")
    model.held_out = torch.zeros(n_items + 1, dtype=torch.bool)
    model.held_out[ids] = True
    if getattr(model, "id_fusion", None) is not None:
        model.id_fusion.exclude(ids)


def refuse_held_out(model: Any, candidates: Tensor) -> None:
    """Training must never score the model's ``held_out`` items (e.g. cold test items)."""
    if model.held_out is None:
        return
    hit = model.held_out.to(candidates.device)[candidates]
    if bool(hit.any()):
        items = sorted(set(candidates[hit].tolist()))[:5]
        raise DataError(
            f"the batch scores held-out item(s) {items} as targets or negatives: training "
            "must not see them (remove them from the training sequences and draw negatives "
            "with TrainCollator(..., exclude_items=...))")


def next_item_loss(model: Any, batch: Mapping[str, Tensor]) -> Tensor:
    """Loss of ``batch`` (``input_ids``, ``target_ids``, ``negative_ids``, ``mask``; all
    left-padded ``[B, L]``, negatives ``[B, L, k]``) under ``model.loss_name``."""
    inputs = batch["input_ids"]
    mask = _loss_mask(model, batch)
    pos = batch["target_ids"][mask]  # [M]
    m = pos.numel()
    sim, temp = model.similarity, model.temperature
    if model.loss_name == "full_softmax":
        table = encode_items(model, torch.arange(model.n_items + 1, device=inputs.device))
        user = prepare(model.sequence_output(inputs, table[inputs])[mask], sim)
        keep = None if model.held_out is None else ~model.held_out.to(inputs.device)
        return full_softmax_loss(user / temp, prepare(table, sim), pos, keep)
    if model.num_negatives:
        neg = batch["negative_ids"]
        neg = (neg.unsqueeze(-1) if neg.dim() == 2 else neg)[mask]
        if neg.size(-1) < model.num_negatives:
            raise ConfigError(f"the batch has {neg.size(-1)} negatives per position, the "
                              f"model uses num_negatives={model.num_negatives}")
        neg = neg[:, : model.num_negatives]  # [M, k]
    else:
        neg = pos.new_zeros(m, 0)
    refuse_held_out(model, torch.cat([pos, neg.reshape(-1)]))
    emb = encode_items(model, torch.cat([inputs.reshape(-1), pos, neg.reshape(-1)]))
    n_in = inputs.numel()
    in_emb = emb[:n_in].view(*inputs.shape, model.dim)
    cand = prepare(emb[n_in:], sim)
    pos_emb, neg_emb = cand[:m], cand[m:].view(m, -1, model.dim)
    user = prepare(model.sequence_output(inputs, in_emb)[mask], sim) / temp
    if model.loss_name == "bce":
        return bce_loss(user, pos_emb, neg_emb, torch.ones(m, dtype=torch.bool,
                                                           device=user.device))
    cands = in_batch_candidates(pos, pos_emb, neg, neg_emb, model.logq_correction,
                                model.gather_candidates)
    return sampled_softmax_loss(user, cands.embeddings, cands.pos_index, logq=cands.logq,
                                candidate_ids=cands.ids)


__all__ = ["LOSS_NAMES", "OBJECTIVES", "check_objective", "hold_out_items", "next_item_loss",
           "refuse_held_out"]
