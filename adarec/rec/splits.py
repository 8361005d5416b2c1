"""Evaluation settings beyond warm leave-one-out: cold items and small target data.

Both start from a `LeaveOneOutSplit` (`adarec.rec.data.leave_one_out`), so every setting keeps
the same targets and histories and differs only in what training may see.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from adarec.errors import ConfigError, DataError
from adarec.rec.data import LeaveOneOutSplit

Pairs = list[tuple[list[int], int]]


@dataclass
class ColdItemSplit:
    """A leave-one-out split with some items held out of training entirely.

    ``train`` is every user's training sequence with the cold items removed; ``valid`` and
    ``test`` are the pairs whose target is a cold item (the cold-start queries), ``warm_valid``
    and ``warm_test`` the others. Histories are left as they are: a cold item the user met
    before the target stays in the history, as it would in a live system, and only a model that
    can encode an unseen item (from its text, say) makes use of it. ``users_valid`` and
    ``users_test`` hold the positions in the source split's ``users`` of each pair.
    """

    cold_items: list[int]
    train: list[list[int]]
    valid: Pairs
    test: Pairs
    warm_valid: Pairs
    warm_test: Pairs
    users_valid: list[int]
    users_test: list[int]

    def is_cold(self, n_items: int) -> torch.Tensor:
        """Bool mask ``[n_items + 1]``: True for the cold items (row 0, the padding item, is
        False), e.g. to switch ID embeddings off for them."""
        mask = torch.zeros(n_items + 1, dtype=torch.bool)
        mask[torch.tensor(self.cold_items, dtype=torch.long)] = True
        return mask


def cold_item_split(
    split: LeaveOneOutSplit, n_items: int, fraction: float = 0.2, seed: int = 0
) -> ColdItemSplit:
    """Hold a seeded ``fraction`` of the items ``1..n_items`` (uniformly, whatever their
    popularity) out of training: their interactions leave every training sequence, and the
    validation/test queries whose target is one of them become the cold-start evaluation.

    Rank over all items for these queries (no candidate filtering): a model that never saw an
    item must still put it above the items it did see. Users left with fewer than 2 training
    items keep their (shorter) sequence; `adarec.rec.data.TrainDataset` skips those without a
    next-item pair.
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"fraction must be in (0, 1), got {fraction}")
    if n_items < 2:
        raise ConfigError(f"n_items must be >= 2, got {n_items}")
    n_cold = max(1, round(fraction * n_items))
    g = torch.Generator().manual_seed(seed)
    cold = sorted((torch.randperm(n_items, generator=g)[:n_cold] + 1).tolist())
    cold_set = set(cold)
    for pairs in (split.valid, split.test):
        for _, target in pairs:
            if not 1 <= target <= n_items:
                raise DataError(f"target {target} is outside 1..{n_items}: wrong n_items?")
    train = [[i for i in seq if i not in cold_set] for seq in split.train]

    def divide(pairs: Sequence[tuple[Sequence[int], int]]) -> tuple[Pairs, Pairs, list[int]]:
        cold_pairs, warm_pairs, users = [], [], []
        for u, (history, target) in enumerate(pairs):
            if target in cold_set:
                cold_pairs.append((list(history), target))
                users.append(u)
            else:
                warm_pairs.append((list(history), target))
        return cold_pairs, warm_pairs, users

    valid, warm_valid, users_valid = divide(split.valid)
    test, warm_test, users_test = divide(split.test)
    return ColdItemSplit(cold, train, valid, test, warm_valid, warm_test, users_valid, users_test)


def subsample_users(split: LeaveOneOutSplit, fraction: float, seed: int = 0) -> LeaveOneOutSplit:
    """A seeded ``fraction`` of the users (at least one), with all of their data: the
    "small target data" setting. Users keep their order in ``split``; a split given with the
    data keeps its rows by user id (`select_users`), training pairs included."""
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"fraction must be in (0, 1], got {fraction}")
    n = len(split.users)
    if n == 0:
        raise DataError("the split has no users")
    g = torch.Generator().manual_seed(seed)
    keep = sorted(torch.randperm(n, generator=g)[: max(1, round(fraction * n))].tolist())
    return select_users(split, [split.users[i] for i in keep])


def select_users(split: LeaveOneOutSplit, users: Iterable[Hashable]) -> LeaveOneOutSplit:
    """The split restricted to the given user **ids** (values of ``split.users``, not
    positions), every field kept: users stay in ``split``'s order, and a split given with the
    data keeps each user's own valid/test/training rows, matched by the user id stored beside
    each row (never by position, since the files may list users in another order). An id not
    in the split is a `DataError`: a silently smaller subset would be a wrong answer."""
    wanted = set(users)
    missing = wanted.difference(split.users)
    if missing:
        raise DataError(f"select_users: {len(missing)} user(s) not in the split, e.g. "
                        f"{next(iter(missing))!r}")
    rows = [i for i, u in enumerate(split.users) if u in wanted]
    kept_users = [split.users[i] for i in rows]
    kept_train = [split.train[i] for i in rows]
    if not split.given:
        return replace(split, users=kept_users, train=kept_train,
                       valid=[split.valid[i] for i in rows], test=[split.test[i] for i in rows])

    def keyed(pairs: list[Any] | None, owners: list[Hashable] | None, what: str) -> list[Any]:
        if pairs is None:
            return []
        if owners is None or len(owners) != len(pairs):
            raise DataError(f"select_users: the given split's {what} rows have no user ids "
                            "beside them, so they cannot be matched to users")
        return [p for p, u in zip(pairs, owners, strict=True) if u in wanted]

    return replace(
        split, users=kept_users, train=kept_train,
        valid=keyed(split.valid, split.valid_users, "valid"),
        test=keyed(split.test, split.test_users, "test"),
        valid_users=[u for u in split.valid_users or [] if u in wanted],
        test_users=[u for u in split.test_users or [] if u in wanted],
        train_pairs=(None if split.train_pairs is None
                     else keyed(split.train_pairs, split.train_pair_users, "training")),
        train_pair_users=(None if split.train_pair_users is None
                          else [u for u in split.train_pair_users if u in wanted]),
    )


__all__ = ["ColdItemSplit", "cold_item_split", "select_users", "subsample_users"]
