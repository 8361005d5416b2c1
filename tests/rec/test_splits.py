from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from adarec.rec.data import InteractionData, leave_one_out
from adarec.rec.splits import cold_item_split, subsample_users


def _data(seqs: list[list[int]], n_items: int) -> InteractionData:
    return InteractionData({f"u{i}": s for i, s in enumerate(seqs)}, n_items,
                           [None, *range(1, n_items + 1)], [""] * (n_items + 1))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.integers(1, 30), min_size=3, max_size=25), min_size=1, max_size=20),
       st.floats(0.05, 0.9), st.integers(0, 1000))
def test_cold_items_never_reach_training_and_every_query_lands_once(
    seqs: list[list[int]], fraction: float, seed: int
) -> None:
    split = leave_one_out(_data(seqs, 30))
    cold = cold_item_split(split, 30, fraction, seed)
    assert len(cold.cold_items) == max(1, round(fraction * 30))
    assert cold.cold_items == sorted(set(cold.cold_items))
    cold_set = set(cold.cold_items)
    assert not any(i in cold_set for seq in cold.train for i in seq)
    assert [[i for i in s if i not in cold_set] for s in split.train] == cold.train
    for both, cold_pairs, warm_pairs, users in (
        (split.valid, cold.valid, cold.warm_valid, cold.users_valid),
        (split.test, cold.test, cold.warm_test, cold.users_test),
    ):
        assert all(t in cold_set for _, t in cold_pairs)
        assert all(t not in cold_set for _, t in warm_pairs)
        assert len(cold_pairs) + len(warm_pairs) == len(both)
        assert [both[u] for u in users] == [(list(h), t) for h, t in cold_pairs]
    mask = cold.is_cold(30)
    assert mask.sum() == len(cold_set) and not mask[0]
    assert cold_item_split(split, 30, fraction, seed).cold_items == cold.cold_items


def test_cold_split_is_seeded_and_checks_its_input() -> None:
    split = leave_one_out(_data([list(range(1, 21))] * 3, 20))
    assert cold_item_split(split, 20, 0.2, 0).cold_items != cold_item_split(split, 20, 0.2, 1
                                                                            ).cold_items
    with pytest.raises(ValueError, match="fraction"):
        cold_item_split(split, 20, 1.0)
    with pytest.raises(ValueError, match="n_items"):
        cold_item_split(split, 10, 0.2)


def test_subsample_users_keeps_whole_users_in_order() -> None:
    seqs = [[1 + i, 2 + i, 3 + i, 4] for i in range(10)]
    split = leave_one_out(_data(seqs, 20))
    small = subsample_users(split, 0.3, seed=4)
    assert len(small.users) == 3
    rows = [split.users.index(u) for u in small.users]
    assert rows == sorted(rows)
    for u, train, valid, test in zip(small.users, small.train, small.valid, small.test,
                                     strict=True):
        i = split.users.index(u)
        assert (train, valid, test) == (split.train[i], split.valid[i], split.test[i])
    assert subsample_users(split, 0.3, seed=4).users == small.users
    assert len(subsample_users(split, 0.01).users) == 1
    assert subsample_users(split, 1.0).users == split.users
    with pytest.raises(ValueError, match="fraction"):
        subsample_users(split, 0.0)
    assert torch.is_tensor(torch.tensor(rows))
