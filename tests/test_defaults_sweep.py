"""The defaults sweep (examples/paper/defaults.py): ranks on validation within each data set,
the mean rank across data sets, the ID baseline at its best, and one end-to-end run through the
quickstart on a tiny data set laid out as a shared one."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.tiny_runs import EXAMPLES, interactions, run_python, tiny_encoder

SCRIPT = EXAMPLES / "paper" / "defaults.py"


@pytest.fixture(scope="module")
def sweep() -> ModuleType:
    spec = importlib.util.spec_from_file_location("adarec_defaults_sweep", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def fake_run(out: Path, dataset: str, config: str, valid: float, test: float,
             seed: int = 0) -> None:
    folder = out / dataset / config / f"seed{seed}"
    folder.mkdir(parents=True)
    scores = {"hr@10": 2 * test, "ndcg@10": test}
    (folder / "results.json").write_text(json.dumps({
        "valid": {"ndcg@10": valid}, "test": scores, "test_unmasked": scores,
        "popularity": {"ndcg@10": 0.01}, "best_epoch": 2, "epochs_run": 4,
        "train_seconds_per_epoch": [1.0, 2.0, 3.0], "n_users": 5, "n_items": 7,
        "n_interactions": 40}))


def test_ranks_follow_validation_never_test(sweep: ModuleType, tmp_path: Path) -> None:
    configs = ["id-dot-sampled", "id-dot-full", "side-dot-sampled"]
    # a: side best on validation, worst on test; b: the ID rows swap places
    for d, values in {"a": [(0.1, 0.5), (0.2, 0.4), (0.3, 0.1)],
                      "b": [(0.3, 0.2), (0.2, 0.3), (0.1, 0.9)]}.items():
        for c, (v, t) in zip(configs, values, strict=True):
            fake_run(tmp_path, d, c, v, t)
    s = sweep.summarise(tmp_path, ["a", "b"], configs)
    assert [s["table"][d]["order"] for d in "ab"] == [configs[::-1], configs]
    assert [s["table"]["a"]["id_best"], s["table"]["b"]["id_best"]] == configs[1::-1]
    assert s["mean_rank"] == {"id-dot-sampled": 2.0, "id-dot-full": 2.0, "side-dot-sampled": 2.0}
    text = sweep.report(tmp_path, ["a", "b"], configs)
    assert "| side network, dot, sampled softmax | 0.3000 | 1 | 0.2000 | 0.1000 | -75.0% |" in text
    assert "ID-SASRec, dot, full softmax **(ID best)** | 0.2000 | 2 |" in text
    assert "Mean validation rank over a, b" in text


def test_a_failed_or_missing_run_keeps_its_data_set_out_of_the_mean(
        sweep: ModuleType, tmp_path: Path) -> None:
    configs = ["id-dot-full", "side-dot-sampled"]
    fake_run(tmp_path, "a", "id-dot-full", 0.2, 0.2)
    fake_run(tmp_path, "a", "side-dot-sampled", 0.3, 0.3)
    fake_run(tmp_path, "b", "id-dot-full", 0.2, 0.2)
    (tmp_path / "b" / "side-dot-sampled" / "seed0").mkdir(parents=True)
    (tmp_path / "b" / "side-dot-sampled" / "seed0" / "failed.txt").write_text("boom")
    s = sweep.summarise(tmp_path, ["a", "b"], configs)
    assert s["complete"] == ["a"]
    assert "| side network, dot, sampled softmax | failed |" in sweep.report(
        tmp_path, ["a", "b"], configs)


def test_seeds_are_averaged_with_their_standard_error(sweep: ModuleType, tmp_path: Path) -> None:
    for seed, value in enumerate((0.1, 0.3)):
        fake_run(tmp_path, "a", "id-dot-full", value, value, seed)
    row = sweep.summarise(tmp_path, ["a"], ["id-dot-full"])["table"]["a"]["rows"]["id-dot-full"]
    assert sweep._cell(row["valid"]) == "0.2000 ± 0.1000"


def test_the_report_reads_only_the_seeds_asked_for(sweep: ModuleType, tmp_path: Path) -> None:
    """More seeds of one configuration must not change a seed-0 table's ranks."""
    fake_run(tmp_path, "a", "id-dot-full", 0.2, 0.2)
    fake_run(tmp_path, "a", "side-dot-sampled", 0.1, 0.1)
    fake_run(tmp_path, "a", "side-dot-sampled", 0.5, 0.5, seed=1)
    configs = ["id-dot-full", "side-dot-sampled"]
    assert sweep.summarise(tmp_path, ["a"], configs, [0])["table"]["a"]["order"] == configs
    assert sweep.summarise(tmp_path, ["a"], configs)["table"]["a"]["order"] == configs[::-1]
    row = sweep.summarise(tmp_path, ["a"], configs, [0, 1])["table"]["a"]["rows"]["id-dot-full"]
    assert row["valid"] == [0.2]  # seed 1 of this one has not run: one value, no error


@pytest.mark.slow
def test_one_sweep_through_the_quickstart(tmp_path: Path) -> None:
    """Two configurations on a tiny data set in the shared layout: each trains, is skipped when
    run again, and lands in the report with its rank."""
    root = tmp_path / "data" / "lastfm"
    root.mkdir(parents=True)
    (root / "interactions.csv").write_text("user,item,timestamp\n" + "".join(
        f"{u},{i},{t}\n" for u, i, t in interactions(12, 12)))
    (root / "items.csv").write_text("item,text\n" + "".join(
        f"{i},Artist number {i}\n" for i in range(1, 31)))
    encoder = tiny_encoder(tmp_path)
    argv = [str(SCRIPT), "--out", str(tmp_path / "runs"), "--datasets", "lastfm",
            "--configs", "id-dot-full", "frozen-id-dot-full", "--threads", "1",
            "--data-root", str(tmp_path / "data"), "--", "--encoder", str(encoder),
            "--epochs", "1", "--max-len", "5", "--text-len", "8", "--precision", "fp32"]
    done = run_python(argv)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "lastfm/frozen-id-dot-full/seed0:" in done.stdout
    results = json.loads((tmp_path / "runs/lastfm/frozen-id-dot-full/seed0/results.json")
                         .read_text())
    assert results["args"]["id_fusion"] == "add" and results["args"]["loss"] == "full_softmax"
    assert results["dataset"] and 0.0 <= results["valid"]["ndcg@10"] <= 1.0
    again = run_python(argv)
    assert again.stdout.count("done before") == 2
    assert "Mean validation rank over lastfm" in (tmp_path / "runs" / "defaults.md").read_text()
