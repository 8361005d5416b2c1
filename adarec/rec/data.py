"""Interaction data, leave-one-out splits and batching for sequential recommendation.

Item indices run from 1 to ``n_items``; index 0 is the padding item everywhere (sequences,
batches, text tables and score matrices), so a padded id never needs a separate mask to be
ignored by ranking or negative sampling.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset, get_worker_info

from adarec.errors import ConfigError, DataError
from adarec.rec.readers import csv_interactions, dataframe_interactions
from adarec.rec.timestamps import TimestampParser, is_missing
from adarec.rec.tokens import tokenize_texts

PAD = 0
logger = logging.getLogger(__name__)


@dataclass
class InteractionData:
    """Each user's chronological item sequence plus index-aligned raw item ids and item texts.

    ``dropped`` counts what a loader left out, by reason (e.g. rows of users below
    ``min_user_interactions``), so nothing disappears unreported. ``split`` is a train/valid/test
    split that came with the data (RecBole's pre-split ``*.train/valid/test.inter`` files):
    `leave_one_out` then returns it as given instead of deriving one.
    """

    sequences: dict[Hashable, list[int]]
    n_items: int
    item_ids: list[Hashable | None]
    item_texts: list[str]
    name: str = ""
    dropped: dict[str, int] = field(default_factory=dict)
    split: LeaveOneOutSplit | None = None

    def __post_init__(self) -> None:
        if len(self.item_ids) != self.n_items + 1 or len(self.item_texts) != self.n_items + 1:
            raise DataError(
                f"item_ids ({len(self.item_ids)}) and item_texts ({len(self.item_texts)}) need "
                f"n_items + 1 = {self.n_items + 1} entries (index 0 is the padding item)"
            )
        for user, seq in self.sequences.items():
            if seq and not 1 <= min(seq) <= max(seq) <= self.n_items:
                raise DataError(f"user {user!r} has an item index outside 1..{self.n_items}")

    @property
    def n_users(self) -> int:
        return len(self.sequences)

    @property
    def n_interactions(self) -> int:
        return sum(map(len, self.sequences.values()))

    def item_index(self) -> dict[Hashable, int]:
        """Raw item id -> index 1..n_items."""
        return {item: i for i, item in enumerate(self.item_ids) if i != PAD}

    @classmethod
    def from_interactions(
        cls,
        rows: Iterable[tuple[Hashable, Hashable, Any] | tuple[Hashable, Hashable]],
        item_texts: Mapping[Any, str | None] | None = None,
        min_user_interactions: int = 5,
        name: str = "",
    ) -> InteractionData:
        """Build sequences from ``(user, item, timestamp)`` rows, or ``(user, item)`` rows that
        are already in chronological order.

        Choices, so that results do not depend on hidden state:
        - timestamps are numbers, numeric strings or dates (``datetime`` or ISO 8601 strings;
          naive ones read as UTC) and are compared as numbers: ``"9"`` sorts before ``"10"``.
          A missing (``None``, ``NaN``, ``""``) or unparsable timestamp, or a mix of numbers
          and dates, is a `DataError` naming the row: never a silently wrong order;
        - each user's items are sorted by timestamp with a stable sort, so ties keep file order;
        - rows without a user or item id are dropped, and so are users with fewer than
          ``min_user_interactions`` rows (one pass, no iterative k-core filtering: dropping
          users never removes items from kept users); both counts land in ``dropped`` and the
          log;
        - only items that occur in a kept sequence get an index, numbered 1..n_items in order
          of their first appearance in ``rows`` (as RecBole numbers tokens);
        - repeated (user, item) pairs are kept as separate interactions;
        - an item without text (missing, ``None`` or empty in ``item_texts``) gets ``""``, with
          a warning that counts them (no warning when ``item_texts`` is ``None``).
        """
        parser = TimestampParser()
        by_user: dict[Hashable, list[tuple[float, Hashable]]] = {}
        first_seen: dict[Hashable, int] = {}
        timed: bool | None = None
        no_id = 0
        for n, row in enumerate(rows, 1):
            if len(row) not in (2, 3):
                raise DataError(f"row {n}: expected (user, item[, timestamp]), got {row!r}")
            if timed is None:
                timed = len(row) == 3
            elif timed != (len(row) == 3):
                raise DataError(f"row {n}: rows mix (user, item) pairs and (user, item, "
                                "timestamp) triples")
            user, item = row[0], row[1]
            if is_missing(user) or is_missing(item):
                no_id += 1
                continue
            key = parser.parse(row[2], f"row {n}") if len(row) == 3 else 0.0
            by_user.setdefault(user, []).append((key, item))
            first_seen.setdefault(item, len(first_seen))
        parser.check()
        kept = {u: ev for u, ev in by_user.items() if len(ev) >= min_user_interactions}
        dropped = {}
        if no_id:
            dropped["rows without a user or item id"] = no_id
        short = sum(len(ev) for u, ev in by_user.items() if u not in kept)
        if short:
            dropped[f"rows of users with < {min_user_interactions} interactions"] = short
            dropped[f"users with < {min_user_interactions} interactions"] = len(by_user) - len(kept)
        for events in kept.values():
            events.sort(key=lambda event: event[0])  # list.sort is stable
        items = sorted({item for ev in kept.values() for _, item in ev}, key=first_seen.__getitem__)
        index = {item: i for i, item in enumerate(items, start=1)}
        texts = [""] * (len(items) + 1)
        if item_texts is not None:
            texts[1:] = [_text(item_texts.get(item)) for item in items]
            warn_missing_texts(texts, items, name)
        data = cls(
            sequences={u: [index[item] for _, item in ev] for u, ev in kept.items()},
            n_items=len(items),
            item_ids=[None, *items],
            item_texts=texts,
            name=name,
            dropped=dropped,
        )
        log_loaded(data)
        return data

    @classmethod
    def from_csv(
        cls,
        path: str | Path,
        user: str = "user_id",
        item: str = "item_id",
        time: str | None = "timestamp",
        *,
        items: str | Path | None = None,
        item_key: str | None = None,
        text: str | None = None,
        delimiter: str = ",",
        min_user_interactions: int = 5,
        name: str | None = None,
    ) -> InteractionData:
        """Interactions from a CSV file with a header row (no pandas needed).

        ``user``, ``item`` and ``time`` name its columns (``time=None``: the file is already in
        chronological order per user). Item text comes from the column or template ``text``
        (``"title"`` or ``"{title} ({year}). {genres}"``), read from the items CSV ``items``
        (keyed by its column ``item_key``, default ``item``) or, without ``items``, from the
        interactions file itself. Ids stay strings, as in the file. See `from_interactions`
        for the ordering, filtering and error rules.
        """
        rows, texts = csv_interactions(Path(path), user, item, time, items, item_key, text,
                                       delimiter)
        return cls.from_interactions(rows, texts, min_user_interactions,
                                     name=name if name is not None else Path(path).stem)

    @classmethod
    def from_dataframe(
        cls,
        df: Any,
        user: str = "user_id",
        item: str = "item_id",
        time: str | None = "timestamp",
        *,
        items: Any = None,
        item_key: str | None = None,
        text: str | None = None,
        min_user_interactions: int = 5,
        name: str = "",
    ) -> InteractionData:
        """Interactions from a pandas DataFrame (``pip install adarec[pandas]``).

        Like `from_csv`, with ``items`` a DataFrame or a CSV path; ids keep their dtype (ints
        stay ints), and a ``datetime64`` time column is compared as dates.
        """
        rows, texts = dataframe_interactions(df, user, item, time, items, item_key, text)
        return cls.from_interactions(rows, texts, min_user_interactions, name=name)


def _text(value: Any) -> str:
    return "" if is_missing(value) else str(value)


def warn_missing_texts(texts: Sequence[str], items: Sequence[Hashable], name: str = "") -> int:
    """Warn (once, with a count and examples) when items 1..n have an empty text; returns the
    count. An empty text is a valid input for a text encoder, but rarely what was meant."""
    empty = [items[i - 1] for i in range(1, len(texts)) if not texts[i].strip()]
    if empty:
        where = f"{name}: " if name else ""
        warnings.warn(
            f"{where}{len(empty)} of {len(texts) - 1} items have no text and get '' "
            f"(e.g. {empty[:3]}); check the item table and its id column",
            UserWarning, stacklevel=3,
        )
    return len(empty)


def log_loaded(data: InteractionData) -> None:
    logger.info("%s: %d users, %d items, %d interactions", data.name or "data", data.n_users,
                data.n_items, data.n_interactions)
    for reason, count in data.dropped.items():
        logger.info("%s: dropped %d %s", data.name or "data", count, reason)


@dataclass
class LeaveOneOutSplit:
    """Per-user leave-one-out split: ``users[i]`` owns ``train[i]``, ``valid[i]``, ``test[i]``.

    A split given with the data (``given=True``, from RecBole's pre-split files) is kept
    exactly as written: ``valid`` and ``test`` are the files' ``(history, target)`` rows in file
    order (their users in ``valid_users``/``test_users``), ``train_pairs`` the training file's
    rows (each one example, its loss at the target only; users in ``train_pair_users``), and
    ``train[i]`` user ``users[i]``'s
    longest training history, for statistics and baselines.
    """

    users: list[Hashable]
    train: list[list[int]]
    valid: list[tuple[list[int], int]]
    test: list[tuple[list[int], int]]
    given: bool = False
    train_pairs: list[tuple[list[int], int]] | None = None
    train_pair_users: list[Hashable] | None = None
    valid_users: list[Hashable] | None = None
    test_users: list[Hashable] | None = None


def leave_one_out(data: InteractionData, skip_short: bool = False) -> LeaveOneOutSplit:
    """Last item is the test target, the one before it the validation target (RecBole LOO).

    Validation and test histories are the whole preceding sequence, so the test history
    contains the validation target. Users with fewer than 3 items raise `DataError` unless
    ``skip_short`` drops them. Data that came with its own split (``data.split``) gets that
    split back unchanged: a split the user brings is used as is, never re-derived.
    """
    if data.split is not None:
        logger.info("%s: using the train/valid/test split given with the data",
                    data.name or "data")
        return data.split
    split = LeaveOneOutSplit([], [], [], [])
    for user, seq in data.sequences.items():
        if len(seq) < 3:
            if skip_short:
                continue
            raise DataError(f"user {user!r} has {len(seq)} items; leave-one-out needs >= 3 "
                            "(pass skip_short=True to leave such users out)")
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
    Negatives are drawn with replacement; 0 in ``history`` is padding. An id outside
    ``0..n_items`` in ``history`` is a `DataError` (it would otherwise corrupt the count of
    items left to sample from).
    """
    batch = history.size(0)
    if n_items < 1:
        raise ConfigError(f"n_items must be >= 1, got {n_items}")
    if history.numel() and (int(history.min()) < 0 or int(history.max()) > n_items):
        bad = history[(history < 0) | (history > n_items)]
        raise DataError(
            f"history holds item id(s) {sorted(set(bad.tolist()))[:5]} outside 0..{n_items} "
            f"(n_items={n_items}, 0 = padding): the ids and n_items disagree (another data set, "
            "raw ids instead of indices, or a stale n_items)"
        )
    hist = history.sort(dim=1).values
    distinct = (hist != PAD).sum(1) - ((hist[:, 1:] == hist[:, :-1]) & (hist[:, 1:] != PAD)).sum(1)
    if batch and int(distinct.max()) >= n_items:
        row = int(distinct.argmax())
        raise DataError(
            f"row {row}'s history covers all {n_items} items, so no negative can be sampled "
            "for it; drop such users or use in-batch negatives (num_negatives=0)"
        )
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


_FROM_PAIRS: tuple[list[int], ...] = ()  # from_pairs fills the examples itself


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
            raise ConfigError(f"max_len must be >= 1, got {max_len}")
        if sampling not in SAMPLINGS:
            raise ConfigError(f"sampling={sampling!r} is not one of {list(SAMPLINGS)}")
        if stride is not None and (stride < 1 or sampling != "windows"):
            raise ConfigError(f"stride must be >= 1 and needs sampling='windows', got stride="
                              f"{stride} with sampling={sampling!r}")
        if max_windows is not None and max_windows < 1:
            raise ConfigError(f"max_windows must be >= 1 or None, got {max_windows}")
        self.sequences = [list(s) for s in train_sequences if len(s) >= 2]
        self.max_len = max_len
        self.sampling = sampling
        step = {"windows": stride or max_len, "prefixes": 1}.get(sampling)
        self.windows: list[tuple[int, int]] = []  # (sequence index, end position, exclusive)
        self.pairs: list[tuple[list[int], int]] | None = None
        for i, seq in enumerate(self.sequences):
            ends = range(len(seq), 1, -step) if step else [len(seq)]
            self.windows.extend((i, end) for end in list(ends)[:max_windows])
        if not self.windows and train_sequences is not _FROM_PAIRS:
            raise DataError("no training examples: every training sequence has fewer than 2 "
                            "items, so there is no next-item pair to learn from")

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[Sequence[int], int]], max_len: int) -> TrainDataset:
        """One example per given ``(history, target)`` row, its loss at the target only (the
        other positions get target 0, which the collator masks): a pre-split training file used
        exactly as written, as RecBole trains on it."""
        dataset = cls(_FROM_PAIRS, max_len)
        dataset.pairs = [(list(h), int(t)) for h, t in pairs if len(h) >= 1]
        if not dataset.pairs:
            raise DataError("no training examples: every given training row has an empty "
                            "history, so there is no next-item pair to learn from")
        return dataset

    @classmethod
    def for_split(cls, split: LeaveOneOutSplit, max_len: int, **kwargs: Any) -> TrainDataset:
        """`from_pairs` for a split given with the data (``split.train_pairs``), else windows
        of ``split.train`` (``kwargs``: ``sampling``, ``stride``, ``max_windows``)."""
        if split.train_pairs is not None:
            return cls.from_pairs(split.train_pairs, max_len)
        return cls(split.train, max_len, **kwargs)

    def __len__(self) -> int:
        return len(self.pairs) if self.pairs is not None else len(self.windows)

    def __getitem__(self, index: int) -> TrainExample:
        if self.pairs is not None:
            history, target = self.pairs[index]
            window = history[-self.max_len :]
            return TrainExample(window, [PAD] * (len(window) - 1) + [target], [*history, target])
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
    training). ``num_negatives=0`` (what `TransRec` takes for in-batch sampled softmax) samples
    nothing: ``negative_ids`` is then ``[B, L, 0]``.
    """

    def __init__(
        self,
        n_items: int,
        max_len: int,
        num_negatives: int = 1,
        seed: int = 0,
        exclude_items: Iterable[int] = (),
    ) -> None:
        if num_negatives < 0:
            raise ConfigError(f"num_negatives must be >= 0, got {num_negatives}")
        self.exclude_items = sorted(set(exclude_items))
        if any(not 1 <= i <= n_items for i in self.exclude_items[:1] + self.exclude_items[-1:]):
            raise ConfigError(f"exclude_items must be item indices in 1..{n_items}")
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
        if self.num_negatives:
            history = pad_right([[*ex.history, *self.exclude_items] for ex in batch])
            negatives = sample_negatives(
                history, self.n_items, (self.max_len, self.num_negatives), self.generator
            )
            negatives.masked_fill_(~mask.unsqueeze(-1), PAD)
        else:
            negatives = torch.zeros(len(batch), self.max_len, 0, dtype=torch.long)
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
            raise ConfigError(f"max_len must be >= 1, got {max_len}")
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


def right_align(input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Token rows with their real tokens first (order kept) and padding after, whatever side the
    tokenizer padded on: pooling, truncation to the longest row and positions all read tokens
    from the left, so a left-padded table (many decoder tokenizers) would pool padding."""
    real = attention_mask.bool()
    if not bool((real[:, 1:] & ~real[:, :-1]).any()):  # already right-padded
        return input_ids, attention_mask
    order = (~real).to(torch.uint8).sort(dim=1, stable=True).indices
    return input_ids.gather(1, order), attention_mask.gather(1, order)


def refuse_identical_items(features: Tensor, what: str) -> None:
    """Refuse an item feature table ``[n_items + 1, ...]`` whose real items (rows 1..) are all
    the same (e.g. every text empty because the text file was not matched): a content encoder
    would give every item one vector, all items would tie, and training would run to a "best
    epoch" that ranks nothing. ID models are not affected."""
    items = features[1:].reshape(features.size(0) - 1, -1)
    if items.size(0) >= 2 and bool((items == items[:1]).all()):
        raise DataError(
            f"all {items.size(0)} items have the same {what} (e.g. every text empty because the "
            "item file was not matched): their embeddings would all be equal and tie; check the "
            "item table and its id column, or use an ID item encoder")


def tokenize_item_texts(
    texts: Sequence[str], tokenizer: Any, max_length: int = 30
) -> dict[str, Tensor]:
    """Tokenize every item text once into ``[n_items + 1, max_length]`` tensors.

    ``texts[0]`` must be ``""`` (the padding item, as in ``InteractionData.item_texts``): this
    catches an off-by-one table. Row 0 then holds only special tokens, so a text encoder still
    gets a non-empty attention mask for it; its embedding is never ranked.
    """
    if not texts or texts[0] != "":
        raise DataError("texts[0] must be '' (the padding item); pass data.item_texts")
    ids, mask = tokenize_texts(tokenizer, texts, max_length)  # the encoder's own cut
    return {"input_ids": ids, "attention_mask": mask}
