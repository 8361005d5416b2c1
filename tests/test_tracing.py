"""Placement by tracing: the bug it fixes, agreement with the layout table, the plan table, and
refusals that say what was seen."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import ARCHS, build, inputs, output
from torch import nn
from torch.nn import functional as F

import adarec
from adarec import AdapterSpec, TargetNotFoundError
from adarec import layouts as layouts_module
from adarec.inject import count_forward_hooks
from adarec.layouts import iter_blocks
from adarec.tracing import TraceError, cached_trace


# ------------------------------------------------------------------------------- the bug model
class OutFirstAttention(nn.Module):
    """Registers its output projection *before* the fused q/k/v input projection."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.out_proj = nn.Linear(d, d)
        self.qkv = nn.Linear(d, 3 * d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out_proj(a.transpose(1, 2).reshape(b, t, d))


class DecoderBlock(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = OutFirstAttention(d, 4)
        self.fc_in, self.fc_out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.fc_out(F.gelu(self.fc_in(self.ln2(x))))


class Decoder(nn.Module):
    def __init__(self, d: int = 32, depth: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, d)
        self.layers = nn.ModuleList(DecoderBlock(d) for _ in range(depth))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        for layer in self.layers:
            x = layer(x)
        return x


IDS = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(0))


def test_mha_adapter_goes_after_attention_not_on_the_fused_input_projection() -> None:
    """The bug: discovery by registration order put the "after MHA" adapter on the fused
    qkv projection (hidden -> 3 hidden); identity at init hid it."""
    torch.manual_seed(0)
    model = Decoder().eval()
    plan = adarec.plan_sites(model, "houlsby", example_inputs=IDS)
    assert [(s.role, s.target) for s in plan] == [
        ("mha", "layers.0.attn.out_proj"), ("ffn", "layers.0.fc_out"),
        ("mha", "layers.1.attn.out_proj"), ("ffn", "layers.1.fc_out"),
    ]
    lora = adarec.plan_sites(model, "lora", example_inputs=IDS)
    assert (lora[0].target, lora[0].roles, lora[0].fused) == (
        "layers.0.attn.qkv", ("q", "v"), ("q", "k", "v"))
    assert lora[0].fused_widths == (32, 32, 32)  # verified: v is the last contiguous third

    base = model(IDS)
    adarec.inject_adapters(model, "houlsby", example_inputs=IDS)
    adarec.inject_adapters(model, "ia3", "ia3", example_inputs=IDS)
    adarec.set_active_adapters(model, ["default", "ia3"])
    assert (model(IDS) - base).abs().max() <= 1e-6
    adarec.eject_adapters(model)
    assert torch.equal(model(IDS), base) and count_forward_hooks(model) == 0


def test_without_example_inputs_a_plain_module_gets_a_float_batch_or_a_clear_refusal() -> None:
    """A non-Hugging-Face model is called with a float [2, 4, width] batch; the decoder above
    takes token ids, so it cannot run, and the refusal says how to go on."""
    with pytest.raises(TraceError, match=r"could not run Decoder once.*example_inputs"):
        adarec.plan_sites(Decoder(), "houlsby")


def test_a_meta_device_model_outside_the_table_is_told_to_materialise() -> None:
    with torch.device("meta"):
        model = Decoder()
    with pytest.raises(TraceError, match=r"meta device, where data-dependent code cannot run: "
                                         r"materialise it first"):
        adarec.plan_sites(model, "houlsby")


# --------------------------------------------------------------- agreement with the table
def _plans(model: nn.Module, spec: AdapterSpec) -> list[tuple]:
    return [(s.target, s.role, s.roles, s.fused, s.fused_widths, s.block, s.stack)
            for s in adarec.plan_sites(model, spec)]


SPECS = [
    AdapterSpec("houlsby"), AdapterSpec("pfeiffer"), AdapterSpec("compacter"),
    AdapterSpec("lora", lora_targets=("q", "k", "v", "o", "ffn_out")), AdapterSpec("ia3"),
]


@pytest.mark.parametrize("arch", list(ARCHS))
def test_families_in_the_table_give_the_same_plan_from_the_trace(
    arch: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = build(arch)
    table = {str(s): _plans(model, s) for s in SPECS}
    table_blocks = list(iter_blocks(model))
    parallel = adarec.plan_sites(model, "parallel")
    monkeypatch.setattr(layouts_module, "layout_for", lambda m: None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = {str(s): _plans(model, s) for s in SPECS}
        traced_blocks = list(iter_blocks(model))
        traced_parallel = adarec.plan_sites(model, "parallel")
    assert {b.source for b in traced_blocks} == {"trace"}
    assert traced == table
    for a, b in zip(table_blocks, traced_blocks, strict=True):
        assert a.width == b.width
        for role in ("mha_in", "mha_out", "ffn_out", "q", "k", "v"):
            assert a.names[role] == b.names[role], (arch, role)
        # the FFN entry: the same module, or (gated FFN) one of the entries the trace saw
        ffn = next(s for s in b.sublayers if s.kind == "ffn")
        assert a.names["ffn_in"] in ffn.entries
    # a parallel adapter reads the same tensor either way (its entry is one of the entries)
    for s_table, s_trace in zip(parallel, traced_parallel, strict=True):
        assert s_table.target == s_trace.target
        block = next(b for b in traced_blocks if b.index == s_trace.block
                     and b.stack == s_trace.stack)
        sub = next(s for s in block.sublayers if s.exit == s_trace.target)
        assert s_table.entry in sub.entries


def test_gated_ffn_entry_is_not_guessed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(layouts_module, "layout_for", lambda m: None)
    with pytest.raises(TargetNotFoundError, match=r"'ffn_in' is not settled: the feed-forward "
                                                  r"sublayer has several entry projections"):
        adarec.plan_sites(build("llama"), AdapterSpec("lora", lora_targets=("ffn_in",)))


# ---------------------------------------------------------------------------- the plan table
def test_plan_prints_a_table_of_a_decoder_with_fused_projections() -> None:
    from zoo_models import build as zoo

    model = zoo("phi3")
    text = str(adarec.plan_sites(model, "lora"))
    print(text)
    lines = text.splitlines()
    assert lines[0].split() == ["block", "role", "module", "type", "in", "->", "out", "method"]
    assert "layers.0  q+v (fused q/k/v = 32+16+16)  layers.0.self_attn.qkv_proj  Linear  32 -> 64" \
        in text
    assert lines[-1] == "2 site(s); sublayers found by: trace; residual width layers=32"


# ------------------------------------------------------------------------ refusals and hygiene
class MixerBlock(nn.Module):
    """Two MLPs and no attention: there is no "mha" sublayer to follow."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.a1, self.a2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)
        self.b1, self.b2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.a2(F.gelu(self.a1(x)))
        return x + self.b2(F.gelu(self.b1(x)))


def test_ambiguous_placement_is_refused_with_what_was_seen() -> None:
    model = nn.Sequential()
    model.blocks = nn.ModuleList(MixerBlock(16) for _ in range(2))  # type: ignore[attr-defined]

    def forward(x: torch.Tensor) -> torch.Tensor:
        for b in model.blocks:  # type: ignore[attr-defined]
            x = b(x)
        return x

    model.forward = forward  # type: ignore[method-assign]
    with pytest.raises(TargetNotFoundError) as info:
        adarec.inject_adapters(model, "houlsby", example_inputs=torch.randn(2, 3, 16))
    message = str(info.value)
    assert "needs a 'mha' sublayer, and there is none (sublayers seen: ['ffn', 'ffn'])" in message
    assert "#0   blocks.0.a1  Linear  16 -> 32  reads: block input" in message
    assert "#1   blocks.0.a2  Linear  32 -> 16  reads: #0" in message
    assert "target_modules" in message
    assert not adarec.adapter_sets(model)
    adarec.inject_adapters(model, "pfeiffer", example_inputs=torch.randn(2, 3, 16))
    assert len(list(adarec.iter_adapters(model))) == 4  # both MLPs of both blocks


def test_the_dry_run_leaves_no_trace() -> None:
    from zoo_models import build as zoo

    model = zoo("gpt_neox").train()
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    state = torch.random.get_rng_state()
    before = {n: t.clone() for n, t in model.state_dict().items()}
    adarec.plan_sites(model, "houlsby")
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(m.training for m in model.modules())
    assert hooks == sum(len(m._forward_hooks) + len(m._forward_pre_hooks)
                        for m in model.modules())
    assert all(torch.equal(before[n], t) for n, t in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_a_cached_trace_follows_the_model_structure() -> None:
    from zoo_models import build as zoo

    model = zoo("opt")
    blocks = ["decoder.layers.0", "decoder.layers.1"]
    first = cached_trace(model, blocks)
    assert cached_trace(model, blocks) is first
    adarec.inject_adapters(model, "houlsby")  # adapters do not change the structure it keys on
    assert cached_trace(model, blocks) is first
    model.decoder.layers[0].fc2 = nn.Linear(64, 32)  # a new module: traced again
    assert cached_trace(model, blocks) is not first


def test_a_trace_runs_with_adapters_present_and_ignores_them() -> None:
    model, batch = build("bert"), inputs("bert")
    adarec.inject_adapters(model, "parallel", "p")
    with torch.no_grad():
        for p in adarec.adapter_parameters(model).values():
            p.add_(0.1)
    with_adapters = output(model, batch)
    traced = list(iter_blocks(model, table=False))
    assert [s.kind for s in traced[0].sublayers] == ["mha", "ffn"]
    assert torch.equal(output(model, batch), with_adapters)  # active flags restored


# ------------------------------------------------------------------ property: names play no part
class AnonymousBlock(nn.Module):
    """A transformer block whose projections have meaningless names, registered in any order."""

    def __init__(self, d: int, order: list[int], fused: bool, post_ln: bool, gated: bool,
                 kv_heads: int) -> None:
        super().__init__()
        self.heads, self.kv, self.fused = 4, kv_heads, fused
        self.post_ln, self.gated = post_ln, gated
        hd = d // 4
        shapes = {"out": (d, d), "up": (d, 2 * d), "down": (2 * d, d), "gate": (d, 2 * d),
                  "qkv": (d, d + 2 * kv_heads * hd), "q": (d, d), "k": (d, kv_heads * hd),
                  "v": (d, kv_heads * hd)}
        roles = ["out", "up", "down"] + (["gate"] if gated else []) + (
            ["qkv"] if fused else ["q", "k", "v"])
        self.role_of: dict[str, str] = {}
        for i in order:
            if i < len(roles):
                name = f"p{len(self.role_of)}"
                self.add_module(name, nn.Linear(*shapes[roles[i]]))
                self.role_of[roles[i]] = name
        for role in roles:  # roles the order did not mention
            if role not in self.role_of:
                name = f"p{len(self.role_of)}"
                self.add_module(name, nn.Linear(*shapes[role]))
                self.role_of[role] = name
        self.n1, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d)

    def p(self, role: str) -> nn.Module:
        return getattr(self, self.role_of[role])

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        hd = d // self.heads
        if self.fused:
            q, k, v = self.p("qkv")(x).split([d, self.kv * hd, self.kv * hd], dim=-1)
        else:
            q, k, v = self.p("q")(x), self.p("k")(x), self.p("v")(x)
        q = q.view(b, t, self.heads, hd).transpose(1, 2)
        k, v = (z.view(b, t, self.kv, hd).transpose(1, 2) for z in (k, v))
        rep = self.heads // self.kv
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        a = F.scaled_dot_product_attention(q, k, v)
        return self.p("out")(a.transpose(1, 2).reshape(b, t, d))

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        h = self.p("up")(x)
        h = F.silu(self.p("gate")(x)) * h if self.gated else F.gelu(h)
        return self.p("down")(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.post_ln:
            x = self.n1(x + self.attention(x))
            return self.n2(x + self.mlp(x))
        x = x + self.attention(self.n1(x))
        return x + self.mlp(self.n2(x))


class AnonymousStack(nn.Module):
    def __init__(self, **kw) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(AnonymousBlock(16, **kw) for _ in range(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = b(x)
        return x


@settings(max_examples=40, deadline=None)
@given(order=st.permutations(range(6)), fused=st.booleans(), post_ln=st.booleans(),
       gated=st.booleans(), kv_heads=st.sampled_from([1, 2, 4]))
def test_trace_places_by_dataflow_whatever_the_names_and_registration_order(
    order, fused, post_ln, gated, kv_heads
) -> None:
    torch.manual_seed(0)
    model = AnonymousStack(order=list(order), fused=fused, post_ln=post_ln, gated=gated,
                           kv_heads=kv_heads).eval()
    x = torch.randn(2, 5, 16)
    plan = adarec.plan_sites(model, "houlsby", example_inputs=x)
    expect = []
    for i, block in enumerate(model.blocks):
        expect += [("mha", f"blocks.{i}.{block.role_of['out']}"),
                   ("ffn", f"blocks.{i}.{block.role_of['down']}")]
    assert [(s.role, s.target) for s in plan] == expect
    b0 = model.blocks[0]
    lora = adarec.plan_sites(model, "lora", example_inputs=x)
    if fused:
        assert [s.target for s in lora][:1] == [f"blocks.0.{b0.role_of['qkv']}"]
        assert lora[0].fused_widths == (16, 4 * kv_heads, 4 * kv_heads)
    else:
        assert [s.target for s in lora][:2] == [f"blocks.0.{b0.role_of['q']}",
                                                f"blocks.0.{b0.role_of['v']}"]
    base = model(x)
    adarec.inject_adapters(model, "ia3", example_inputs=x)
    assert (model(x) - base).abs().max() <= 1e-6
    adarec.eject_adapters(model)
    assert torch.equal(model(x), base)


class TwoExperts(nn.Module):
    """Attention-free, with two feed-forward branches on one input: which one is "the FFN"?"""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.router = nn.Linear(d, 2)
        self.e0 = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.e1 = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.router(x).softmax(-1)
        return x + w[..., :1] * self.e0(x) + w[..., 1:] * self.e1(x)


def test_parallel_feed_forward_branches_are_refused() -> None:
    model = nn.Sequential()
    model.blocks = nn.ModuleList(TwoExperts(16) for _ in range(2))  # type: ignore[attr-defined]
    model.forward = lambda x: model.blocks[1](model.blocks[0](x))  # type: ignore[method-assign]
    with pytest.raises(TargetNotFoundError, match="mixture of experts"):
        adarec.plan_sites(model, "pfeiffer", example_inputs=torch.randn(2, 3, 16))
