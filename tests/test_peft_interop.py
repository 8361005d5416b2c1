"""peft LoRA folders in and out, checked against the installed peft's own loader and writer."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import safetensors.torch
import tiny_models as tm
import torch
import transformers as tf
from torch import nn

from adarec import AdapterSpec, AdapterStateError, CheckpointError, adapter_sets, inject_adapters
from adarec.interop import export_peft_lora, import_peft_lora

peft = pytest.importorskip("peft")

SPEC = AdapterSpec.preset("lora", lora_r=4, lora_alpha=8.0, lora_targets=("q", "v", "ffn_out"))


def trained_lora(arch: str, spec: AdapterSpec = SPEC) -> nn.Module:
    model = inject_adapters(tm.build(arch), spec)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def out(model: nn.Module, arch: str = "bert") -> torch.Tensor:
    with torch.no_grad():
        return tm.output(model, tm.inputs(arch))


def peft_folder(path: Path, arch: str = "bert", **config) -> tuple[Path, torch.Tensor]:
    """A folder written by peft itself (random lora_B, so the adapter is not a no-op)."""
    torch.manual_seed(3)
    kw = dict(r=4, lora_alpha=8, target_modules=["query", "value"], init_lora_weights=False)
    model = peft.get_peft_model(tm.build(arch), peft.LoraConfig(**{**kw, **config})).eval()
    model.save_pretrained(path)
    return path, out(model, arch)


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_export_loads_in_peft_with_equal_outputs(tmp_path: Path, arch: str) -> None:
    model = trained_lora(arch)
    path = export_peft_lora(model, tmp_path / "p")
    loaded = peft.PeftModel.from_pretrained(tm.build(arch), path).eval()
    torch.testing.assert_close(out(loaded, arch), out(model, arch), atol=1e-5, rtol=0)
    config = json.loads((path / "adapter_config.json").read_text())
    assert config["fan_in_fan_out"] is (arch == "gpt2")


def test_export_uses_peft_key_names(tmp_path: Path) -> None:
    """Same keys, shapes and config values as peft's own save of the same adapter."""
    spec = AdapterSpec.preset("lora", lora_r=4, lora_alpha=8.0)
    export_peft_lora(trained_lora("bert", spec), tmp_path / "ours")
    peft_folder(tmp_path / "theirs")
    ours = safetensors.torch.load_file(str(tmp_path / "ours" / "adapter_model.safetensors"))
    theirs = safetensors.torch.load_file(str(tmp_path / "theirs" / "adapter_model.safetensors"))
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    assert "base_model.model.encoder.layer.0.attention.self.query.lora_A.weight" in ours
    a = peft.LoraConfig.from_pretrained(str(tmp_path / "ours"))
    b = peft.LoraConfig.from_pretrained(str(tmp_path / "theirs"))
    assert (a.r, a.lora_alpha, a.bias, a.use_dora) == (b.r, b.lora_alpha, b.bias, b.use_dora)
    assert set(a.target_modules) == set(b.target_modules)  # short names when they are exact


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_import_peft_folder_with_equal_outputs(tmp_path: Path, arch: str) -> None:
    targets = ["c_attn", "c_proj"] if arch == "gpt2" else ["query", "value", "dense"]
    path, expected = peft_folder(tmp_path / "p", arch, target_modules=targets, lora_dropout=0.1,
                                 fan_in_fan_out=arch == "gpt2")
    model = import_peft_lora(tm.build(arch), path, name="from_peft")
    spec = adapter_sets(model)["from_peft"]
    assert (spec.lora_r, spec.lora_alpha, spec.lora_dropout) == (4, 8.0, 0.1)
    torch.testing.assert_close(out(model, arch), expected, atol=1e-5, rtol=0)


def test_import_respects_layers_to_transform(tmp_path: Path) -> None:
    path, expected = peft_folder(tmp_path / "p", layers_to_transform=[1])
    model = import_peft_lora(tm.build("bert"), path)
    assert {m for m, _, _ in adarec_iter(model)} == {
        "encoder.layer.1.attention.self.query", "encoder.layer.1.attention.self.value"}
    torch.testing.assert_close(out(model), expected, atol=1e-5, rtol=0)


def adarec_iter(model: nn.Module):
    from adarec import iter_adapters

    return iter_adapters(model)


def test_export_then_import_round_trip(tmp_path: Path) -> None:
    model = trained_lora("gpt2")
    path = export_peft_lora(model, tmp_path / "p")
    again = import_peft_lora(tm.build("gpt2"), path)
    assert torch.equal(out(again, "gpt2"), out(model, "gpt2"))


@pytest.mark.parametrize(
    ("config", "match"),
    [
        (dict(use_dora=True), "DoRA"),
        (dict(use_rslora=True), "rsLoRA"),
        (dict(bias="lora_only"), "bias"),
        (dict(modules_to_save=["pooler"]), "modules_to_save"),
        (dict(rank_pattern={"value": 2}), "rank_pattern"),
        (dict(alpha_pattern={"value": 2}), "alpha_pattern"),
        (dict(init_lora_weights="pissa"), "changes the base"),
    ],
)
def test_unsupported_peft_features_are_refused(tmp_path: Path, config, match: str) -> None:
    path, _ = peft_folder(tmp_path / "p", **config)
    model = tm.build("bert")
    with pytest.raises(CheckpointError, match=match):
        import_peft_lora(model, path)
    assert adapter_sets(model) == {}


def test_unknown_peft_variants_are_refused(tmp_path: Path) -> None:
    path, _ = peft_folder(tmp_path / "p")
    config = json.loads((path / "adapter_config.json").read_text())
    config["use_some_future_trick"] = True
    config["velora_config"] = {"k": 1}
    (path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="use_some_future_trick") as err:
        import_peft_lora(tm.build("bert"), path)
    assert "velora_config" in str(err.value)


def test_odd_keys_pickles_and_other_models_are_refused(tmp_path: Path) -> None:
    path, _ = peft_folder(tmp_path / "p")
    other = tf.BertModel(tf.BertConfig(**{**tm.COMMON, "hidden_size": 48}, **tm.TEXT))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        import_peft_lora(other, path)
    assert adapter_sets(other) == {}  # the half-built set is removed again
    with pytest.raises(CheckpointError, match="does not have"):
        import_peft_lora(tm.build("gpt2"), path)
    weights = path / "adapter_model.safetensors"
    state = safetensors.torch.load_file(str(weights))
    state["base_model.model.embeddings.word_embeddings.lora_embedding_A"] = torch.zeros(4, 99)
    safetensors.torch.save_file(state, str(weights))
    with pytest.raises(CheckpointError, match="not plain LoRA"):
        import_peft_lora(tm.build("bert"), path)
    weights.unlink()
    (path / "adapter_model.bin").write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(CheckpointError, match="never unpickles"):
        import_peft_lora(tm.build("bert"), path)
    shutil.rmtree(path)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        import_peft_lora(tm.build("bert"), path)


def test_export_refusals(tmp_path: Path) -> None:
    model = inject_adapters(tm.build("bert"), "houlsby")
    with pytest.raises(AdapterStateError, match="houlsby"):
        export_peft_lora(model, tmp_path / "p")
    with pytest.raises(AdapterStateError, match="no adapter set named"):
        export_peft_lora(model, tmp_path / "p", name="nope")
    assert not (tmp_path / "p").exists()
