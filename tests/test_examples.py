"""The examples a user runs first: quickstart on their own CSV, then recommend.py on its model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_runs import movie_csvs, tiny_encoder

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def test_quickstart_help_imports_nothing_heavy() -> None:
    """`--help` must answer at once: torch, transformers and adarec load only after parsing."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import quickstart\n"
        "try:\n    quickstart.parse_args(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'adarec') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(EXAMPLES)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "(default: side)" in done.stdout and "--interactions CSV" in done.stdout


@pytest.mark.slow
def test_quickstart_on_a_csv_then_recommend(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    encoder = tiny_encoder(tmp_path)
    ratings, movies = movie_csvs(tmp_path, per_user=8)
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import quickstart
    import recommend

    out = tmp_path / "run"
    data = ["--interactions", str(ratings), "--items", str(movies), "--user-col", "userId",
            "--item-col", "movieId", "--text", "{title}"]
    quickstart.main([*data, "--encoder", str(encoder), "--epochs", "1", "--max-users", "8",
                     "--threads", "1", "--out", str(out), "--dim", "16", "--text-len", "8",
                     "--max-len", "5", "--precision", "fp32"])
    assert (out / "model" / "transrec_config.json").is_file()
    assert (out / "adapters" / "adapter_config.json").is_file()
    assert "valid HR@10" in (out / "quickstart.log").read_text()
    recommend.main(["--model", str(out / "model"), "--user", "3", *data, "--threads", "1"])
    log = (out / "recommend.log").read_text()
    assert "top-10 (history excluded)" in log and "Movie number" in log
    # the warm-catalogue recipe of docs/results.md: its options travel with the checkpoint
    out2 = tmp_path / "run-fusion"
    quickstart.main([*data, "--encoder", str(encoder), "--epochs", "1", "--max-users", "8",
                     "--threads", "1", "--out", str(out2), "--dim", "16", "--text-len", "8",
                     "--max-len", "5", "--precision", "fp32", "--method", "frozen", "--dtl",
                     "moe", "--id-fusion", "add", "--similarity", "cosine", "--temperature",
                     "0.07", "--loss", "full_softmax", "--negatives", "1", "--id-dropout", "0.3"])
    saved = json.loads((out2 / "model" / "transrec_config.json").read_text())["transrec"]
    assert (saved["dtl"], saved["id_fusion"], saved["similarity"]) == ("moe", "add", "cosine")
    assert saved["id_dropout"] == 0.3
    recommend.main(["--model", str(out2 / "model"), "--user", "3", *data, "--threads", "1"])
    assert "Movie number" in (out2 / "recommend.log").read_text()
    with pytest.raises(SystemExit):
        quickstart.parse_args(["--method", "id", "--id-fusion", "add"])
    for bad in (["--id-fusion", "none", "--id-dropout", "0.5"], ["--id-dropout", "1"]):
        with pytest.raises(SystemExit):
            quickstart.parse_args(bad)


def test_audio_items_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    """The audio example trains, scores and reloads to identical scores (tiny random HuBERT)."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import audio_items

    metrics = audio_items.main(["--out", str(tmp_path / "run"), "--epochs", "1"])
    assert set(metrics) == {"hr@5", "ndcg@5", "mrr@5"}
    assert (tmp_path / "run" / "model" / "transrec_config.json").is_file()
    assert len(list((tmp_path / "run" / "clips").glob("*.wav"))) == audio_items.N_ITEMS
    assert "reloaded scores identical: True" in capsys.readouterr().out
