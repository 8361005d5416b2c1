"""bf16 autocast training of TransRec with adapters (tests/test_precision.py covers the bare
transformers; here the whole recommender: item encoder, DTL, user encoder and the losses)."""

from __future__ import annotations

import pytest
import torch
from grad_checks import assert_fp32_grads
from tiny_transrec import batch, text_model

import adarec


@pytest.mark.parametrize("loss", ["bce", "sampled_softmax", "full_softmax"])
def test_bf16_autocast_transrec_training_step(loss: str) -> None:
    model = text_model(loss=loss, num_negatives=2)
    model.inject_adapters(item="houlsby")
    model.train()
    params = adarec.adapter_parameters(model.item_encoder)
    assert params
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = model.loss(batch())
    assert torch.isfinite(value)
    value.backward()
    assert_fp32_grads(params)
