"""Families outside the layout table: placement found by tracing, checked against a hand-written
answer, then identity at initialisation, the parameter-count formula, residual-width placement
and a bitwise eject for a bottleneck method and LoRA."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from zoo_models import ZOO, batch, build, output

import adarec
from adarec import AdapterSpec, TargetNotFoundError
from adarec.inject import count_forward_hooks
from adarec.layouts import iter_blocks, layout_for

K = 8


@pytest.fixture(autouse=True)
def _quiet_transformers():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _perturb(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in adarec.adapter_parameters(model).values():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


def test_the_zoo_is_outside_the_table_and_wide() -> None:
    assert len(ZOO) >= 15
    kinds = {f.kind for f in ZOO.values()}
    assert {"text", "seq2seq", "vision", "audio", "features"} <= kinds
    for name in ZOO:
        assert layout_for(build(name)) is None, f"{name} is in the layout table"


@pytest.mark.parametrize("name", list(ZOO))
def test_trace_finds_what_the_source_says(name: str) -> None:
    fam, model = ZOO[name], build(name)
    example = fam.example() if fam.example else None
    blocks = list(iter_blocks(model, example))
    assert {b.source for b in blocks} == {"trace"}
    by_stack: dict[str, list] = {}
    for b in blocks:
        by_stack.setdefault(b.stack, []).append(b)
    assert set(by_stack) == set(fam.stacks)
    for stack, expected in fam.stacks.items():
        for b in by_stack[stack]:
            rel = [(s.kind, s.exit.removeprefix(b.name + ".")) for s in b.sublayers]
            assert rel == expected, (name, b.name)
            qkv = tuple((b.names[r] or "").removeprefix(b.name + ".") for r in "qkv")
            assert qkv == fam.qkv, (name, b.name)
            fused = len(set(fam.qkv)) == 1
            assert b.fused == (("q", "k", "v") if fused else ())
            assert bool(b.fused_widths) == (fused and fam.widths), (name, b.fused_widths)


@pytest.mark.parametrize("name", list(ZOO))
@torch.no_grad()
def test_identity_count_residual_width_and_bitwise_eject(name: str) -> None:
    fam, model = ZOO[name], build(name)
    example = fam.example() if fam.example else None
    x = batch(name, model)
    base = output(model, x)
    keys = list(model.state_dict())
    flags = {n: p.requires_grad for n, p in model.named_parameters()}

    spec = AdapterSpec("houlsby", bottleneck=K)
    plan = adarec.plan_sites(model, spec, example_inputs=example)
    assert plan.source == "trace" and plan.residual
    expected = 0
    for row in plan.rows:  # every serial adapter sits on a module of the residual width
        width = plan.residual[row.site.stack or ""]
        assert row.d_out == width, (name, row.site.target)
        expected += 2 * width * K + K + width
    adarec.inject_adapters(model, spec, example_inputs=example)
    assert adarec.parameter_summary(model).trainable == expected
    assert (output(model, x) - base).abs().max() <= 1e-5  # identity at init

    lora = AdapterSpec("lora", lora_r=2, lora_targets=("q", "v", "o"))
    adarec.inject_adapters(model, lora, "lora", example_inputs=example)
    lora_sites = [a for _, _, a in adarec.iter_adapters(model) if a.set_name == "lora"]
    n_blocks = sum(len(v) for v in _blocks(model, example).values())
    assert len(lora_sites) == n_blocks * (2 if fam.qkv[0] == fam.qkv[2] else 3)
    adarec.set_active_adapters(model, ["default", "lora"])
    assert (output(model, x) - base).abs().max() <= 1e-5

    _perturb(model)
    assert not torch.allclose(output(model, x), base, atol=1e-4)
    adarec.eject_adapters(model)
    assert torch.equal(output(model, x), base)
    assert list(model.state_dict()) == keys and count_forward_hooks(model) == 0
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags


def _blocks(model: nn.Module, example) -> dict[str, list]:
    out: dict[str, list] = {}
    for b in iter_blocks(model, example):
        out.setdefault(b.stack, []).append(b)
    return out


@pytest.mark.parametrize("name", [n for n, f in ZOO.items() if len(set(f.qkv)) == 1])
def test_ia3_on_a_fused_projection_needs_a_verified_split(name: str) -> None:
    fam, model = ZOO[name], build(name)
    if fam.widths:
        adarec.inject_adapters(model, "ia3")
        x = batch(name, model)
        base = output(model, x)
        _perturb(model)
        assert not torch.allclose(output(model, x), base)
    else:
        with pytest.raises(adarec.UnsupportedModuleError, match="interleaved heads"):
            adarec.inject_adapters(model, "ia3")
        assert not adarec.adapter_sets(model)


def test_a_block_whose_projections_are_used_through_their_weights_is_refused() -> None:
    """WavLM's attention runs F.multi_head_attention_forward on its q/k/v/out weights: the
    projections are never called, so nothing says where the attention output is."""
    import transformers as tf
    from zoo_models import AUDIO

    torch.manual_seed(0)
    model = tf.WavLMModel(tf.WavLMConfig(**AUDIO, num_buckets=16, max_bucket_distance=32)).eval()
    with pytest.raises(TargetNotFoundError) as info:
        adarec.inject_adapters(model, "houlsby")
    message = str(info.value)
    assert "weights used without calling their module" in message
    assert "attention.q_proj" in message and "target_modules" in message
    assert not adarec.adapter_sets(model)
