"""Tests for interaction data, leave-one-out, batching and negative sampling."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from adarec.errors import ConfigError, DataError
from adarec.rec.data import (
    EvalCollator,
    EvalDataset,
    InteractionData,
    TrainCollator,
    TrainDataset,
    leave_one_out,
    pad_left,
    sample_negatives,
    tokenize_item_texts,
)


def _data() -> InteractionData:
    rows = [
        ("u1", "a", 3),
        ("u2", "c", 1),
        ("u1", "b", 1),
        ("u1", "c", 2),
        ("u1", "d", 3),
        ("u2", "a", 2),
        ("u2", "e", 3),
        ("u3", "z", 1),
    ]
    texts = {"a": "A", "b": "B", "c": None, "z": "Z"}
    return InteractionData.from_interactions(rows, texts, min_user_interactions=3, name="toy")


def test_from_interactions_sorts_stably_filters_and_reindexes() -> None:
    data = _data()
    assert list(data.sequences) == ["u1", "u2"]  # u3 has 1 interaction
    # item index order = first appearance in the rows, among kept users; "z" is gone
    assert data.item_ids == [None, "a", "c", "b", "d", "e"]
    assert data.n_items == 5
    # u1: b(1) c(2) a(3) d(3): the tie at t=3 keeps file order (a before d)
    assert data.sequences["u1"] == [3, 2, 1, 4]
    assert data.sequences["u2"] == [2, 1, 5]
    assert data.item_texts == ["", "A", "", "B", "", ""]
    assert data.n_users == 2 and data.n_interactions == 7 and data.name == "toy"


def test_interaction_data_validates_tables() -> None:
    with pytest.raises(ValueError, match="n_items"):
        InteractionData({"u": [1]}, n_items=2, item_ids=[None, 1], item_texts=["", "x"])
    with pytest.raises(ValueError, match="outside"):
        InteractionData({"u": [3]}, n_items=1, item_ids=[None, 1], item_texts=["", "x"])


def test_leave_one_out() -> None:
    data = InteractionData(
        {"u": [1, 2, 3, 4, 5], "v": [5, 4, 3]}, 5, [None, *"abcde"], ["", *"abcde"]
    )
    split = leave_one_out(data)
    assert split.users == ["u", "v"]
    assert split.train == [[1, 2, 3], [5]]
    assert split.valid == [([1, 2, 3], 4), ([5], 4)]
    assert split.test == [([1, 2, 3, 4], 5), ([5, 4], 3)]


def test_leave_one_out_short_users() -> None:
    data = InteractionData({"u": [1, 2], "v": [1, 2, 3]}, 3, [None, 1, 2, 3], ["", "", "", ""])
    with pytest.raises(ValueError, match="'u' has 2 items"):
        leave_one_out(data)
    assert leave_one_out(data, skip_short=True).users == ["v"]


def test_pad_left_truncates_to_most_recent() -> None:
    out = pad_left([[1, 2, 3, 4, 5], [7], []], 3)
    assert out.tolist() == [[3, 4, 5], [0, 0, 7], [0, 0, 0]]
    assert out.dtype == torch.long


def test_train_dataset_windows_and_shapes() -> None:
    ds = TrainDataset([[1, 2, 3, 4, 5, 6], [2, 3], [9]], max_len=3, sampling="last")
    assert len(ds) == 2  # [9] has no next-item pair
    ex = ds[0]
    assert ex.input_ids == [3, 4, 5] and ex.target_ids == [4, 5, 6]
    assert ex.history == [1, 2, 3, 4, 5, 6]
    batch = TrainCollator(n_items=20, max_len=3, num_negatives=2, seed=1)([ds[0], ds[1]])
    assert batch["input_ids"].tolist() == [[3, 4, 5], [0, 0, 2]]
    assert batch["target_ids"].tolist() == [[4, 5, 6], [0, 0, 3]]
    assert batch["mask"].tolist() == [[True] * 3, [False, False, True]]
    assert batch["negative_ids"].shape == (2, 3, 2)
    assert (batch["negative_ids"][1, :2] == 0).all()  # padding positions get padding
    neg = batch["negative_ids"]
    assert not torch.isin(neg[0], torch.tensor([0, 1, 2, 3, 4, 5, 6])).any()
    assert not torch.isin(neg[1, 2], torch.tensor([0, 2, 3])).any()


def test_train_dataset_stride_windows() -> None:
    seq = list(range(1, 11))  # 10 items
    ds = TrainDataset([seq, [7, 8]], max_len=3, stride=3)
    got = [(ex.input_ids, ex.target_ids) for ex in ds]
    assert got == [
        ([7, 8, 9], [8, 9, 10]),  # ends at 10 (the default window)
        ([4, 5, 6], [5, 6, 7]),  # ends 3 earlier
        ([1, 2, 3], [2, 3, 4]),  # the next end (1) has no next-item pair
        ([7], [8]),
    ]
    assert all(ex.history == seq for ex in list(ds)[:3])
    assert len(TrainDataset([seq], max_len=3, stride=3, max_windows=2)) == 2
    assert [ex.input_ids for ex in TrainDataset([seq], 3, sampling="last")] == [[7, 8, 9]]
    default = [(ex.input_ids, ex.target_ids) for ex in TrainDataset([seq], 3)]
    assert default == got[:3]  # default: windows every max_len items, all targets once


def test_train_dataset_prefixes_one_target_each() -> None:
    seq = [5, 6, 7, 8, 9]
    ds = TrainDataset([seq, [1]], max_len=3, sampling="prefixes")
    got = [(ex.input_ids, ex.target_ids) for ex in ds]
    assert got == [
        ([6, 7, 8], [0, 0, 9]),
        ([5, 6, 7], [0, 0, 8]),
        ([5, 6], [0, 7]),
        ([5], [6]),
    ]
    batch = TrainCollator(20, 3, seed=0)([ds[0], ds[3]])
    assert batch["mask"].tolist() == [[False, False, True], [False, False, True]]
    assert batch["target_ids"][batch["mask"]].tolist() == [9, 6]
    assert len(TrainDataset([seq], 3, sampling="prefixes", max_windows=2)) == 2


@given(st.lists(st.lists(st.integers(1, 50), min_size=0, max_size=40), max_size=6),
       st.integers(1, 12), st.sampled_from(["windows", "prefixes"]))
def test_train_dataset_every_target_exactly_once(
    seqs: list[list[int]], max_len: int, sampling: str
) -> None:
    """The default windows and the prefixes both make every interaction but a user's first a
    target exactly once per epoch (the collator's mask is what the loss sees)."""
    assume(any(len(s) >= 2 for s in seqs))  # none: refused (test_select_users)
    ds = TrainDataset(seqs, max_len, sampling=sampling)
    seen: list[tuple[int, int]] = []
    for (i, end), ex in zip(ds.windows, ds, strict=True):
        start = max(0, end - max_len - 1)
        positions = range(start + 1, end)
        seen += [(i, t) for t, target in zip(positions, ex.target_ids, strict=True) if target]
        assert all(ds.sequences[i][t] == target
                   for t, target in zip(positions, ex.target_ids, strict=True) if target)
    expected = [(i, t) for i, s in enumerate(ds.sequences) for t in range(1, len(s))]
    assert sorted(seen) == expected


@given(st.lists(st.lists(st.integers(1, 50), min_size=0, max_size=40), max_size=6),
       st.integers(1, 12), st.integers(1, 15))
def test_train_dataset_windows_cover_every_target(
    seqs: list[list[int]], max_len: int, stride: int
) -> None:
    """Windows are contiguous slices no longer than ``max_len``; with ``stride <= max_len``
    every next-item target of every sequence is in some window."""
    assume(any(len(s) >= 2 for s in seqs))  # none: refused (test_select_users)
    ds = TrainDataset(seqs, max_len, stride=stride)
    for ex in ds:
        assert 1 <= len(ex.input_ids) == len(ex.target_ids) <= max_len
        assert ex.input_ids[1:] == ex.target_ids[:-1]
    kept = [s for s in seqs if len(s) >= 2]
    covered: set[tuple[int, int]] = set()
    for i, end in ds.windows:
        start = max(0, end - max_len - 1)
        assert ds[ds.windows.index((i, end))].target_ids == kept[i][start + 1 : end]
        covered |= {(i, t) for t in range(start + 1, end)}
    if stride <= max_len:
        assert covered == {(i, t) for i, s in enumerate(kept) for t in range(1, len(s))}


def test_train_dataset_rejects_bad_stride() -> None:
    with pytest.raises(ValueError, match="stride"):
        TrainDataset([[1, 2]], 3, stride=0)
    with pytest.raises(ValueError, match="max_windows"):
        TrainDataset([[1, 2]], 3, stride=1, max_windows=0)
    with pytest.raises(ValueError, match="sampling"):
        TrainDataset([[1, 2]], 3, sampling="all")
    with pytest.raises(ValueError, match="stride"):
        TrainDataset([[1, 2]], 3, stride=2, sampling="prefixes")


def test_collator_never_draws_excluded_items() -> None:
    ds = TrainDataset([[1, 2, 3, 4]], max_len=3)
    out = TrainCollator(10, 3, 40, seed=0, exclude_items=[5, 6, 7])([ds[0]])
    neg = out["negative_ids"][out["mask"]]
    assert not torch.isin(neg, torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])).any()
    with pytest.raises(ValueError, match="exclude_items"):
        TrainCollator(10, 3, exclude_items=[11])


def test_collator_reproducible_by_seed() -> None:
    ds = TrainDataset([list(range(1, 30)), [3, 1, 2]], max_len=10)
    batch = [ds[0], ds[1]]
    a = TrainCollator(50, 10, 3, seed=7)
    b = TrainCollator(50, 10, 3, seed=7)
    first, second = a(batch)["negative_ids"], a(batch)["negative_ids"]
    assert torch.equal(first, b(batch)["negative_ids"])
    assert torch.equal(second, b(batch)["negative_ids"])
    assert not torch.equal(first, second)  # the stream moves on between batches
    assert not torch.equal(first, TrainCollator(50, 10, 3, seed=8)(batch)["negative_ids"])


def test_collator_in_dataloader_workers_is_reproducible() -> None:
    ds = TrainDataset([list(range(1, 9))] * 8, max_len=5)  # identical users

    def run() -> list[torch.Tensor]:
        torch.manual_seed(0)
        collate = TrainCollator(40, 5, seed=3)
        loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate, num_workers=2)
        return [b["negative_ids"] for _ in range(2) for b in loader]  # two epochs

    first, second = run(), run()
    assert all(torch.equal(x, y) for x, y in zip(first, second, strict=True))
    assert not torch.equal(first[0], first[1])  # worker 0 and worker 1 draw differently
    assert not torch.equal(first[0], first[4])  # and so do epochs


@settings(max_examples=60, deadline=None)
@given(
    histories=st.lists(
        st.lists(st.integers(1, 12), min_size=1, max_size=30), min_size=1, max_size=6
    ),
    seed=st.integers(0, 2**31 - 1),
    k=st.integers(1, 4),
)
def test_sampler_avoids_history_and_is_seeded(
    histories: list[list[int]], seed: int, k: int
) -> None:
    n_items = 13  # at least one item is free for every user
    ds = TrainDataset([[*h, h[0]] for h in histories], max_len=8)
    batch = [ds[i] for i in range(len(ds))]
    out = TrainCollator(n_items, 8, k, seed=seed)(batch)
    again = TrainCollator(n_items, 8, k, seed=seed)(batch)
    assert torch.equal(out["negative_ids"], again["negative_ids"])
    for row, ex in enumerate(batch):
        neg = out["negative_ids"][row][out["mask"][row]]
        assert ((neg >= 1) & (neg <= n_items)).all()
        assert not torch.isin(neg, torch.tensor(ex.history)).any()


def test_sampler_dense_history_falls_back_exactly() -> None:
    history = torch.arange(1, 1000).unsqueeze(0)  # only item 1000 is free
    gen = torch.Generator().manual_seed(0)
    neg = sample_negatives(history, 1000, (50, 2), gen, max_rounds=2)
    assert (neg == 1000).all()
    with pytest.raises(DataError, match="covers all 10 items"):
        sample_negatives(torch.arange(1, 11).unsqueeze(0), 10, (3,), gen)


def test_sampler_names_ids_above_n_items() -> None:
    """Regression (issue 15): ids above n_items were reported as "covers every item"."""
    history = torch.tensor([[1, 2, 0], [3, 15, 12]])
    with pytest.raises(DataError, match=r"\[12, 15\] outside 0..10") as err:
        sample_negatives(history, 10, (2,))
    assert "covers" not in str(err.value)
    with pytest.raises(DataError, match="outside"):
        sample_negatives(torch.tensor([[-1, 2]]), 10, (2,))


def test_eval_dataset_and_collator() -> None:
    ds = EvalDataset([([1, 2, 3, 4, 5], 6), ([7], 8)], max_len=3)
    assert ds[0].history_ids == [3, 4, 5] and ds[0].exclude_ids == [1, 2, 3, 4, 5]
    batch = EvalCollator(3)([ds[0], ds[1]])
    assert batch["history_ids"].tolist() == [[3, 4, 5], [0, 0, 7]]
    assert batch["target_ids"].tolist() == [6, 8]
    assert batch["exclude_ids"].tolist() == [[1, 2, 3, 4, 5], [7, 0, 0, 0, 0]]


def _tokenizer() -> Any:
    from transformers import BertTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "toy", "story", "(", ")", "1995", "."]
    return BertTokenizerFast(vocab={w: i for i, w in enumerate(words)})


def test_tokenize_item_texts() -> None:
    tok = _tokenizer()
    texts = ["", "Toy Story (1995).", "story " * 50]
    out = tokenize_item_texts(texts, tok, max_length=8)
    assert set(out) == {"input_ids", "attention_mask"}
    assert out["input_ids"].shape == out["attention_mask"].shape == (3, 8)
    assert out["attention_mask"][0].tolist() == [1, 1, 0, 0, 0, 0, 0, 0]  # [CLS] [SEP]
    assert out["attention_mask"][2].all()  # truncated to max_length
    assert out["input_ids"][1, :3].tolist() == [2, 5, 6]
    with pytest.raises(ValueError, match="padding item"):
        tokenize_item_texts(texts[1:], tok)


def test_collator_and_transrec_agree_on_zero_negatives() -> None:
    """TransRec takes num_negatives=0 (in-batch sampled softmax); the collator must too."""
    import tiny_transrec as helpers

    ds = TrainDataset(helpers.SEQS, helpers.L)
    batch = TrainCollator(helpers.N_ITEMS, helpers.L, 0)([ds[i] for i in range(len(ds))])
    assert batch["negative_ids"].shape == (len(ds), helpers.L, 0)
    model = helpers.text_model(loss="sampled_softmax", num_negatives=0)
    assert torch.isfinite(model.loss(batch))
    with pytest.raises(ConfigError, match="num_negatives must be >= 0"):
        TrainCollator(helpers.N_ITEMS, helpers.L, -1)
