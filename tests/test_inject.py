"""Injection invariants, parametrised over architectures x methods."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import ARCHS, build, inputs, output
from torch import nn

import adarec
from adarec import (
    AdapterSpec,
    AdapterStateError,
    SpecError,
    TargetNotFoundError,
    UnsupportedModuleError,
)
from adarec.inject import count_forward_hooks

METHODS = ["houlsby", "pfeiffer", "parallel", "compacter", "lora", "ia3", "kadapter"]


def _skip_unsupported(arch: str, method: str) -> None:
    if arch == "albert" and method == "kadapter":
        pytest.skip("ALBERT reuses one block for every layer; K-Adapter refuses it")


def _perturb(model: nn.Module) -> None:
    """Give every adapter parameter a non-zero value so adapters really change outputs."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in adarec.adapter_parameters(model).values():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", list(ARCHS))
@torch.no_grad()  # some kernels (T5's) differ in the last bit when weights require grad
def test_identity_eject_and_disable(arch: str, method: str) -> None:
    _skip_unsupported(arch, method)
    model, batch = build(arch), inputs(arch)
    keys = list(model.state_dict())
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    base = output(model, batch)

    adarec.inject_adapters(model, method)
    assert adarec.adapter_parameters(model), "no adapter was injected"
    assert (output(model, batch) - base).abs().max() <= 1e-6  # identity at initialisation

    _perturb(model)
    assert not torch.allclose(output(model, batch), base, atol=1e-4)
    with adarec.adapters_disabled(model):
        assert torch.equal(output(model, batch), base)

    adarec.eject_adapters(model)
    assert torch.equal(output(model, batch), base)
    assert list(model.state_dict()) == keys
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert count_forward_hooks(model) == 0


@pytest.mark.parametrize("method", [*METHODS, "prefix"])  # prefix: not an identity, so not above
@pytest.mark.parametrize("arch", ["bert", "gpt2", "vit", "llama", "t5_encoder", "modernbert"])
def test_only_adapters_train_and_every_adapter_gets_gradient(arch: str, method: str) -> None:
    model, batch = build(arch), inputs(arch)
    adarec.inject_adapters(model, method)
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    adapter_names = set(adarec.adapter_parameters(model))
    assert set(adarec.trainable_parameters(model)) == adapter_names
    opt = torch.optim.AdamW(adarec.trainable_parameters(model).values(), lr=1e-2)
    for step in range(3):
        opt.zero_grad()
        output(model, batch).pow(2).mean().backward()
        for n, p in model.named_parameters():
            # zero-initialised up-projections block the down-projections' gradient at step 0
            if n in adapter_names and step == 1:
                assert p.grad is not None and p.grad.abs().sum() > 0, n
            elif n not in adapter_names:
                assert p.grad is None, f"frozen {n} received a gradient"
        opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == adapter_names


def test_bert_base_houlsby_count_matches_closed_form() -> None:
    from transformers import BertConfig, BertModel

    with torch.device("meta"):
        model = BertModel(BertConfig())  # 12 x 768, FFN 3072
    adarec.inject_adapters(model, AdapterSpec(bottleneck=64))
    per_adapter = 768 * 64 + 64 + 64 * 768 + 768
    assert per_adapter == 99_136
    summary = adarec.parameter_summary(model)
    assert summary.trainable == 24 * per_adapter == 2_379_264
    assert summary.group_totals()["default"] == (2_379_264, 2_379_264)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (AdapterSpec(method="pfeiffer", positions=("ffn",), bottleneck=16),
         2 * (32 * 16 + 16 + 16 * 32 + 32)),
        (AdapterSpec.preset("lora", lora_r=4), 2 * 2 * (32 * 4 + 4 * 32)),
        (AdapterSpec.preset("houlsby", layers=(-1,)), 2 * (32 * 64 + 64 + 64 * 32 + 32)),
        # Compacter: rule matrices (n^3, shared) + per PHM layer rank-1 factors and a bias
        (AdapterSpec(method="compacter", bottleneck=8, phm_dim=4),
         4**3 + 2 * 2 * ((4 * 8 * 1 + 4 * 1 * 2 + 8) + (4 * 2 * 1 + 4 * 1 * 8 + 32))),
    ],
)
def test_parameter_counts(spec: AdapterSpec, expected: int) -> None:
    model = build("bert")
    adarec.inject_adapters(model, spec)
    assert adarec.parameter_summary(model).trainable == expected


def test_parallel_reads_the_sublayer_input() -> None:
    model = build("bert")
    adarec.inject_adapters(model, "parallel")
    adapter = model.encoder.layer[0].output.dense.adarec_adapters["default"]
    assert adapter.down.in_features == 32  # hidden size, not the FFN's 64
    seen = {}
    model.encoder.layer[0].intermediate.dense.register_forward_pre_hook(
        lambda m, a: seen.setdefault("x", a[0])
    )
    _perturb(model)
    out = output(model, inputs("bert"))
    assert out.isfinite().all() and "x" in seen


def test_named_sets_coexist_and_switch() -> None:
    model, batch = build("bert"), inputs("bert")
    base = output(model, batch)
    adarec.inject_adapters(model, "houlsby", name="movies")
    _perturb(model)
    movies = output(model, batch)
    adarec.inject_adapters(model, "lora", name="books")
    assert adarec.active_adapters(model) == ["books"]
    assert (output(model, batch) - base).abs().max() <= 1e-6  # books is fresh: identity
    adarec.set_active_adapters(model, "movies")
    assert torch.equal(output(model, batch), movies)
    assert list(adarec.adapter_sets(model)) == ["movies", "books"]
    with pytest.raises(AdapterStateError, match="already exists"):
        adarec.inject_adapters(model, "houlsby", name="movies")
    with pytest.raises(AdapterStateError, match="no adapter set named"):
        adarec.set_active_adapters(model, "music")
    adarec.eject_adapters(model, "books")
    assert torch.equal(output(model, batch), movies)
    adarec.eject_adapters(model)
    assert torch.equal(output(model, batch), base)


def test_layers_and_positions_select_sites() -> None:
    model = build("bert")
    sites = adarec.plan_sites(model, AdapterSpec(layers=(-1,), positions=("mha",)))
    assert [s.target for s in sites] == ["encoder.layer.1.attention.output.dense"]
    with pytest.raises(SpecError, match="has 2 blocks"):
        adarec.inject_adapters(model, AdapterSpec(layers=(5,)))
    assert not adarec.adapter_sets(model)  # nothing half-injected


def test_explicit_target_modules_suffix_and_regex() -> None:
    model = build("bert")
    spec = AdapterSpec(target_modules=("intermediate.dense",))
    assert [s.target for s in adarec.plan_sites(model, spec)] == [
        "encoder.layer.0.intermediate.dense", "encoder.layer.1.intermediate.dense"]
    spec = AdapterSpec.preset("lora", target_modules=r".*\.key")
    adarec.inject_adapters(model, spec)
    assert len(list(adarec.iter_adapters(model))) == 2
    with pytest.raises(TargetNotFoundError, match="candidate linear modules"):
        adarec.plan_sites(model, AdapterSpec(target_modules=("nope",)))


def test_unknown_model_lists_what_it_saw() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4))
    with pytest.raises(TargetNotFoundError, match=r"linear modules seen: \['0', '2'\]"):
        adarec.inject_adapters(model, "houlsby")


class _TorchEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.layers = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def test_multihead_attention_out_proj_is_handled_not_silently_skipped() -> None:
    torch.manual_seed(0)
    model, x = _TorchEncoder().eval(), torch.randn(2, 5, 16)
    base = model(x)
    adarec.inject_adapters(model, AdapterSpec(target_modules=("self_attn.out_proj",)))
    assert (model(x) - base).abs().max() <= 1e-6
    _perturb(model)
    model.train()  # torch's eval fast path bypasses submodules; the MHA output hook still runs
    assert not torch.allclose(model(x), base, atol=1e-4)
    with pytest.raises(UnsupportedModuleError, match=r"F\.linear"):
        adarec.inject_adapters(
            model, AdapterSpec.preset("lora", target_modules=("self_attn.out_proj",)), name="l"
        )


def test_unsupported_module_type_is_refused() -> None:
    model = build("bert")
    with pytest.raises(UnsupportedModuleError, match="LayerNorm"):
        adarec.inject_adapters(model, AdapterSpec(target_modules=("attention.output.LayerNorm",)))


def test_attention_mask_hidden_states_and_train_mode() -> None:
    model, batch = build("bert"), inputs("bert")
    adarec.inject_adapters(model, "houlsby")
    out = model(**batch, output_hidden_states=True)
    assert len(out.hidden_states) == 3
    model.train()
    torch.manual_seed(0)
    a = output(model, batch)
    with adarec.adapters_disabled(model):
        torch.manual_seed(0)
        b = output(model, batch)
    assert (a - b).abs().max() <= 1e-6  # dropout draws the same masks: adapters add nothing yet


def test_gradient_checkpointing_gives_same_gradients() -> None:
    grads = []
    for ckpt in (False, True):
        model, batch = build("bert"), inputs("bert")
        adarec.inject_adapters(model, "houlsby")
        _perturb(model)
        if ckpt:
            model.gradient_checkpointing_enable()
        model.train()
        model.config.hidden_dropout_prob = 0.0
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.p = 0.0
        output(model, batch).pow(2).mean().backward()
        grads.append({n: p.grad.clone() for n, p in adarec.adapter_parameters(model).items()})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-5, atol=1e-6)


def test_from_pretrained_round_trip(tmp_path) -> None:
    from transformers import AutoModel

    build("bert").save_pretrained(tmp_path)
    model = AutoModel.from_pretrained(tmp_path).eval()
    batch = inputs("bert")
    base = output(model, batch)
    adarec.inject_adapters(model, "houlsby")
    assert (output(model, batch) - base).abs().max() <= 1e-6


def test_torch_compile_matches_eager() -> None:
    model, batch = build("bert"), inputs("bert")
    adarec.inject_adapters(model, "houlsby")
    _perturb(model)
    eager = output(model, batch)
    compiled = torch.compile(model, backend="eager")  # dynamo tracing of the hooks, no C++ build
    torch.testing.assert_close(output(compiled, batch), eager, rtol=1e-5, atol=1e-5)


def test_albert_shares_its_adapters_with_its_shared_layer() -> None:
    model = build("albert")
    adarec.inject_adapters(model, "houlsby")
    # one shared layer object, applied num_hidden_layers times -> one adapter per position
    assert len(list(adarec.iter_adapters(model))) == 2


def test_freeze_utilities_and_summary_table() -> None:
    model = build("bert")
    adarec.inject_adapters(model, "houlsby", freeze=False)
    assert all(p.requires_grad for p in model.parameters())
    adarec.mark_only_adapters_trainable(model, also=["LayerNorm"])
    trainable = adarec.trainable_parameters(model)
    assert any("LayerNorm" in n for n in trainable)
    assert all("LayerNorm" in n or "adarec_adapters" in n for n in trainable)
    text = str(adarec.parameter_summary(model))
    assert "encoder.layer.*.attention.output.dense" in text and "% trainable" in text
    adarec.freeze(model)
    assert not adarec.trainable_parameters(model)


def test_tune_layernorm_spec_unfreezes_norms() -> None:
    model = build("llama")
    adarec.inject_adapters(model, AdapterSpec(tune_layernorm=True))
    assert any("norm" in n for n in adarec.trainable_parameters(model))


@settings(max_examples=25, deadline=None)
@given(
    layers=st.lists(st.integers(-2, 1), min_size=1, max_size=3, unique=True),
    positions=st.lists(st.sampled_from(["mha", "ffn"]), min_size=1, max_size=2, unique=True),
    bottleneck=st.integers(1, 40),
    method=st.sampled_from(["houlsby", "parallel", "pfeiffer"]),
)
def test_injection_invariants_property(layers, positions, bottleneck, method) -> None:
    model, batch = _BERT_CACHE
    base = output(model, batch)
    spec = AdapterSpec(method=method, layers=layers, positions=positions, bottleneck=bottleneck)
    adarec.inject_adapters(model, spec)
    n_blocks = len({i % 2 for i in layers})
    assert len(list(adarec.iter_adapters(model))) == n_blocks * len(positions)
    assert (output(model, batch) - base).abs().max() <= 1e-6
    adarec.eject_adapters(model)
    assert torch.equal(output(model, batch), base)
    assert count_forward_hooks(model) == 0


_BERT_CACHE = (build("bert"), inputs("bert"))


def test_save_pretrained_refuses_to_drop_adapters(tmp_path) -> None:
    """from_pretrained would silently drop adapter weights written by save_pretrained."""
    from transformers import AutoModel

    model, batch = build("bert"), inputs("bert")
    adarec.inject_adapters(model, "houlsby")
    _perturb(model)
    tuned = output(model, batch)
    with pytest.raises(AdapterStateError, match=r"adarec\.save_adapters\(model, path\)"):
        model.save_pretrained(tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    # the calls it names: the base without adapters, the adapters beside it
    adarec.save_adapters(model, tmp_path / "adapters")
    adarec.eject_adapters(model)
    model.save_pretrained(tmp_path / "hf")
    restored = AutoModel.from_pretrained(tmp_path / "hf").eval()
    adarec.load_adapters(restored, tmp_path / "adapters")
    adarec.set_active_adapters(restored, "default")
    assert torch.equal(output(restored, batch), tuned)


def test_adapters_and_upper_norms_is_one_core_rule() -> None:
    model = build("bert")
    adarec.inject_adapters(model, AdapterSpec(layers=(-1,)))
    adarec.mark_adapters_and_upper_norms_trainable(model)
    trainable = set(adarec.trainable_parameters(model))
    norms = {n for n in trainable if "LayerNorm" in n}
    assert norms and all(n.startswith("encoder.layer.1.") for n in norms)
    assert trainable - norms == set(adarec.adapter_parameters(model))
    adarec.eject_adapters(model)
    assert all(p.requires_grad for p in model.parameters())  # the flags it had before


def test_freeze_is_a_function_and_not_also_a_module() -> None:
    from pathlib import Path

    assert callable(adarec.freeze) and adarec.freeze is adarec.freezing.freeze
    assert not (Path(adarec.__file__).parent / "freeze.py").exists()
