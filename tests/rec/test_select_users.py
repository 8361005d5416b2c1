"""select_users / subsample_users key a split's rows on user ids, and empty training refuses."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adarec.errors import DataError
from adarec.rec import LeaveOneOutSplit, TrainDataset, select_users, subsample_users


def _given_split(order_valid: list[int], order_test: list[int]) -> LeaveOneOutSplit:
    """A given split whose valid/test files list users in other orders; user u's rows hold
    items 10*u + k so every row says whose it is."""
    users = sorted(set(order_valid))
    return LeaveOneOutSplit(
        users=users, train=[[10 * u + 1, 10 * u + 2] for u in users],
        valid=[([10 * u + 1], 10 * u + 2) for u in order_valid],
        test=[([10 * u + 2], 10 * u + 3) for u in order_test], given=True,
        train_pairs=[([10 * u + 1], 10 * u + 2) for u in users], train_pair_users=list(users),
        valid_users=list(order_valid), test_users=list(order_test))


def _owner(row: tuple[list[int], int]) -> int:
    return row[1] // 10


def test_given_split_rows_follow_their_users() -> None:
    split = _given_split([3, 1, 2], [2, 3, 1])
    sub = select_users(split, [1, 3])
    assert sub.users == [1, 3]
    assert sorted(_owner(r) for r in sub.valid) == [1, 3] and sub.valid_users == [3, 1]
    assert [_owner(r) for r in sub.test] == sub.test_users == [3, 1]
    assert sub.train_pairs is not None and [_owner(r) for r in sub.train_pairs] == [1, 3]


def test_unknown_user_refused() -> None:
    with pytest.raises(DataError, match="not in the split"):
        select_users(_given_split([1, 2], [1, 2]), [7])


@settings(max_examples=50, deadline=None)
@given(st.permutations(list(range(1, 7))), st.permutations(list(range(1, 7))),
       st.floats(0.1, 1.0), st.integers(0, 5))
def test_subsample_keeps_each_users_own_rows(pv: list[int], pt: list[int], frac: float,
                                             seed: int) -> None:
    sub = subsample_users(_given_split(list(pv), list(pt)), frac, seed)
    kept = set(sub.users)
    assert sub.valid_users is not None and sub.test_users is not None
    assert [_owner(r) for r in sub.valid] == sub.valid_users and set(sub.valid_users) == kept
    assert [_owner(r) for r in sub.test] == sub.test_users and set(sub.test_users) == kept
    assert sub.train_pairs is not None and {_owner(r) for r in sub.train_pairs} == kept


def test_empty_training_refused() -> None:
    with pytest.raises(DataError, match="no training examples"):
        TrainDataset([[1], [2], []], max_len=5)
    with pytest.raises(DataError, match="no training examples"):
        TrainDataset.from_pairs([([], 3)], max_len=5)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.integers(1, 9), max_size=1), max_size=6),
       st.sampled_from(["windows", "prefixes", "last"]))
def test_no_next_item_pair_always_refused(seqs: list[list[int]], sampling: str) -> None:
    with pytest.raises(DataError, match="no training examples"):
        TrainDataset(seqs, max_len=3, sampling=sampling)


def test_given_rows_without_user_ids_refused() -> None:
    split = _given_split([1, 2], [1, 2])
    split.valid_users = None
    with pytest.raises(DataError, match="valid rows have no user ids"):
        select_users(split, [1])
