"""Merging LoRA into base weights: equal outputs, exact bookkeeping, non-linear sets refused."""

from __future__ import annotations

import pytest
import tiny_models as tm
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from adarec import (
    AdapterSpec,
    AdapterStateError,
    adapter_sets,
    inject_adapters,
    iter_adapters,
    set_active_adapters,
)
from adarec.inject import count_forward_hooks
from adarec.merge import merge_adapters, unmerge_adapters

LORA = AdapterSpec.preset("lora", lora_r=4, lora_alpha=8.0, lora_targets=("q", "v", "ffn_out"))


def lora_model(arch: str, spec: AdapterSpec = LORA, name: str = "default") -> nn.Module:
    model = inject_adapters(tm.build(arch), spec, name)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def out(model: nn.Module, arch: str) -> torch.Tensor:
    with torch.no_grad():
        return tm.output(model, tm.inputs(arch))


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("arch", ["bert", "gpt2", "vit"])  # gpt2: Conv1D, fused c_attn
def test_merge_and_unmerge_keep_outputs(arch: str) -> None:
    model = lora_model(arch)
    before, w0 = out(model, arch), weights(model)
    merge_adapters(model)
    assert all(a.merged for _, _, a in iter_adapters(model))
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, w0[n])]
    assert changed and all("adarec" not in n for n in changed)  # base weights took the delta
    torch.testing.assert_close(out(model, arch), before, atol=1e-5, rtol=0)
    unmerge_adapters(model)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p, w0[n], atol=1e-5, rtol=0)
    torch.testing.assert_close(out(model, arch), before, atol=1e-5, rtol=0)


def test_merged_adapters_do_no_work() -> None:
    model = merge_adapters(lora_model("bert"))
    calls = []
    for _, _, a in iter_adapters(model):
        a.lora_A.register_forward_hook(lambda *args: calls.append(1))
    out(model, "bert")
    assert calls == []


@pytest.mark.parametrize(
    ("method", "why"),
    [("houlsby", "non-linear"), ("pfeiffer", "non-linear"), ("parallel", "non-linear"),
     ("compacter", "non-linear"), ("kadapter", "non-linear"), ("prompt", "input positions")],
)
def test_unmergeable_adapters_are_refused(method: str, why: str) -> None:
    model = inject_adapters(tm.build("bert"), method)
    w0 = weights(model)
    with pytest.raises(AdapterStateError, match=why):
        merge_adapters(model)
    with pytest.raises(AdapterStateError, match=method):
        merge_adapters(model, "default")
    assert all(torch.equal(p, w0[n]) for n, p in model.named_parameters())


def test_selection_rules() -> None:
    model = lora_model("bert", name="a")
    inject_adapters(model, "houlsby", "h")
    set_active_adapters(model, ["a", "h"])
    with pytest.raises(AdapterStateError, match="non-linear"):
        merge_adapters(model)  # default: every active set, and one of them cannot merge
    set_active_adapters(model, "h")
    with pytest.raises(AdapterStateError, match="not active"):
        merge_adapters(model, "a")
    with pytest.raises(AdapterStateError, match="no adapter set named"):
        merge_adapters(model, "zzz")
    with pytest.raises(AdapterStateError, match="not merged"):
        unmerge_adapters(model, "a")
    set_active_adapters(model, ["a", "h"])
    before = out(model, "bert")
    merge_adapters(model, "a")
    with pytest.raises(AdapterStateError, match="already merged"):
        merge_adapters(model, "a")
    torch.testing.assert_close(out(model, "bert"), before, atol=1e-5, rtol=0)
    unmerge_adapters(model)  # default: every merged set
    assert not any(getattr(a, "merged", False) for _, _, a in iter_adapters(model))


def test_merge_and_unload_leaves_a_plain_model() -> None:
    model = lora_model("gpt2")
    before = out(model, "gpt2")
    merge_adapters(model, unload=True)
    assert adapter_sets(model) == {} and count_forward_hooks(model) == 0
    assert all("adarec" not in n for n in model.state_dict())
    torch.testing.assert_close(out(model, "gpt2"), before, atol=1e-5, rtol=0)


@settings(max_examples=6, deadline=None)
@given(r=st.integers(1, 16), alpha=st.floats(0.5, 64.0), seed=st.integers(0, 10_000))
def test_merge_round_trip_for_any_rank(r: int, alpha: float, seed: int) -> None:
    torch.manual_seed(seed)
    model = lora_model("bert", AdapterSpec.preset("lora", lora_r=r, lora_alpha=alpha))
    before, w0 = out(model, "bert"), weights(model)
    merge_adapters(model)
    torch.testing.assert_close(out(model, "bert"), before, atol=1e-5, rtol=1e-5)
    unmerge_adapters(model)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p, w0[n], atol=1e-5, rtol=0)
