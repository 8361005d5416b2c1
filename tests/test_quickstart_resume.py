"""`examples/quickstart.py --resume`: a run killed mid-epoch (SIGKILL) and resumed ends
bit-identical to one never interrupted (tiny encoder, tiny data, CPU, fp32)."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_runs import ROOT, movie_csvs, run_python, tiny_encoder

QUICKSTART = ROOT / "examples" / "quickstart.py"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    folder = tmp_path_factory.mktemp("resume-inputs")
    encoder = tiny_encoder(folder)
    ratings, movies = movie_csvs(folder)
    return ["--interactions", str(ratings), "--items", str(movies), "--user-col", "userId",
            "--item-col", "movieId", "--text", "{title}", "--encoder", str(encoder),
            "--epochs", "3", "--patience", "5", "--threads", "1", "--dim", "16", "--text-len", "8",
            "--max-len", "4", "--batch-size", "4", "--precision", "fp32",
            "--save-every-steps", "2", "--negatives", "2", "--dropout", "0.3"]


def quickstart(args: list[str]) -> subprocess.CompletedProcess[str]:
    return run_python([str(QUICKSTART), *args], timeout=600)


def outcome(out: Path) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    weights: dict[str, torch.Tensor] = {}
    for file in sorted((out / "model").glob("*.safetensors")):
        weights |= {f"{file.name}:{k}": v for k, v in load_file(file).items()}
    results = json.loads((out / "results.json").read_text())
    keep = ("best_epoch", "epochs_run", "test", "test_unmasked", "test_by_tie_rule")
    return weights, {k: results[k] for k in keep}


@pytest.mark.parametrize("method", ["side", "houlsby"])
def test_killed_mid_epoch_and_resumed_ends_bit_identical(inputs: list[str], tmp_path: Path,
                                                         method: str) -> None:
    straight = quickstart([*inputs, "--method", method, "--out", str(tmp_path / "straight")])
    assert straight.returncode == 0, straight.stderr[-3000:]
    out = tmp_path / "killed"
    run = [*inputs, "--method", method, "--out", str(out)]
    log = (tmp_path / "straight" / "quickstart.log").read_text()
    assert "epoch 3:" in log  # three epochs of several steps each: the kills land mid-epoch
    killed = quickstart([*run, "--stop-after-steps", "7"])  # epoch 2, after its step-2 save
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert (out / "training_state").is_dir() and not (out / "results.json").exists()
    again = quickstart([*run, "--resume", "--stop-after-steps", "3"])  # killed once more
    assert again.returncode == -signal.SIGKILL, again.stderr[-3000:]
    resumed = quickstart([*run, "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in (out / "quickstart.log").read_text()
    weights, results = outcome(out)
    want_weights, want_results = outcome(tmp_path / "straight")
    assert results == want_results
    assert weights.keys() == want_weights.keys()
    assert all(torch.equal(weights[k], want_weights[k]) for k in weights)


def test_a_run_without_resume_starts_over(inputs: list[str], tmp_path: Path) -> None:
    """Without --resume an existing state is not read (it is replaced as training goes)."""
    out = tmp_path / "run"
    first = quickstart([*inputs, "--method", "side", "--out", str(out), "--epochs", "1"])
    assert first.returncode == 0, first.stderr[-3000:]
    second = quickstart([*inputs, "--method", "side", "--out", str(out), "--epochs", "1"])
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from" not in (out / "quickstart.log").read_text()
