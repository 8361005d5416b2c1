"""Two brand-new methods added from this file alone, through the public registration API, with no
edit to the package: both inject, train, save, load and eject like the built-in ones.

- ``ssf`` (Lian et al. 2022, *Scaling & Shifting Your Features*): ``y' = gamma * y + beta`` at
  sublayer outputs, ``gamma = 1``, ``beta = 0`` at init. Its own spec field: ``ssf_shift``.
- ``scalar_mix`` (a whole-model method, the shape of a side network): adds ``sum_i w_i h_i`` of
  tapped block outputs to the stack's output, ``w = 0`` at init. Its own field: ``mix_layers``.
  It needs an attach step (taps on blocks, a pre-hook that clears them), like K-Adapter.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from tiny_models import build, inputs, output
from torch import nn

import adarec
from adarec import (
    AdapterLayer,
    AdapterSpec,
    AdapterStateError,
    AttachContext,
    BuildContext,
    MethodDef,
    PlaceContext,
    Placement,
    Site,
    SpecError,
    SpecField,
)
from adarec.inject import count_forward_hooks
from adarec.spec import LAYERS, POSITIONS_FIELD, TARGET_MODULES, block_indices, normalise_layers


# --------------------------------------------------------------------------------- method 1: SSF
class ScaleShift(AdapterLayer):
    def __init__(self, width: int, shift: bool) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(width))
        self.beta = nn.Parameter(torch.zeros(width)) if shift else None

    def forward(self, x: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor:
        y = y * self.gamma
        return y + self.beta if self.beta is not None else y


SSF_SHIFT = SpecField("ssf_shift", True, lambda v: isinstance(v, bool), "must be a bool",
                      "also learn a shift")
SSF = MethodDef(
    name="ssf",
    placement=Placement.SUBLAYER,
    build=lambda ctx: ScaleShift(ctx.d_out, ctx.spec.ssf_shift),
    fields=(POSITIONS_FIELD, LAYERS, TARGET_MODULES, SSF_SHIFT),
    defaults={"positions": ("mha", "ffn")},
    where=lambda spec: spec.positions,
    merge_note="not implemented for this test method",
    summary="per-channel scale and shift of sublayer outputs",
)


# ------------------------------------------------------------------------- method 2: scalar mix
class ScalarMix(AdapterLayer):
    """``y + sum_i w_i h_i`` over tapped block outputs ``h_i``; hosted by the last block."""

    def __init__(self, slots: list[int], host: int) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(len(slots)))
        self.slots, self.host = slots, host
        self._taps: dict[int, torch.Tensor] = {}

    def start(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self._taps = {}

    def tap(self, slot: int, module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        self._taps[slot] = out[0] if isinstance(out, tuple) else out

    def forward(self, x: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor:
        taps, self._taps = {**self._taps, self.host: y}, {}
        return y + sum(w * taps[s] for w, s in zip(self.weights, self.slots, strict=True))

    @property
    def reads_blocks(self) -> tuple[int, ...]:
        return tuple(self.slots)


MIX_LAYERS = SpecField("mix_layers", None, block_indices(allow_none=True),
                       "must be None (all blocks) or distinct block indices", "blocks to mix",
                       sequence=True)


def _mix_place(ctx: PlaceContext) -> list[Site]:
    for stack in ctx.stacks:
        normalise_layers(ctx.spec.mix_layers, len(stack.blocks), "mix_layers")
    return [Site(s.blocks[-1], s.root, "stack_output", len(s.blocks) - 1, s.name)
            for s in ctx.stacks]


def _mix_build(ctx: BuildContext) -> ScalarMix:
    assert ctx.stack is not None
    n = len(ctx.stack.blocks)
    return ScalarMix(normalise_layers(ctx.spec.mix_layers, n, "mix_layers"), n - 1)


def _mix_attach(adapter: AdapterLayer, ctx: AttachContext) -> None:
    assert isinstance(adapter, ScalarMix) and ctx.stack is not None
    ctx.pre_hook(ctx.stack.root, adapter.start)
    for slot in adapter.slots:
        if ctx.stack.blocks[slot] != ctx.site.target:
            ctx.forward_hook(ctx.stack.blocks[slot], functools.partial(adapter.tap, slot))


SCALAR_MIX = MethodDef(
    name="scalar_mix", placement=Placement.MODEL, build=_mix_build, fields=(MIX_LAYERS,),
    place=_mix_place, attach=_mix_attach, hints={"layers": "mix_layers"},
    merge_note="it adds block outputs, not a weight delta",
)


@pytest.fixture(scope="module", autouse=True)
def _registered() -> Iterator[None]:
    adarec.register_method(SSF)
    adarec.register_method(SCALAR_MIX)
    yield
    adarec.unregister_method("ssf")
    adarec.unregister_method("scalar_mix")


def _perturb(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in adarec.adapter_parameters(model).values():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


# ---------------------------------------------------------------------------------------- tests
def test_spec_of_a_new_method_is_validated_like_any_other() -> None:
    spec = AdapterSpec("ssf")
    assert spec.ssf_shift is True and spec.positions == ("mha", "ffn")
    assert adarec.AdapterSpec.preset("ssf") == spec and "ssf" in adarec.method_names()
    assert AdapterSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(SpecError, match=r"AdapterSpec\.ssf_shift='yes' is invalid"):
        AdapterSpec("ssf", ssf_shift="yes")
    with pytest.raises(SpecError, match="does not apply to method 'ssf'"):
        AdapterSpec("ssf", dropout=0.1)
    with pytest.raises(SpecError, match="does not apply to method 'houlsby'"):
        AdapterSpec("houlsby", ssf_shift=False)
    with pytest.raises(SpecError, match="did you mean 'mix_layers'"):
        AdapterSpec("scalar_mix", layers=(0,))
    with pytest.raises(adarec.RegistrationError, match="already registered"):
        adarec.register_method(SSF)


@pytest.mark.parametrize("method", ["ssf", "scalar_mix"])
def test_new_method_injects_trains_saves_loads_and_ejects(method: str, tmp_path) -> None:
    model, batch = build("bert"), inputs("bert")
    base = output(model, batch)
    keys = list(model.state_dict())
    plan = adarec.plan_sites(model, method)
    assert method in str(plan) and len(plan) == (4 if method == "ssf" else 1)

    adarec.inject_adapters(model, method)
    assert (output(model, batch) - base).abs().max() <= 1e-6  # identity at init
    trainable = adarec.trainable_parameters(model)
    assert trainable and set(trainable) == set(adarec.adapter_parameters(model))

    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(trainable.values(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        output(model, batch).pow(2).mean().backward()
        opt.step()
    model.eval()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == set(trainable)
    trained = output(model, batch)
    assert not torch.allclose(trained, base, atol=1e-5)

    adarec.save_adapters(model, tmp_path / "ckpt")
    fresh = build("bert")
    result = adarec.load_adapters(fresh, tmp_path / "ckpt")
    assert result.ok and adarec.adapter_sets(fresh)["default"] == AdapterSpec(method)
    adarec.set_active_adapters(fresh, "default")
    assert torch.equal(output(fresh, batch), trained)

    with pytest.raises(AdapterStateError, match=method):
        adarec.merge_adapters(model)
    adarec.eject_adapters(model)
    assert torch.equal(output(model, batch), base)
    assert list(model.state_dict()) == keys and count_forward_hooks(model) == 0


def test_model_level_method_reads_its_taps() -> None:
    model, batch = build("gpt2"), inputs("gpt2")
    adarec.inject_adapters(model, AdapterSpec("scalar_mix", mix_layers=(0,)))
    mix = next(a for _, _, a in adarec.iter_adapters(model))
    assert isinstance(mix, ScalarMix) and mix.slots == [0]
    with torch.no_grad():
        mix.weights.fill_(1.0)
    hidden = model(**batch, output_hidden_states=True).hidden_states
    adarec.eject_adapters(model)
    plain = model(**batch, output_hidden_states=True).hidden_states
    # block 0's output is hidden_states[1]; the last block's output got it added (before ln_f)
    torch.testing.assert_close(hidden[1], plain[1])
    assert not torch.allclose(hidden[-1], plain[-1])


def test_a_method_file_needs_what_it_declares() -> None:
    incomplete = MethodDef(name="nowhere", placement=Placement.SUBLAYER,
                           build=lambda ctx: ScaleShift(ctx.d_out, False))
    with pytest.raises(adarec.RegistrationError, match="where"):
        adarec.register_method(incomplete)
    undeclared = MethodDef(name="undeclared", placement=Placement.SUBLAYER,
                           build=lambda ctx: ScaleShift(ctx.d_out, False),
                           where=lambda spec: ("ffn",), defaults={"bottleneck": 3})
    with pytest.raises(adarec.RegistrationError, match="bottleneck"):
        adarec.register_method(undeclared)
    assert "nowhere" not in adarec.method_names() and "undeclared" not in adarec.method_names()
