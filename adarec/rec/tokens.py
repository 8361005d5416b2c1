"""Item texts as token rows: the one tokenisation every item-text path uses.

Padding is done here, not by the tokenizer, so tokenizers without a pad token (GPT-2, Llama)
work unchanged, and the encoder, `tokenize_item_texts` and the text-length choice cut texts alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from adarec.errors import ConfigError


def check_template(template: str | None) -> str | None:
    if template is not None and (not isinstance(template, str) or "{text}" not in template):
        raise ConfigError(f"template={template!r} must be a string holding '{{text}}'")
    return template


def tokenize_texts(tokenizer: Any, texts: Sequence[str], max_length: int,
                   template: str | None = None, append_eos: bool = False
                   ) -> tuple[Tensor, Tensor]:
    """Token rows ``[N, max_length]`` and their mask, real tokens first.

    Padding is done here, not by the tokenizer, so a tokenizer without a pad token (GPT-2,
    Llama) works unchanged: padded positions hold its pad id, else EOS, else UNK (any id: the
    mask hides them). A text with no token at all (``""`` without special tokens) becomes one
    such token, marked real, so no row is fully masked (which some attention kernels turn into
    NaN). ``append_eos`` ends each row with EOS after truncating to ``max_length - 1``.
    """
    if max_length < 1 + int(append_eos):
        raise ConfigError(f"max_length={max_length} leaves no room for a token")
    eos = getattr(tokenizer, "eos_token_id", None)
    if append_eos and eos is None:
        raise ConfigError(f"append_eos=True, but {type(tokenizer).__name__} has no EOS token")
    pad = next((i for i in (getattr(tokenizer, "pad_token_id", None), eos,
                            getattr(tokenizer, "unk_token_id", None)) if i is not None), 0)
    template = check_template(template)
    texts = [t if template is None else template.replace("{text}", t) for t in texts]
    room = max_length - int(append_eos)
    out = tokenizer(texts, truncation=True, max_length=room, padding=False,
                    return_tensors=None)
    rows, masks = out["input_ids"], out.get("attention_mask")
    if isinstance(rows, Tensor):
        rows = rows.tolist()
    if masks is not None:  # a tokenizer that pads anyway: keep its real tokens only
        masks = masks.tolist() if isinstance(masks, Tensor) else masks
        rows = [[t for t, m in zip(row, mrow, strict=False) if m] for row, mrow in
                zip(rows, masks, strict=True)]
    ids = torch.full((len(rows), max_length), int(pad), dtype=torch.long)
    mask = torch.zeros(len(rows), max_length, dtype=torch.long)
    for i, row in enumerate(rows):
        row = list(row)[:room]
        if append_eos and (not row or row[-1] != eos):
            row.append(eos)
        row = row or [int(pad)]
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


__all__ = ["check_template", "tokenize_texts"]
