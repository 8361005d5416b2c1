"""Whole-model methods obey every supported stack's masking, or refuse it (issue 15).

For every registered whole-model method (K-Adapter, prompt tuning, and whatever else registers
with ``Placement.MODEL``) on every supported stack (Hugging Face encoders and decoders, adarec's
SASRec, torch's ``nn.TransformerEncoder`` with ``batch_first`` True and False, causal through
a float, a boolean or an ``is_causal``-hinted mask): outputs at real positions do not depend on
what padded positions hold, and in a causal stack position t does not depend on later positions.
A method that cannot honour a stack must refuse it at injection with adarec's own error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import tiny_models as tm
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import adarec
from adarec import AdapterStateError, AdarecError, Placement
from adarec.rec.user_encoders import SASRec

H = tm.H


@dataclass
class Stack:
    """A model, how to call it with ``(content, real)`` and what it promises."""

    build: Callable[[], nn.Module]
    call: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
    content: Callable[[torch.Generator, int, int], torch.Tensor]
    causal: bool


def _ids(g: torch.Generator, b: int, n: int) -> torch.Tensor:
    return torch.randint(3, 99, (b, n), generator=g)


def _vectors(g: torch.Generator, b: int, n: int) -> torch.Tensor:
    return torch.randn(b, n, H, generator=g)


def _hf(model: nn.Module, ids: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    return tm.output(model, {"input_ids": ids, "attention_mask": real.long()})


def _torch_encoder(batch_first: bool) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        torch.manual_seed(0)
        layer = nn.TransformerEncoderLayer(H, 4, 64, dropout=0.0, batch_first=batch_first)
        return nn.TransformerEncoder(layer, 2).eval()
    return build


def _torch_call(batch_first: bool, causal: str | None):
    def call(model: nn.Module, x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        n = x.size(1)
        kw: dict = {"src_key_padding_mask": ~real}
        if causal == "float":
            kw["mask"] = nn.Transformer.generate_square_subsequent_mask(n)
        elif causal == "bool":
            kw["mask"] = torch.ones(n, n, dtype=torch.bool).triu(1)  # True: blocked
        elif causal == "hint":
            kw["mask"] = nn.Transformer.generate_square_subsequent_mask(n)
            kw["is_causal"] = True
        out = model(x if batch_first else x.transpose(0, 1), **kw)
        return out if batch_first else out.transpose(0, 1)
    return call


def _sasrec() -> nn.Module:
    torch.manual_seed(0)
    return SASRec(H, n_layers=2, n_heads=2, max_len=16, dropout=0.0).eval()


STACKS: dict[str, Stack] = {
    "bert": Stack(lambda: tm.build("bert"), _hf, _ids, causal=False),
    "gpt2": Stack(lambda: tm.build("gpt2"), _hf, _ids, causal=True),
    "llama": Stack(lambda: tm.build("llama"), _hf, _ids, causal=True),
    "sasrec": Stack(_sasrec, lambda m, x, real: m(x, real), _vectors, causal=True),
    **{
        f"torch_{'bf' if bf else 'sf'}{'' if c is None else '_causal_' + c}": Stack(
            _torch_encoder(bf), _torch_call(bf, c), _vectors, causal=c is not None)
        for bf in (True, False) for c in (None, "float", "bool", "hint")
    },
}

MODEL_METHODS = adarec.method_names(Placement.MODEL)

REFUSED = {("prompt", s) for s in STACKS if s.startswith("torch") or s == "sasrec"} | {
    ("side", s) for s, stack in STACKS.items() if s.startswith("torch") or stack.causal} | {
    ("prefix", s) for s in STACKS if s.startswith("torch") or s == "sasrec"}
"""Pairs a method refuses at injection: prompt tuning needs an input embedding it can extend the
call of, and torch's layers take masks it does not rewrite; a side network pools over the whole
sequence (so causal stacks are refused) and reads only a Hugging Face attention_mask; prefix
tuning rewrites the kernel call of Hugging Face attention modules only."""


def _perturb(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adarec.adapter_parameters(model).values():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)


def _real(g: torch.Generator, b: int, n: int, left: bool) -> torch.Tensor:
    """[b, n] bool with 0..n-1 padded positions per row (row 0 always padded when n > 1)."""
    pads = torch.randint(0, n, (b,), generator=g)
    pads[0] = max(1, int(pads[0])) if n > 1 else 0
    idx = torch.arange(n)
    return idx[None, :] >= pads[:, None] if left else idx[None, :] < (n - pads)[:, None]


@pytest.fixture(scope="module")
def injected() -> dict[tuple[str, str], nn.Module | Exception]:
    """Each (method, stack): the adapted model, or the error injection refused with."""
    out: dict[tuple[str, str], nn.Module | Exception] = {}
    for method in MODEL_METHODS:
        for name, stack in STACKS.items():
            model = stack.build()
            try:
                adarec.inject_adapters(model, method)
            except AdarecError as exc:
                out[method, name] = exc
                continue
            _perturb(model, 1)
            out[method, name] = model
    return out


@pytest.mark.parametrize("stack", list(STACKS))
@pytest.mark.parametrize("method", MODEL_METHODS)
def test_method_supports_or_refuses_stack(injected, method: str, stack: str) -> None:
    got = injected[method, stack]
    if (method, stack) in REFUSED:
        assert isinstance(got, AdarecError), f"{method} on {stack} should be refused"
        want = "AttentionInterface" if method == "prefix" else "torch's src_mask"
        assert want in str(got) if stack.startswith("torch") else str(got)
    else:
        assert isinstance(got, nn.Module), f"{method} refused {stack}: {got}"


@pytest.mark.parametrize("stack", list(STACKS))
@pytest.mark.parametrize("method", MODEL_METHODS)
@settings(max_examples=4, deadline=None)
@given(b=st.integers(1, 4), n=st.integers(2, 9), left=st.booleans(), grad=st.booleans(),
       seed=st.integers(0, 2**16))
def test_padding_and_causality(injected, method: str, stack: str, b: int, n: int, left: bool,
                               grad: bool, seed: int) -> None:
    model = injected[method, stack]
    if not isinstance(model, nn.Module):
        return  # refused at injection (checked above)
    spec, g = STACKS[stack], torch.Generator().manual_seed(seed)
    real = _real(g, b, n, left)
    x = spec.content(g, b, n)
    other = spec.content(g, b, n)
    with torch.set_grad_enabled(grad):  # no grad: torch's encoder would take its nested path
        base = spec.call(model, x, real).detach()
        repadded = torch.where(real.view(b, n, *([1] * (x.dim() - 2))), x, other)
        moved = spec.call(model, repadded, real).detach()
        torch.testing.assert_close(moved[real], base[real], atol=1e-5, rtol=1e-5,
                                   msg=f"{method} on {stack}: padded contents reach real outputs")
        if spec.causal:
            t = int(torch.randint(0, n - 1, (1,), generator=g))
            later = x.clone()
            later[:, t + 1:] = other[:, t + 1:]
            after = spec.call(model, later, real).detach()
            keep = real.clone()
            keep[:, t + 1:] = False
            torch.testing.assert_close(after[keep], base[keep], atol=1e-5, rtol=1e-5,
                                       msg=f"{method} on {stack}: position {t} sees later ones")


# ------------------------------------------------------------------- the cases found by hand
def _kadapter_torch(batch_first: bool) -> nn.Module:
    model = _torch_encoder(batch_first)()
    adarec.inject_adapters(model, "kadapter")
    _perturb(model, 2)
    return model


@torch.no_grad()
def test_kadapter_torch_encoder_obeys_src_key_padding_mask() -> None:
    model, g = _kadapter_torch(True), torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, H, generator=g)
    pad = torch.zeros(3, 5, dtype=torch.bool)
    pad[0, -2:] = True
    moved = x.clone()
    moved[0, -2:] += 4.0
    for grad in (False, True):  # eval without grad: torch's nested-tensor path
        with torch.set_grad_enabled(grad):
            a = model(x, src_key_padding_mask=pad)
            b = model(moved, src_key_padding_mask=pad)
        torch.testing.assert_close(a[~pad], b[~pad], atol=1e-5, rtol=0)
    assert model.use_nested_tensor is False  # held off while adapters are inside
    adarec.eject_adapters(model)
    assert model.use_nested_tensor is True


@torch.no_grad()
@pytest.mark.parametrize("batch", [3, 5])  # batch == L used to hide the misreading
def test_kadapter_torch_encoder_reads_mask_as_an_attention_mask(batch: int) -> None:
    model, g = _kadapter_torch(True), torch.Generator().manual_seed(0)
    x = torch.randn(batch, 5, H, generator=g)
    causal = nn.Transformer.generate_square_subsequent_mask(5)
    later = x.clone()
    later[:, 3:] += 4.0
    a, b = model(x, mask=causal), model(later, mask=causal)
    torch.testing.assert_close(a[:, :3], b[:, :3], atol=1e-5, rtol=0)


@torch.no_grad()
def test_kadapter_torch_encoder_sequence_first_never_mixes_users() -> None:
    model, g = _kadapter_torch(False), torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, H, generator=g)  # [L, B, H]
    other = x.clone()
    other[:, 1] += 4.0  # another user's items
    a, b = model(x), model(other)
    torch.testing.assert_close(a[:, 0], b[:, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(a[:, 2], b[:, 2], atol=1e-5, rtol=0)


@torch.no_grad()
def test_kadapter_refuses_masks_it_cannot_follow() -> None:
    model = _kadapter_torch(True)
    x = torch.randn(2, 4, H)
    with pytest.raises(AdapterStateError, match="bias"):
        model(x, mask=torch.randn(4, 4))  # an additive attention bias
    with pytest.raises(AdapterStateError, match="per-head"):
        model(x, mask=torch.zeros(2 * 4, 4, 4))  # [batch * heads, L, L]
    assert model(x).shape == x.shape  # a refused call leaves nothing behind


@torch.no_grad()
def test_kadapter_refuses_torchs_nested_fast_path() -> None:
    """Injection holds torch's nested-tensor path off; switched back on by hand, the ragged
    tensors the blocks then return are refused rather than misread."""
    model = _kadapter_torch(True)
    model.use_nested_tensor = True
    x = torch.randn(2, 4, H)
    pad = torch.zeros(2, 4, dtype=torch.bool)
    pad[0, -1] = True
    with pytest.raises(AdapterStateError, match=r"nested \(ragged\) tensor"):
        model(x, src_key_padding_mask=pad)


def test_prompt_tuning_refuses_sasrec_with_the_reason() -> None:
    with pytest.raises(adarec.UnsupportedModuleError,
                       match=r"prompt tuning cannot find the embeddings of SASRec"):
        adarec.inject_adapters(_sasrec(), "prompt")
