"""K-Adapter, prompt tuning, (IA)^3 and BitFit: masking, causality, shapes, merging, round trips.

Identity at initialisation, eject and "only adapters train" for K-Adapter and (IA)^3 run over every
architecture in test_inject.py; this file checks what is particular to each method.
"""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import VISION, build, inputs, output
from torch import nn

import adarec
from adarec import AdapterSpec, SpecError, TargetNotFoundError, UnsupportedModuleError
from adarec.freezing import mark_only_biases_trainable, restore_requires_grad
from adarec.inject import count_forward_hooks

ARCHS = ["bert", "roberta", "distilbert", "vit", "gpt2", "llama", "t5_encoder"]
H, FF = 32, 64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from a second thread, and lose much when the CPUs are busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _perturb(model: nn.Module, scale: float = 0.1) -> None:
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in adarec.adapter_parameters(model).values():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def _sasrec(**kw):
    user_encoders = pytest.importorskip("adarec.rec.user_encoders")
    torch.manual_seed(0)
    return user_encoders.SASRec(H, n_layers=2, n_heads=2, max_len=12, dropout=0.0, **kw).eval()


# --------------------------------------------------------------------------- spec fields
@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"kadapter_layers": ()}, "kadapter_layers"),
        ({"kadapter_layers": (0.5,)}, "kadapter_layers"),
        ({"kadapter_depth": 0}, "kadapter_depth"),
        ({"kadapter_heads": 0}, "kadapter_heads"),
        ({"method": "kadapter", "bottleneck": 10, "kadapter_heads": 4}, "bottleneck"),
        ({"method": "kadapter", "bottleneck": None}, "bottleneck"),
        ({"kadapter_causal": "yes"}, "kadapter_causal"),
        ({"prompt_length": 0}, "prompt_length"),
        ({"prompt_init": "zeros"}, "prompt_init"),
        ({"ia3_targets": ("q",)}, "ia3_targets"),
        ({"ia3_targets": ("k", "k")}, "ia3_targets"),
        ({"method": "prompt", "target_modules": ("x",)}, "target_modules"),
    ],
)
def test_bad_fields_name_the_field(changes: dict, field: str) -> None:
    with pytest.raises(SpecError, match=f"AdapterSpec.{field}"):
        AdapterSpec(**changes)


def test_out_of_range_tap_names_its_field() -> None:
    with pytest.raises(SpecError, match=r"AdapterSpec\.kadapter_layers contains 5"):
        adarec.inject_adapters(build("bert"), AdapterSpec.preset("kadapter", kadapter_layers=(5,)))


# ---------------------------------------------------------------------------- K-Adapter
def test_kadapter_parameter_count_matches_closed_form() -> None:
    model = build("bert")
    adarec.inject_adapters(model, AdapterSpec.preset("kadapter", bottleneck=8, kadapter_heads=2))
    k, depth, taps = 8, 2, 2
    per_layer = (H * k + k) + depth * (12 * k * k + 13 * k) + (k * H + H)
    expected = taps * per_layer + (2 * H * H + H)
    assert adarec.parameter_summary(model).group_totals()["default"] == (expected, expected)


@torch.no_grad()
def test_kadapter_in_sasrec_never_sees_later_items() -> None:
    x = torch.randn(2, 8, H, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[0, :3] = False  # left padding
    later = x.clone()
    later[:, 5:] = torch.randn(2, 3, H)
    for causal, leaks in ((True, False), (False, True)):  # False: the paper code's leak
        model = _sasrec()
        adarec.inject_adapters(model, AdapterSpec.preset("kadapter", kadapter_causal=causal))
        _perturb(model, 0.3)
        a, b = model(x, mask), model(later, mask)
        assert torch.equal(a[:, :5], b[:, :5]) != leaks
        assert not torch.equal(a[:, 5:], b[:, 5:])


def test_kadapter_detects_causal_models() -> None:
    model = build("gpt2")  # its attention modules say is_causal=True
    adarec.inject_adapters(model, "kadapter")
    assert next(a for _, _, a in adarec.iter_adapters(model)).causal
    assert not next(a for _, _, a in adarec.iter_adapters(
        adarec.inject_adapters(build("bert"), "kadapter"))).causal
    causal_sasrec = _sasrec()
    causal_sasrec.is_causal = True  # what a causal encoder declares for detection
    adarec.inject_adapters(causal_sasrec, "kadapter")
    assert next(a for _, _, a in adarec.iter_adapters(causal_sasrec)).causal


@torch.no_grad()
def test_kadapter_gpt2_stays_causal() -> None:
    model, batch = build("gpt2"), inputs("gpt2")
    batch.pop("attention_mask")
    adarec.inject_adapters(model, "kadapter")
    _perturb(model, 0.3)
    changed = batch["input_ids"].clone()
    changed[:, 4:] = (changed[:, 4:] + 1) % 99
    a, b = output(model, batch), output(model, {"input_ids": changed})
    assert torch.equal(a[:, :4], b[:, :4]) and not torch.equal(a[:, 4:], b[:, 4:])


@torch.no_grad()
def test_kadapter_never_attends_to_padding() -> None:
    model, batch = build("bert"), inputs("bert")  # row 0 has two padded positions
    adarec.inject_adapters(model, "kadapter")
    _perturb(model, 0.3)
    other = dict(batch, input_ids=batch["input_ids"].clone())
    other["input_ids"][0, -2:] = 5
    real = batch["attention_mask"].bool()
    a, b = output(model, batch), output(model, other)
    assert torch.allclose(a[real], b[real], atol=1e-6)
    ids, mask = batch["input_ids"], batch["attention_mask"]  # the mask also found positionally
    assert torch.allclose(model(ids, mask).last_hidden_state, a, atol=1e-6)
    adapter = next(a for _, _, a in adarec.iter_adapters(model))
    adapter.mask_arg = None  # control: a side network blind to the mask sees the pads
    assert not torch.allclose(output(model, batch)[real], output(model, other)[real], atol=1e-4)


@torch.no_grad()
def test_kadapter_sasrec_padding_mask_is_read() -> None:
    model = _sasrec()
    adarec.inject_adapters(model, AdapterSpec.preset("kadapter", kadapter_causal=False))
    _perturb(model, 0.3)
    x = torch.randn(2, 6, H, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[:, :2] = False
    adapter = next(a for _, _, a in adarec.iter_adapters(model))
    seen = []
    original = adapter.allowed
    adapter.allowed = lambda t, d: seen.append(original(t, d)) or seen[-1]
    model(x, mask)
    assert not seen[0][:, 0, 3, :2].any()  # real queries never see padded keys


def test_kadapter_gradient_checkpointing_gives_same_gradients() -> None:
    grads = []
    for ckpt in (False, True):
        model, batch = build("bert"), inputs("bert")
        adarec.inject_adapters(model, "kadapter", freeze=True)
        _perturb(model)
        if ckpt:
            model.gradient_checkpointing_enable()
        model.train()
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.p = 0.0
        output(model, batch).pow(2).mean().backward()
        grads.append({n: p.grad for n, p in adarec.adapter_parameters(model).items()})
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-5, atol=1e-6)


def test_kadapter_refuses_shared_layers() -> None:
    with pytest.raises(UnsupportedModuleError, match="ALBERT"):
        adarec.inject_adapters(build("albert"), "kadapter")


# ------------------------------------------------------------------------- prompt tuning
@pytest.mark.parametrize("arch", [*ARCHS, "clip_text"])
def test_prompt_keeps_shapes_and_every_real_token(arch: str) -> None:
    model, batch = build(arch), inputs(arch)
    keys = list(model.state_dict())
    with torch.no_grad():
        base = model(**batch, output_hidden_states=True)
    adarec.inject_adapters(model, AdapterSpec.preset("prompt", prompt_length=3))
    out = model(**batch, output_hidden_states=True)
    for key, value in base.items():
        if isinstance(value, torch.Tensor):
            assert out[key].shape == value.shape, key
    assert [h.shape for h in out.hidden_states] == [h.shape for h in base.hidden_states]

    with torch.no_grad():
        ref = output(model, batch)
        if arch in VISION:  # every 8x8 patch still reaches the output
            for i in range(2):
                for j in range(2):
                    pix = batch["pixel_values"].clone()
                    pix[:, :, 8 * i : 8 * i + 8, 8 * j : 8 * j + 8] += 1.0
                    assert not torch.allclose(output(model, dict(batch, pixel_values=pix)), ref)
        else:
            real = batch.get("attention_mask", torch.ones_like(batch["input_ids"])).bool()
            for t in range(batch["input_ids"].size(1)):
                ids = batch["input_ids"].clone()
                ids[:, t] = (ids[:, t] + 1) % 99
                changed = output(model, dict(batch, input_ids=ids))
                assert not torch.allclose(changed[1], ref[1]), f"token {t} was dropped"
                if not real[0, t]:  # a padded token must not reach real positions
                    torch.testing.assert_close(changed[0][real[0]], ref[0][real[0]])
        _perturb(model)
        assert not torch.allclose(output(model, batch), ref, atol=1e-5)  # the prompt matters
        with adarec.adapters_disabled(model):
            assert torch.equal(output(model, batch), base[0])
    adarec.eject_adapters(model)
    with torch.no_grad():
        assert torch.equal(output(model, batch), base[0])
    assert list(model.state_dict()) == keys and count_forward_hooks(model) == 0


def test_prompt_positional_call_and_vocab_init() -> None:
    model, batch = build("bert"), inputs("bert")
    adarec.inject_adapters(model, AdapterSpec.preset("prompt", prompt_init="vocab"))
    prompt = adarec.adapter_parameters(model)["embeddings.word_embeddings.adarec_adapters"
                                              ".default.prompt"]
    mean = model.embeddings.word_embeddings.weight.mean(0)
    assert prompt.shape == (10, H) and (prompt - mean).abs().max() < 0.05
    with torch.no_grad():
        a = output(model, batch)
        b = model(batch["input_ids"], batch["attention_mask"]).last_hidden_state
    assert torch.equal(a, b)


@pytest.mark.parametrize("order", [("prompt", "kadapter"), ("kadapter", "prompt")])
def test_prompt_and_kadapter_combine_in_either_order(order: tuple[str, str]) -> None:
    model, batch = build("bert"), inputs("bert")
    for name in order:
        adarec.inject_adapters(model, name, name=name)
    adarec.set_active_adapters(model, list(order))
    assert output(model, batch).shape == (2, 7, H)


# -------------------------------------------------------------------------------- (IA)^3
def test_ia3_counts_and_fused_qkv() -> None:
    model = build("bert")
    adarec.inject_adapters(model, "ia3")
    assert adarec.parameter_summary(model).trainable == 2 * (H + H + FF)
    gpt2 = build("gpt2")
    adarec.inject_adapters(gpt2, "ia3")
    c_attn = gpt2.h[0].attn.c_attn.adarec_adapters["default"]
    assert (c_attn.start, c_attn.stop, c_attn.width) == (H, 3 * H, 3 * H)  # k and v thirds
    assert adarec.parameter_summary(gpt2).trainable == 2 * (2 * H + FF)


@pytest.mark.parametrize("arch", ["bert", "gpt2"])  # nn.Linear and transformers' Conv1D
@torch.no_grad()
def test_ia3_merges_into_weights(arch: str) -> None:
    model, batch = build(arch), inputs(arch)
    base = output(model, batch)
    adarec.inject_adapters(model, "ia3")
    _perturb(model, 0.3)
    adapted = output(model, batch)
    for _, module, adapter in adarec.iter_adapters(model):
        adapter.merge(module)
    torch.testing.assert_close(output(model, batch), adapted, rtol=1e-5, atol=1e-5)
    with pytest.raises(adarec.AdapterStateError):
        next(a for _, _, a in adarec.iter_adapters(model)).merge(nn.Linear(1, 1))
    adarec.eject_adapters(model)  # unmerges first
    torch.testing.assert_close(output(model, batch), base, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------- shared invariants, extras
@pytest.mark.parametrize("method", ["kadapter", "prompt", "ia3"])
@pytest.mark.parametrize("arch", ARCHS)
def test_only_new_adapters_train(arch: str, method: str) -> None:
    model, batch = build(arch), inputs(arch)
    adarec.inject_adapters(model, method)
    model.train()
    names = set(adarec.adapter_parameters(model))
    assert names and set(adarec.trainable_parameters(model)) == names
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(adarec.trainable_parameters(model).values(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        output(model, batch).pow(2).mean().backward()
        opt.step()
    assert {n for n, p in model.named_parameters() if not torch.equal(p, before[n])} == names


@pytest.mark.parametrize("method", ["kadapter", "prompt", "ia3"])
def test_deepcopy_and_state_dict_round_trips(method: str) -> None:
    model, batch = build("bert"), inputs("bert")
    adarec.inject_adapters(model, method)
    _perturb(model)
    model.train()
    output(model, batch).sum().backward()  # no activation may stay behind on the adapters
    model.eval()
    with torch.no_grad():
        ref = output(model, batch)
        twin = copy.deepcopy(model)
        torch.testing.assert_close(output(twin, batch), ref)
        adarec.eject_adapters(twin)  # the copy's hooks belong to the copy
        torch.testing.assert_close(output(model, batch), ref)

        fresh = adarec.inject_adapters(build("bert"), method)
        saved = {n: p.detach().clone() for n, p in adarec.adapter_parameters(model).items()}
        assert set(adarec.adapter_parameters(fresh)) == set(saved)
        fresh.load_state_dict(saved, strict=False)
        torch.testing.assert_close(output(fresh, batch), ref)
        again = adarec.inject_adapters(build("bert"), method)
        again.load_state_dict(model.state_dict())
        torch.testing.assert_close(output(again, batch), ref)


# --------------------------------------------------------------------------------- BitFit
def test_bitfit_trains_only_biases() -> None:
    model = build("bert")
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    mark_only_biases_trainable(model, also=r"^pooler\.dense\.weight$")
    trainable = set(adarec.trainable_parameters(model))
    biases = {n for n, _ in model.named_parameters() if n.endswith(".bias")}
    assert trainable == biases | {"pooler.dense.weight"}
    restore_requires_grad(model)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags

    adarec.inject_adapters(model, "houlsby")
    mark_only_biases_trainable(model, adapters=True)
    assert set(adarec.trainable_parameters(model)) == biases | set(
        adarec.adapter_parameters(model))
    mark_only_biases_trainable(model)
    assert set(adarec.trainable_parameters(model)) == biases
    with pytest.raises(TargetNotFoundError, match="no bias"):
        mark_only_biases_trainable(build("llama"))
