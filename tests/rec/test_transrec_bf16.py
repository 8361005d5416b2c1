"""bf16 autocast training of TransRec with adapters (tests/test_precision.py covers the bare
transformers; here the whole recommender: item encoder, DTL, user encoder and the losses)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import adarec

_spec = importlib.util.spec_from_file_location(
    "transrec_helpers", Path(__file__).with_name("test_transrec.py")
)
assert _spec and _spec.loader
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)
text_model, batch = helpers.text_model, helpers.batch


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
    for name, p in params.items():
        assert p.dtype == torch.float32, name
        assert p.grad is not None and p.grad.dtype == torch.float32, name
        assert torch.isfinite(p.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for p in params.values() if p.grad is not None)
