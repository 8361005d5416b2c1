"""The decoupled side network (method "side") on plain Hugging Face models."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers as tf
from tiny_models import VISION, build, inputs, output

import adarec
from adarec.adapters.side import SideNetwork, SideOptions, pool_hidden, side_networks, side_taps
from adarec.errors import SpecError, UnsupportedModuleError
from adarec.inject import count_forward_hooks

ARCHS = ["bert", "roberta", "distilbert", "electra", "deberta-v2", "mpnet", "vit", "deit",
         "dinov2", "clip_vision"]


def side_spec(**extra: object) -> adarec.AdapterSpec:
    return adarec.AdapterSpec.preset("side", bottleneck=8,
                                     **{f"side_{k}": v for k, v in extra.items()})


def bert(layers: int = 4) -> tf.BertModel:
    torch.manual_seed(0)
    cfg = tf.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=layers,
                        num_attention_heads=4, intermediate_size=64, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    return tf.BertModel(cfg).eval()


def the_side(model: torch.nn.Module) -> SideNetwork:
    (side,) = side_networks(model, active_only=False)
    return side


def perturb(side: SideNetwork) -> None:
    with torch.no_grad():
        for p in side.parameters():
            p.add_(torch.randn_like(p) * 0.3)


@pytest.mark.parametrize(("n", "stride", "expected"), [
    (6, 2, [1, 3, 5]), (12, 2, [1, 3, 5, 7, 9, 11]), (2, 2, [1]), (5, 1, [0, 1, 2, 3, 4]),
    (6, 3, [2, 5]),
])
def test_default_taps_every_other_block_from_the_top(n: int, stride: int,
                                                     expected: list[int]) -> None:
    assert side_taps(None, n, stride) == expected
    assert side_taps((0, -1), n, stride) == [0, n - 1]


@pytest.mark.parametrize("arch", ARCHS)
def test_identity_at_init_and_bitwise_eject(arch: str) -> None:
    """``up`` starts at zero: the model's output is unchanged until the side network trains;
    ejecting restores keys, hooks, flags and outputs exactly."""
    model = build(arch)
    batch = inputs(arch)
    keys, ref = list(model.state_dict()), output(model, batch)
    adarec.inject_adapters(model, side_spec())
    torch.testing.assert_close(output(model, batch), ref, atol=0, rtol=0)
    perturb(the_side(model))
    assert not torch.allclose(output(model, batch), ref)
    adarec.eject_adapters(model)
    assert list(model.state_dict()) == keys and count_forward_hooks(model) == 0
    assert all(p.requires_grad for p in model.parameters())
    torch.testing.assert_close(output(model, batch), ref, atol=0, rtol=0)


def test_parameter_count_matches_closed_form() -> None:
    """k taps, width r, hidden H, expansion e: k(Hr + r) + k + k(2r + 2er^2 + er + r) + 2r
    + rH + H (downs, gates, pre-LN MLP blocks, final norm, up)."""
    model = bert(6)
    adarec.inject_adapters(model, side_spec(expansion=2))
    k, r, h, e = 3, 8, 32, 2
    expected = k * (h * r + r) + k + k * (2 * r + 2 * e * r * r + e * r + r) + 2 * r + r * h + h
    assert sum(p.numel() for p in adarec.adapter_parameters(model).values()) == expected
    assert sorted(n for n, p in model.named_parameters() if p.requires_grad) == sorted(
        adarec.adapter_parameters(model))


def test_generic_output_is_pooled_final_plus_correction() -> None:
    """Called directly, the model returns last_hidden_state + correction on every token, so a
    [CLS] or masked-mean read-out is pool(h_final) + correction, with the correction computed
    from the tapped blocks' pooled outputs."""
    for pooling in ("cls", "mean"):
        model = bert(4)
        batch = inputs("bert")
        ref = model(**batch, output_hidden_states=True)
        adarec.inject_adapters(model, side_spec(pooling=pooling))
        side = the_side(model)
        perturb(side)
        mask = batch["attention_mask"]
        states = [pool_hidden(ref.hidden_states[s + 1], mask, pooling) for s in side.slots]
        expected = pool_hidden(ref.last_hidden_state, mask, pooling) + side.correction(states)
        got = pool_hidden(output(model, batch), mask, pooling)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_no_gradient_reaches_the_backbone() -> None:
    """The tapped states carry no autograd history: the only leaves are the side network's."""
    model = bert(4)
    adarec.inject_adapters(model, side_spec())
    side = the_side(model)
    perturb(side)
    out = output(model, inputs("bert"))
    leaves, seen, todo = set(), set(), [out.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if type(fn).__name__ == "AccumulateGrad":
            leaves.add(id(fn.variable))
        todo.extend(f for f, _ in fn.next_functions)
    assert leaves == {id(p) for p in side.parameters()}


def test_tokens_mode_attends_only_to_real_tokens() -> None:
    model = bert(4)
    adarec.inject_adapters(model, side_spec(states="tokens", heads=2))
    perturb(the_side(model))
    batch = inputs("bert")
    mask = batch["attention_mask"]
    a = pool_hidden(output(model, batch), mask, "cls")
    batch["input_ids"] = batch["input_ids"].clone()
    batch["input_ids"][0, -2:] = 7  # change only padded tokens of row 0
    b = pool_hidden(output(model, batch), mask, "cls")
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_named_sets_switch_and_compose() -> None:
    model = bert(4)
    batch = inputs("bert")
    ref = output(model, batch)
    adarec.inject_adapters(model, side_spec(), "a")
    adarec.inject_adapters(model, side_spec(stride=1), "b")
    for side in side_networks(model, active_only=False):
        perturb(side)
    adarec.set_active_adapters(model, "a")
    only_a = output(model, batch)
    adarec.set_active_adapters(model, ["a", "b"])
    both = output(model, batch)
    adarec.set_active_adapters(model, "b")
    only_b = output(model, batch)
    torch.testing.assert_close(both - ref, (only_a - ref) + (only_b - ref), atol=1e-5, rtol=1e-5)
    with adarec.adapters_disabled(model):
        torch.testing.assert_close(output(model, batch), ref, atol=0, rtol=0)
    adarec.eject_adapters(model, "b")
    assert [s.set_name for s in side_networks(model, active_only=False)] == ["a"]


def test_deepcopy_and_state_dict_round_trip() -> None:
    model = bert(4)
    adarec.inject_adapters(model, side_spec())
    perturb(the_side(model))
    batch = inputs("bert")
    twin = copy.deepcopy(model)
    torch.testing.assert_close(output(twin, batch), output(model, batch), atol=0, rtol=0)
    fresh = bert(4)
    adarec.inject_adapters(fresh, side_spec())
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(output(fresh, batch), output(model, batch), atol=0, rtol=0)


def test_causal_models_need_last_or_mean_pooling_and_bad_options_are_refused() -> None:
    """On a decoder the first token has seen nothing: side_pooling='cls' is refused there, the
    last real token (or the mean) is read instead."""
    with pytest.raises(UnsupportedModuleError, match="causal: its first token has seen nothing"):
        adarec.inject_adapters(build("gpt2"), side_spec())
    for pooling in ("last", "mean"):
        model = build("gpt2")
        adarec.inject_adapters(model, side_spec(pooling=pooling))
        assert the_side(model).options.pooling == pooling
    for bad, field in (({"states": "both"}, "states"), ({"stride": 0}, "stride"),
                       ({"gate_temperature": -1}, "gate_temperature"), ({"colour": 1}, "colour")):
        with pytest.raises(SpecError, match=f"side_{field}"):
            side_spec(**bad)
    with pytest.raises(SpecError, match="side_heads"):
        side_spec(states="tokens", heads=3)
    assert SideOptions.from_spec(side_spec(stride=3)).stride == 3
    with pytest.raises(SpecError, match="layers"):
        adarec.inject_adapters(bert(2), side_spec().replace(layers=(5,)))


@pytest.mark.parametrize("arch", sorted(VISION & set(ARCHS)))
def test_vision_models_with_final_norm(arch: str) -> None:
    """ViT-like models apply a norm after the last block; the correction is added after it."""
    model = build(arch)
    batch = inputs(arch)
    ref = output(model, batch)
    adarec.inject_adapters(model, side_spec())
    perturb(the_side(model))
    delta = output(model, batch) - ref
    torch.testing.assert_close(delta, delta[:, :1].expand_as(delta), atol=1e-5, rtol=1e-5)
