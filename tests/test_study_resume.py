"""`examples/paper/study.py --resume`: a study killed with SIGKILL (mid-epoch, mid-save, in its
second run) and resumed ends with the same results, bit for bit, as one never interrupted
(tiny encoder, tiny data, CPU, fp32, one thread); finished runs are read back, not retrained;
a resume under other settings is refused, naming what changed."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from tiny_runs import ROOT, run_python, tiny_encoder

STUDY = ROOT / "examples" / "paper" / "study.py"
TIMING = ("wall_seconds", "train_seconds_per_epoch")
RUNS = ("scratch-houlsby-top2", "scratch-id-all")
# Runs study.main with two kills a test can place: after the Nth optimiser step of the process
# (STUDY_DIE_AT_STEP), and inside the Nth save of a training state, after its tensors were
# written and before its JSON (STUDY_DIE_IN_SAVE).
KILLER = """
import importlib.util, os, signal, sys
from pathlib import Path
spec = importlib.util.spec_from_file_location("study", sys.argv[1])
study = importlib.util.module_from_spec(spec)
sys.modules["study"] = study
spec.loader.exec_module(study)
die_at, die_in_save = (int(os.environ.get(k, "0")) for k in ("STUDY_DIE_AT_STEP",
                                                             "STUDY_DIE_IN_SAVE"))
count = {"steps": 0, "saves": 0}
import adarec.rec.training as training
step, write_bytes = training.train_step, Path.write_bytes
def train_step(*args, **kwargs):
    loss = step(*args, **kwargs)
    count["steps"] += 1
    if count["steps"] == die_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return loss
def write(self, data):
    if self.name == study.STATE_JSON:
        count["saves"] += 1
        if count["saves"] == die_in_save:
            os.kill(os.getpid(), signal.SIGKILL)
    return write_bytes(self, data)
training.train_step, Path.write_bytes = train_step, write
study.main(sys.argv[2:])
"""


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    folder = tmp_path_factory.mktemp("study-resume")
    encoder = tiny_encoder(folder)
    data = folder / "ml-100k"
    data.mkdir()
    (data / "ml-100k.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "".join(
            f"{u}\t{(u * 7 + i) % 30 + 1}\t5\t{100 + i}\n" for u in range(1, 13)
            for i in range(12)))
    (data / "ml-100k.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n" + "".join(
            f"{m}\tMovie number {m}\t{1990 + m % 7}\tDrama\n" for m in range(1, 31)))
    return ["methods", "designs", "--only", *RUNS, "--seeds", "0", "--data", str(data),
            "--encoder", str(encoder), "--epochs", "3", "--patience", "5", "--threads", "1",
            "--dim", "16", "--text-len", "8", "--max-len", "4", "--batch-size", "4",
            "--precision", "fp32", "--save-every-steps", "2", "--negatives", "2"]


def study(args: list[str], **kills: int) -> subprocess.CompletedProcess[str]:
    return run_python(["-c", KILLER, str(STUDY), *args],
                      env={f"STUDY_{k.upper()}": str(v) for k, v in kills.items()})


def results(out: Path) -> dict[str, Any]:
    found = {}
    for slug in RUNS:
        result = json.loads((out / "runs" / slug / "seed0.json").read_text())
        found[slug] = {k: v for k, v in result.items() if k not in TIMING}
    return found


def test_a_killed_study_resumes_bit_identical(inputs: list[str], tmp_path: Path) -> None:
    straight = study([*inputs, "--out", str(tmp_path / "straight")])
    assert straight.returncode == 0, straight.stderr[-3000:]
    want = results(tmp_path / "straight")
    assert [want[s]["epochs_run"] for s in RUNS] == [3, 3]
    assert want[RUNS[0]]["n_train_examples"] == 36  # 9 steps an epoch: where the kills land
    out = tmp_path / "killed"
    run = [*inputs, "--out", str(out)]
    first = study(run, die_at_step=13)  # houlsby, epoch 2, step 4: its step-4 save not made
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    state = out / "state" / "scratch-houlsby-top2" / "seed0"
    assert state.is_dir() and not (out / "runs").exists()

    changed = study([*run, "--resume", "--lr", "0.01"])
    assert changed.returncode != 0
    assert "other settings" in changed.stderr and "'lr': (0.003, 0.01)" in changed.stderr
    assert str(state) in changed.stderr  # the killed run's state is what refused

    mid_save = study([*run, "--resume"], die_in_save=2)  # resumed at step 2: dies saving step 6
    assert mid_save.returncode == -signal.SIGKILL, mid_save.stderr[-3000:]
    second_run = study([*run, "--resume"], die_at_step=14 + 11)  # id: epoch 2, step 2
    assert second_run.returncode == -signal.SIGKILL, second_run.stderr[-3000:]
    done = out / "runs" / "scratch-houlsby-top2" / "seed0.json"
    assert done.is_file() and not state.exists()  # finished: result written, state dropped
    mtime = done.stat().st_mtime_ns

    resumed = study([*run, "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert done.stat().st_mtime_ns == mtime  # a finished run is read back, not retrained
    log = (out / "study.log").read_text()
    assert log.count("resumed from") == 3 and "1 runs to do" in log
    assert results(out) == want
    assert not (out / "state" / "scratch-id-all" / "seed0").exists()


def test_without_resume_a_killed_run_starts_over(inputs: list[str], tmp_path: Path) -> None:
    out = tmp_path / "again"
    run = [*inputs, "--out", str(out), "--only", "scratch-id-all"]
    assert study(run, die_at_step=5).returncode == -signal.SIGKILL
    again = study(run)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" not in (out / "study.log").read_text()
