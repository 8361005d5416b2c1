"""The base-model fingerprint covers the whole HF config minus `CONFIG_EXEMPT`: a base with the
same weights but another output-relevant config value is refused; an exempt change loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import adarec
from adarec.errors import CheckpointError

CFG = dict(vocab_size=20, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
           intermediate_size=32, max_position_embeddings=16, attn_implementation="eager")
CHANGED = [("layer_norm_eps", 1e-3), ("hidden_act", "relu"), ("hidden_dropout_prob", 0.3),
           ("attention_probs_dropout_prob", 0.0), ("type_vocab_size", 2), ("pad_token_id", 1),
           ("is_decoder", True)]
EXEMPT = [("initializer_range", 0.5), ("output_hidden_states", True), ("return_dict", False),
          ("attn_implementation", "sdpa"), ("use_cache", False)]


def _base(**changes: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return tf.BertModel(tf.BertConfig(**{**CFG, **changes})).eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = adarec.inject_adapters(_base(), "houlsby")
    return adarec.save_adapters(model, tmp_path_factory.mktemp("fp") / "ckpt")


def _same_weights(**changes: object) -> torch.nn.Module:
    model = _base(**changes)
    model.load_state_dict(_base().state_dict())
    return model


def test_other_layer_norm_eps_same_weights_is_refused(saved: Path) -> None:
    with pytest.raises(CheckpointError, match=r"config\.layer_norm_eps: checkpoint 1e-12"):
        adarec.load_adapters(_same_weights(layer_norm_eps=1e-3), saved)


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(change=st.sampled_from([c for c in CHANGED if CFG.get(c[0]) != c[1]
                               and c != ("type_vocab_size", 2)]),
       exempt=st.sampled_from(EXEMPT))
def test_config_fields(saved: Path, change: tuple[str, object], exempt: tuple[str, object]) -> None:
    name, value = change
    with pytest.raises(CheckpointError, match=rf"config\.{name}"):
        adarec.load_adapters(_same_weights(**{name: value}), saved)
    model = _same_weights(**dict([exempt]))
    assert adarec.load_adapters(model, saved).ok


def test_exempt_attention_implementation_agrees_within_tolerance() -> None:
    ids = torch.tensor([[2, 5, 7, 11, 3, 0]])
    a = _base()(input_ids=ids).last_hidden_state
    b = _same_weights(attn_implementation="sdpa")(input_ids=ids).last_hidden_state
    assert torch.allclose(a, b, atol=1e-5)
