"""The item text length chosen from the data: the shortest token length, within a cap, at which
the items' token sequences are as distinct as they will get.

Items whose truncated token sequences are identical get one embedding from a text-only model,
so they tie in every ranking and the honest tie rule counts that against the model. A fixed
length (30 tokens) is too short for catalogues whose titles share long prefixes (editions,
platforms) and longer than needed for artist names.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from adarec.errors import ConfigError
from adarec.rec.data import tokenize_item_texts


@dataclass(frozen=True)
class TextLength:
    """A token length and the items still identical at it (``identical``: items that share their
    token sequence with another item; ``largest_group``: the most items sharing one)."""

    length: int
    identical: int
    largest_group: int
    n_items: int


def identical_items(texts: Sequence[str], tokenizer: Any, length: int) -> TextLength:
    """How many of items 1..n (``texts[0]`` is the padding item's ``""``) share their first
    ``length`` tokens with another item, as `tokenize_item_texts` cuts them."""
    if length < 1:
        raise ConfigError(f"text length must be >= 1, got {length}")
    enc = tokenize_item_texts(texts, tokenizer, length)
    rows = (enc["input_ids"] * enc["attention_mask"])[1:]
    if rows.size(0) == 0:
        return TextLength(length, 0, 0, 0)
    _, counts = torch.unique(rows, dim=0, return_counts=True)
    shared = counts[counts > 1]
    return TextLength(length, int(shared.sum()), int(counts.max()) if shared.numel() else 1,
                      rows.size(0))


def choose_text_length(texts: Sequence[str], tokenizer: Any, cap: int = 64,
                       minimum: int = 8) -> TextLength:
    """The shortest length in ``minimum..cap`` at which no more items are identical than at
    ``cap`` (every item distinct, when the texts allow it). Truncating later only adds tokens,
    so the count never grows with the length and a bisection finds it (about log2(cap)
    tokenisations of the table). Use `warn_identical` on the result."""
    if not 1 <= minimum <= cap:
        raise ConfigError(f"need 1 <= minimum <= cap, got minimum={minimum}, cap={cap}")
    best = identical_items(texts, tokenizer, cap)
    lo, hi = minimum, cap  # the answer lies in lo..hi; hi is known to reach best
    while lo < hi:
        mid = (lo + hi) // 2
        found = identical_items(texts, tokenizer, mid)
        if found.identical <= best.identical:
            hi, best = mid, found
        else:
            lo = mid + 1
    return best


def warn_identical(found: TextLength, name: str = "") -> bool:
    """Warn with the counts when items remain identical at ``found.length``; True if it warned."""
    if not found.identical:
        return False
    where = f"{name}: " if name else ""
    warnings.warn(
        f"{where}{found.identical} of {found.n_items} items share their first {found.length} "
        f"tokens with another item (largest group: {found.largest_group} items): a text-only "
        "model scores them alike and cannot rank them apart; ID fusion (id_fusion='add', "
        "quickstart --id-fusion add) separates them, a longer text length may too",
        UserWarning, stacklevel=2)
    return True


__all__ = ["TextLength", "choose_text_length", "identical_items", "warn_identical"]
