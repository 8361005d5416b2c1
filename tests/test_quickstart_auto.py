"""`examples/quickstart.py --method auto`: candidates picked on validation, the pick trained and
tested once, and `--recipe` rerunning the saved pick (tiny encoder, tiny data, CPU, fp32)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_runs import ROOT, movie_csvs, run_python, tiny_encoder

QUICKSTART = ROOT / "examples" / "quickstart.py"
pytest.importorskip("optuna")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    folder = tmp_path_factory.mktemp("auto-inputs")
    encoder = tiny_encoder(folder)
    ratings, movies = movie_csvs(folder, per_user=10)
    return ["--interactions", str(ratings), "--items", str(movies), "--user-col", "userId",
            "--item-col", "movieId", "--text", "{title}", "--encoder", str(encoder),
            "--epochs", "2", "--threads", "1", "--dim", "16", "--text-len", "8",
            "--max-len", "4", "--batch-size", "8", "--precision", "fp32", "--side-width", "8"]


def quickstart(args: list[str]) -> subprocess.CompletedProcess[str]:
    return run_python([str(QUICKSTART), *args])


def test_method_auto_picks_on_validation_and_the_pick_reruns(inputs: list[str],
                                                             tmp_path: Path) -> None:
    auto = quickstart([*inputs, "--method", "auto", "--auto-epochs", "1",
                       "--out", str(tmp_path / "auto")])
    assert auto.returncode == 0, auto.stderr[-3000:]
    results = json.loads((tmp_path / "auto" / "results.json").read_text())
    rows = results["selection"]["candidates"]
    assert len(rows) == 16 and {r["state"] for r in rows} <= {"complete", "pruned"}
    done = [r for r in rows if r["state"] == "complete"]
    best = max(done, key=lambda r: r["value"])
    assert results["recipe"] == best["recipe"]
    assert results["args"]["method"] == best["recipe"]["method"]
    assert all("test" not in json.dumps(r) for r in rows)  # validation only
    log = (tmp_path / "auto" / "quickstart.log").read_text()
    assert "candidates (validation only)" in log and log.count("(test, history masked") == 1
    recipe = tmp_path / "auto" / "recipe.json"
    assert json.loads(recipe.read_text())["recipe"] == best["recipe"]
    again = quickstart([*inputs, "--recipe", str(recipe), "--out", str(tmp_path / "again")])
    assert again.returncode == 0, again.stderr[-3000:]
    rerun = json.loads((tmp_path / "again" / "results.json").read_text())
    assert rerun["recipe"] == results["recipe"] and rerun["selection"] is None
    for key in ("best_epoch", "test", "test_unmasked"):  # the pick trains as its rerun does
        assert rerun[key] == pytest.approx(results[key], abs=1e-6), key


@pytest.mark.parametrize("argv", [["--method", "auto", "--recipe", "x.json"],
                                  ["--time-budget", "60"], ["--auto-epochs", "3"],
                                  ["--method", "auto", "--time-budget", "0"]])
def test_auto_options_out_of_place_are_refused(argv: list[str]) -> None:
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import quickstart as qs
    finally:
        sys.path.pop(0)
    with pytest.raises(SystemExit):
        qs.parse_args(argv)
