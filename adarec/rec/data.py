"""Interaction data, leave-one-out splits and batching for sequential recommendation.

Item indices run from 1 to ``n_items``; index 0 is the padding item everywhere (sequences,
batches, text tables and score matrices), so a padded id never needs a separate mask to be
ignored by ranking or negative sampling.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset, get_worker_info

PAD = 0


@dataclass
class InteractionData:
    """Each user's chronological item sequence plus index-aligned raw item ids and item texts."""

    sequences: dict[Hashable, list[int]]
    n_items: int
    item_ids: list[Hashable | None]
    item_texts: list[str]
    name: str = ""

    def __post_init__(self) -> None:
        if len(self.item_ids) != self.n_items + 1 or len(self.item_texts) != self.n_items + 1:
            raise ValueError(
                f"item_ids ({len(self.item_ids)}) and item_texts ({len(self.item_texts)}) need "
                f"n_items + 1 = {self.n_items + 1} entries (index 0 is the padding item)"
            )
        for user, seq in self.sequences.items():
            if seq and not 1 <= min(seq) <= max(seq) <= self.n_items:
                raise ValueError(f"user {user!r} has an item index outside 1..{self.n_items}")

    @property
    def n_users(self) -> int:
        return len(self.sequences)

    @property
    def n_interactions(self) -> int:
        return sum(map(len, self.sequences.values()))

    @classmethod
    def from_interactions(
        cls,
        rows: Iterable[tuple[Hashable, Hashable, Any]],
        item_texts: Mapping[Any, str | None] | None = None,
        min_user_interactions: int = 5,
        name: str = "",
    ) -> InteractionData:
        """Build sequences from ``(user, item, timestamp)`` rows.

        Choices, so that results do not depend on hidden state:
        - each user's items are sorted by timestamp with a stable sort, so ties keep file order;
        - users with fewer than ``min_user_interactions`` rows are dropped (one pass, no
          iterative k-core filtering: dropping users never removes items from kept users);
        - only items that occur in a kept sequence get an index, numbered 1..n_items in order
          of their first appearance in ``rows`` (as RecBole numbers tokens);
        - repeated (user, item) pairs are kept as separate interactions;
        - an item without text (missing or ``None`` in ``item_texts``) gets ``""``.
        """
        by_user: dict[Hashable, list[tuple[Any, Hashable]]] = {}
        first_seen: dict[Hashable, int] = {}
        for user, item, timestamp in rows:
            by_user.setdefault(user, []).append((timestamp, item))
            first_seen.setdefault(item, len(first_seen))
        kept = {u: ev for u, ev in by_user.items() if len(ev) >= min_user_interactions}
        for events in kept.values():
            events.sort(key=lambda event: event[0])  # list.sort is stable
        items = sorted({item for ev in kept.values() for _, item in ev}, key=first_seen.__getitem__)
        index = {item: i for i, item in enumerate(items, start=1)}
        texts = item_texts or {}
        return cls(
            sequences={u: [index[item] for _, item in ev] for u, ev in kept.items()},
            n_items=len(items),
            item_ids=[None, *items],
            item_texts=["", *(texts.get(item) or "" for item in items)],
            name=name,
        )


@dataclass
class LeaveOneOutSplit:
    """Per-user leave-one-out split: ``users[i]`` owns ``train[i]``, ``valid[i]``, ``test[i]``."""

    users: list[Hashable]
    train: list[list[int]]
    valid: list[tuple[list[int], int]]
    test: list[tuple[list[int], int]]


def leave_one_out(data: InteractionData, skip_short: bool = False) -> LeaveOneOutSplit:
    """Last item is the test target, the one before it the validation target (RecBole LOO).

    Validation and test histories are the whole preceding sequence, so the test history
    contains the validation target. Users with fewer than 3 items raise ``ValueError`` unless
    ``skip_short`` drops them.
    """
    split = LeaveOneOutSplit([], [], [], [])
    for user, seq in data.sequences.items():
        if len(seq) < 3:
            if skip_short:
                continue
            raise ValueError(f"user {user!r} has {len(seq)} items; leave-one-out needs >= 3")
        split.users.append(user)
        split.train.append(seq[:-2])
        split.valid.append((seq[:-2], seq[-2]))
        split.test.append((seq[:-1], seq[-1]))
    return split


def pad_left(seqs: Sequence[Sequence[int]], length: int) -> Tensor:
    """Keep the last ``length`` ids of each sequence and left-pad with 0 to ``[B, length]``.

    A fixed width keeps the most recent item at the last position in every batch, which is
    what position embeddings of a left-padded SASRec expect.
    """
    rows = [torch.tensor(list(s)[-length:] if length else [], dtype=torch.long) for s in seqs]
    if not rows:
        return torch.zeros(0, length, dtype=torch.long)
    padded = pad_sequence(rows, batch_first=True, padding_value=PAD, padding_side="left")
    return F.pad(padded, (length - padded.size(1), 0), value=PAD)


def pad_right(seqs: Sequence[Sequence[int]]) -> Tensor:
    """Right-pad whole id lists with 0 to ``[B, longest]`` (for exclusion sets, order-free)."""
    rows = [torch.tensor(list(s), dtype=torch.long) for s in seqs]
    if not rows:
        return torch.zeros(0, 0, dtype=torch.long)
    return pad_sequence(rows, batch_first=True, padding_value=PAD)


def sample_negatives(
    history: Tensor,
    n_items: int,
    shape: tuple[int, ...],
    generator: torch.Generator | None = None,
    max_rounds: int = 20,
) -> Tensor:
    """Uniform negatives from 1..n_items that avoid each row's ``history`` ids ``[B, H]``.

    Vectorised rejection sampling: only rejected draws are redrawn. Lookup uses
    ``searchsorted`` on the sorted history, so memory is O(B * (H + draws)) instead of
    O(B * n_items). Rows still rejected after ``max_rounds`` (users who cover most of the
    catalog) draw directly from their complement, so the result stays exactly uniform.
    Negatives are drawn with replacement; 0 in ``history`` is padding.
    """
    batch = history.size(0)
    hist = history.sort(dim=1).values
    distinct = (hist != PAD).sum(1) - ((hist[:, 1:] == hist[:, :-1]) & (hist[:, 1:] != PAD)).sum(1)
    if batch and int(distinct.max()) >= n_items:
        raise ValueError("a user's history covers every item; no negative can be sampled")
    neg = torch.randint(1, n_items + 1, (batch, math.prod(shape)), generator=generator)
    if hist.size(1) == 0:
        return neg.view(batch, *shape)
    for _ in range(max_rounds):
        where = torch.searchsorted(hist, neg).clamp_(max=hist.size(1) - 1)
        bad = hist.gather(1, where) == neg
        n_bad = int(bad.sum())
        if not n_bad:
            return neg.view(batch, *shape)
        neg[bad] = torch.randint(1, n_items + 1, (n_bad,), generator=generator)
    where = torch.searchsorted(hist, neg).clamp_(max=hist.size(1) - 1)
    bad = hist.gather(1, where) == neg
    for row in bad.any(1).nonzero().flatten().tolist():
        allowed = torch.ones(n_items + 1, dtype=torch.bool)
        allowed[hist[row]] = False
        allowed[PAD] = False
        pool = allowed.nonzero().flatten()
        pick = torch.randint(len(pool), (int(bad[row].sum()),), generator=generator)
        neg[row, bad[row]] = pool[pick]
    return neg.view(batch, *shape)


class TrainExample(NamedTuple):
    """One user's training window: next-item targets plus the full sequence for exclusion."""

    input_ids: list[int]
    target_ids: list[int]
    history: list[int]


SAMPLINGS = ("windows", "prefixes", "last")


class TrainDataset(Dataset[TrainExample]):
    """Next-item training examples cut from each user's training sequence.

    ``sampling`` says which interactions are targets in an epoch:

    - ``"windows"`` (default): windows of at most ``max_len + 1`` items ending at the last item
      and every ``stride`` items before it (default ``stride = max_len``: consecutive windows
      meet, so **every interaction except a user's first is a target exactly once per epoch**),
      with the loss at every position of a window;
    - ``"prefixes"``: one example per target (every interaction except a user's first), its
      ``max_len`` preceding items as input and the loss at that one position (RecBole's
      sequential data augmentation): every target sees a full-length history, at about
      ``max_len`` times the sequence-encoder work per epoch of ``"windows"``;
    - ``"last"``: one window per user, the most recent ``max_len + 1`` items (on MovieLens-100k
      with ``max_len=20`` about a fifth of the training interactions).

    ``max_windows`` keeps at most that many examples per user, the most recent first. Every
    example keeps the user's whole training sequence as ``history`` (negatives are drawn
    outside it). A ``"prefixes"`` example marks the positions before its target with the
    padding id in ``target_ids``, so `TrainCollator`'s ``mask`` leaves them out of the loss.
    Sequences shorter than 2 items have no next-item pair and are left out.
    """

    def __init__(
        self,
        train_sequences: Iterable[Sequence[int]],
        max_len: int,
        stride: int | None = None,
        max_windows: int | None = None,
        sampling: str = "windows",
    ) -> None:
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling={sampling!r} is not one of {list(SAMPLINGS)}")
        if stride is not None and (stride < 1 or sampling != "windows"):
            raise ValueError(f"stride must be >= 1 and needs sampling='windows', got stride="
                             f"{stride} with sampling={sampling!r}")
        if max_windows is not None and max_windows < 1:
            raise ValueError(f"max_windows must be >= 1 or None, got {max_windows}")
        self.sequences = [list(s) for s in train_sequences if len(s) >= 2]
        self.max_len = max_len
        self.sampling = sampling
        step = {"windows": stride or max_len, "prefixes": 1}.get(sampling)
        self.windows: list[tuple[int, int]] = []  # (sequence index, end position, exclusive)
        for i, seq in enumerate(self.sequences):
            ends = range(len(seq), 1, -step) if step else [len(seq)]
            self.windows.extend((i, end) for end in list(ends)[:max_windows])

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> TrainExample:
        i, end = self.windows[index]
        seq = self.sequences[i]
        window = seq[max(0, end - self.max_len - 1) : end]
        inputs, targets = window[:-1], window[1:]
        if self.sampling == "prefixes":
            targets = [PAD] * (len(targets) - 1) + targets[-1:]
        return TrainExample(inputs, targets, seq)


class TrainCollator:
    """Left-pads training windows and samples negatives outside each user's training sequence.

    Returns ``input_ids``, ``target_ids`` ``[B, L]``, ``negative_ids`` ``[B, L, k]`` (0 at
    padding) and ``mask`` ``[B, L]`` (True on real positions). The same ``seed`` and batch
    order give the same negatives. In a DataLoader worker the generator is re-seeded from
    ``seed`` and the worker's own seed, so workers and epochs draw different negatives while
    staying reproducible under ``torch.manual_seed`` (or a DataLoader ``generator``).
    ``exclude_items`` are never drawn as negatives for anyone (e.g. cold items held out of
    training).
    """

    def __init__(
        self,
        n_items: int,
        max_len: int,
        num_negatives: int = 1,
        seed: int = 0,
        exclude_items: Iterable[int] = (),
    ) -> None:
        if num_negatives < 1:
            raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")
        self.exclude_items = sorted(set(exclude_items))
        if any(not 1 <= i <= n_items for i in self.exclude_items[:1] + self.exclude_items[-1:]):
            raise ValueError(f"exclude_items must be item indices in 1..{n_items}")
        self.n_items = n_items
        self.max_len = max_len
        self.num_negatives = num_negatives
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self._worker_seed: int | None = None

    def __call__(self, batch: Sequence[TrainExample]) -> dict[str, Tensor]:
        info = get_worker_info()
        if info is not None and info.seed != self._worker_seed:
            self._worker_seed = info.seed
            self.generator.manual_seed((self.seed * 1_000_003 + info.seed) % 2**63)
        input_ids = pad_left([ex.input_ids for ex in batch], self.max_len)
        target_ids = pad_left([ex.target_ids for ex in batch], self.max_len)
        mask = target_ids != PAD
        history = pad_right([[*ex.history, *self.exclude_items] for ex in batch])
        negatives = sample_negatives(
            history, self.n_items, (self.max_len, self.num_negatives), self.generator
        )
        negatives.masked_fill_(~mask.unsqueeze(-1), PAD)
        return {
            "input_ids": input_ids,
            "target_ids": target_ids,
            "negative_ids": negatives,
            "mask": mask,
        }


class EvalExample(NamedTuple):
    """One ranking query: recent history window, target and the full history to mask."""

    history_ids: list[int]
    target_id: int
    exclude_ids: list[int]


class EvalDataset(Dataset[EvalExample]):
    """Wraps ``(history, target)`` pairs from :func:`leave_one_out` for batched ranking."""

    def __init__(self, pairs: Iterable[tuple[Sequence[int], int]], max_len: int) -> None:
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        self.pairs = [(list(h), int(t)) for h, t in pairs]
        self.max_len = max_len

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> EvalExample:
        history, target = self.pairs[index]
        return EvalExample(history[-self.max_len :], target, history)


class EvalCollator:
    """Batches eval examples: ``history_ids`` ``[B, L]`` (left-padded), ``target_ids`` ``[B]``
    and ``exclude_ids`` ``[B, H]`` (the untruncated history, right-padded with 0, which is
    harmless because the padding item is never ranked)."""

    def __init__(self, max_len: int) -> None:
        self.max_len = max_len

    def __call__(self, batch: Sequence[EvalExample]) -> dict[str, Tensor]:
        return {
            "history_ids": pad_left([ex.history_ids for ex in batch], self.max_len),
            "target_ids": torch.tensor([ex.target_id for ex in batch], dtype=torch.long),
            "exclude_ids": pad_right([ex.exclude_ids for ex in batch]),
        }


def tokenize_item_texts(
    texts: Sequence[str], tokenizer: Any, max_length: int = 30
) -> dict[str, Tensor]:
    """Tokenize every item text once into ``[n_items + 1, max_length]`` tensors.

    ``texts[0]`` must be ``""`` (the padding item, as in ``InteractionData.item_texts``): this
    catches an off-by-one table. Row 0 then holds only special tokens, so a text encoder still
    gets a non-empty attention mask for it; its embedding is never ranked.
    """
    if not texts or texts[0] != "":
        raise ValueError("texts[0] must be '' (the padding item); pass data.item_texts")
    encoded = tokenizer(
        list(texts),
        padding="max_length",
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
    )
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
