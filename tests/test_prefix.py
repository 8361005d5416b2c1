"""Prefix tuning: key/value prefixes at the attention kernel, in encoder and decoder families."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from tiny_models import HEADS, H, L, build, inputs, output

import adarec
from adarec import AdapterSpec
from adarec.adapters.prefix import PrefixAdapter, fold_prefix, parameter_count
from adarec.errors import AdapterStateError, UnsupportedModuleError
from adarec.inject import count_forward_hooks

FAMILIES = ["bert", "roberta", "distilbert", "vit", "gpt2", "llama", "qwen2", "t5_encoder",
            "albert", "modernbert", "clip_text"]
TEXT = [f for f in FAMILIES if f != "vit"]
CAUSAL = ["gpt2", "llama", "qwen2", "clip_text"]
KV_WIDTH = {"llama": 16, "qwen2": 16}  # 2 key/value heads of 8; the others: H
SMALL = AdapterSpec("prefix", prefix_length=3, prefix_hidden=16)


def _perturb(model: torch.nn.Module, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adarec.adapter_parameters(model).values():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)


@pytest.mark.parametrize("arch", FAMILIES)
@torch.no_grad()
def test_inject_trains_only_prefixes_and_ejects_exactly(arch: str) -> None:
    model, batch = build(arch), inputs(arch)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    base = output(model, batch)
    adarec.inject_adapters(model, SMALL)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and trainable == set(adarec.adapter_parameters(model))
    assert all(".adarec_adapters.default." in n for n in trainable)
    assert output(model, batch).shape == base.shape
    assert not torch.allclose(output(model, batch), base, atol=1e-4)
    with adarec.adapters_disabled(model):
        assert torch.equal(output(model, batch), base)
    adarec.eject_adapters(model)
    assert torch.equal(output(model, batch), base)
    after = model.state_dict()
    assert list(after) == list(state) and all(torch.equal(after[k], state[k]) for k in state)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert count_forward_hooks(model) == 0
    assert not any(type(m.__dict__.get("config")).__name__ == "_ConfigView"
                   for m in model.modules())


@pytest.mark.parametrize("arch", ["bert", "llama", "gpt2"])
@pytest.mark.parametrize("projection", [True, False])
def test_parameter_count_formula(arch: str, projection: bool) -> None:
    model = adarec.inject_adapters(build(arch), SMALL.replace(prefix_projection=projection))
    kv = KV_WIDTH.get(arch, H)
    per_layer = parameter_count(3, kv, kv, H, 16 if projection else None)
    assert sum(p.numel() for p in adarec.adapter_parameters(model).values()) == L * per_layer
    # by hand: P*H + (H*m + m) + (m*2kv + 2kv), or 2*P*kv folded
    assert per_layer == ((3 * H + H * 16 + 16 + 16 * 2 * kv + 2 * kv) if projection
                         else 2 * 3 * kv)


def test_default_count_for_bert_is_pinned() -> None:
    model = adarec.inject_adapters(build("bert"), "prefix")  # P=10, MLP width 512
    n = sum(p.numel() for p in adarec.adapter_parameters(model).values())
    assert n == 2 * (10 * 32 + 32 * 512 + 512 + 512 * 64 + 64) == 100096


@pytest.mark.parametrize("arch", TEXT)
@pytest.mark.parametrize("left", [False, True])
@torch.no_grad()
def test_padding_is_masked_and_prefix_is_attended(arch: str, left: bool) -> None:
    model = adarec.inject_adapters(build(arch), SMALL)
    _perturb(model)
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(3, 99, (3, 6), generator=g)
    real = torch.ones(3, 6, dtype=torch.bool)
    if left:
        real[0, :2] = False
        real[1, :1] = False
    else:
        real[0, -2:] = False
        real[1, -1:] = False
    other = torch.where(real, ids, torch.randint(3, 99, ids.shape, generator=g))
    a = model(input_ids=ids, attention_mask=real.long()).last_hidden_state
    b = model(input_ids=other, attention_mask=real.long()).last_hidden_state
    torch.testing.assert_close(a[real], b[real], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(a).all()  # a fully padded row still attends to the prefix


@pytest.mark.parametrize("arch", CAUSAL)
@torch.no_grad()
def test_causal_stacks_stay_causal(arch: str) -> None:
    model = adarec.inject_adapters(build(arch), SMALL)
    _perturb(model)
    g = torch.Generator().manual_seed(6)
    ids = torch.randint(3, 99, (2, 7), generator=g)
    later = ids.clone()
    later[:, 4:] = torch.randint(3, 99, (2, 3), generator=g)
    for kw in ({}, {"attention_mask": torch.ones(2, 7, dtype=torch.long)}):  # no mask: built
        a = model(input_ids=ids, **kw).last_hidden_state
        b = model(input_ids=later, **kw).last_hidden_state
        torch.testing.assert_close(a[:, :4], b[:, :4], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(a[:, 4:], b[:, 4:], atol=1e-3)


@torch.no_grad()
def test_kernel_matches_a_reference_softmax_over_prefix_and_keys() -> None:
    """BERT layer 0, eager: context = softmax(q [Kp; K]^T / sqrt(d) + mask) [Vp; V]."""
    model = build("bert")
    model.config._attn_implementation = "eager"
    adarec.inject_adapters(model, SMALL.replace(prefix_projection=False))
    _perturb(model)
    attn = model.encoder.layer[0].attention.self
    seen: dict[str, torch.Tensor] = {}
    hooks = [getattr(attn, n).register_forward_hook(
        lambda m, a, o, n=n: seen.__setitem__(n, o)) for n in ("query", "key", "value")]
    hooks.append(attn.register_forward_hook(lambda m, a, o: seen.__setitem__("ctx", o[0])))
    batch = inputs("bert")
    model(**batch)
    for h in hooks:
        h.remove()
    adapter = next(a for _, _, a in adarec.iter_adapters(model)
                   if a.site.block == 0)
    assert isinstance(adapter, PrefixAdapter)
    d = H // HEADS

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(t.size(0), -1, HEADS, d).transpose(1, 2)

    pk, pv = (t.expand(2, -1, -1) for t in adapter.key_value())
    k, v = heads(torch.cat([pk, seen["key"]], 1)), heads(torch.cat([pv, seen["value"]], 1))
    keep = torch.cat([torch.ones(2, 3), batch["attention_mask"].float()], 1).bool()
    scores = heads(seen["query"]) @ k.transpose(-1, -2) / math.sqrt(d)
    scores = scores.masked_fill(~keep[:, None, None, :], float("-inf"))
    ref = (scores.softmax(-1) @ v).transpose(1, 2).reshape(2, -1, H)
    torch.testing.assert_close(seen["ctx"].reshape(2, -1, H), ref, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
@torch.no_grad()
def test_zero_prefix_is_not_identity_it_shrinks_attention(arch: str) -> None:
    """The promise: a zero prefix still takes softmax mass, so outputs change."""
    model, batch = build(arch), inputs(arch)
    base = output(model, batch)
    adarec.inject_adapters(model, SMALL.replace(prefix_projection=False))
    for p in adarec.adapter_parameters(model).values():
        p.zero_()
    moved = (output(model, batch) - base).abs()
    assert moved.max() > 1e-3


@pytest.mark.parametrize("arch", ["bert", "llama", "vit"])
@torch.no_grad()
def test_fold_gives_the_same_outputs_and_the_folded_spec(arch: str) -> None:
    model, batch = adarec.inject_adapters(build(arch), SMALL), inputs(arch)
    _perturb(model)
    before = output(model, batch)
    fold_prefix(model)
    torch.testing.assert_close(output(model, batch), before, atol=1e-6, rtol=0)
    assert adarec.adapter_sets(model)["default"].prefix_projection is False
    kv = KV_WIDTH.get(arch, H)
    assert sum(p.numel() for p in adarec.adapter_parameters(model).values()) == L * 2 * 3 * kv
    with pytest.raises(AdapterStateError, match="already folded"):
        next(a for _, _, a in adarec.iter_adapters(model)).fold()
    with pytest.raises(AdapterStateError, match="no prefix tuning set named 'other'"):
        fold_prefix(model, "other")


@pytest.mark.parametrize("fold", [False, True])
@pytest.mark.parametrize("arch", ["bert", "gpt2"])
@torch.no_grad()
def test_checkpoint_round_trip(tmp_path: Path, arch: str, fold: bool) -> None:
    model, batch = adarec.inject_adapters(build(arch), SMALL), inputs(arch)
    _perturb(model)
    if fold:
        fold_prefix(model)
    path = adarec.save_adapters(model, tmp_path / "ckpt")
    fresh = build(arch)
    assert adarec.load_adapters(fresh, path).ok
    assert torch.equal(output(fresh, batch), output(model, batch))
    assert adarec.adapter_sets(fresh) == adarec.adapter_sets(model)


@torch.no_grad()
def test_cached_generation_sees_the_prefix_once_per_step() -> None:
    """The prefix is added after the KV cache: step-by-step decoding equals one full pass."""
    model = adarec.inject_adapters(build("llama"), SMALL)
    _perturb(model)
    ids = torch.randint(3, 99, (2, 6), generator=torch.Generator().manual_seed(7))
    full = model(input_ids=ids).last_hidden_state
    first = model(input_ids=ids[:, :4], use_cache=True)
    step = model(input_ids=ids[:, 4:], past_key_values=first.past_key_values, use_cache=True)
    torch.testing.assert_close(step.last_hidden_state, full[:, 4:], atol=1e-5, rtol=1e-5)


def test_unsupported_attention_is_refused_by_name() -> None:
    with pytest.raises(UnsupportedModuleError, match=r"AttentionInterface.*DisentangledSelf"):
        adarec.inject_adapters(build("deberta-v2"), "prefix")


def test_spec_fields_are_checked() -> None:
    with pytest.raises(adarec.SpecError, match="prefix_length"):
        AdapterSpec("prefix", prefix_length=0)
    with pytest.raises(adarec.SpecError, match="prefix_projection"):
        AdapterSpec("prefix", prefix_projection="yes")


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@torch.no_grad()
def test_peft_export_loads_in_peft_with_the_same_outputs(tmp_path: Path, arch: str) -> None:
    peft = pytest.importorskip("peft")
    from adarec.interop.peft import export_peft_prefix

    model, batch = adarec.inject_adapters(build(arch), SMALL), inputs(arch)
    _perturb(model)
    with pytest.raises(AdapterStateError, match="not folded"):
        export_peft_prefix(model, tmp_path / "unfolded")
    fold_prefix(model)
    # peft numbers the real tokens after the prefix; adarec leaves their positions alone
    shifted = torch.arange(3, 3 + batch["input_ids"].size(1)).expand(2, -1)
    ours = model(**batch, position_ids=shifted).last_hidden_state
    with pytest.warns(UserWarning, match="position ids start at the prefix length"):
        path = export_peft_prefix(model, tmp_path / "peft")
    loaded = peft.PeftModel.from_pretrained(build(arch), path).eval()
    theirs = loaded(**batch).last_hidden_state
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(theirs[real], ours[real], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(model(**batch).last_hidden_state[real], theirs[real], atol=1e-3)


def test_the_methods_page_example_runs() -> None:
    text = (Path(__file__).parents[1] / "docs" / "methods.md").read_text(encoding="utf-8")
    body = text.split("## Prefix tuning", 1)[1]
    code = body.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(code, "docs/methods.md#prefix", "exec"), {})
