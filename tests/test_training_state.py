"""Resumable training: a run killed with SIGKILL (mid-epoch, mid-save) and resumed ends
bit-identical to one never interrupted (fp32, CPU, one thread)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from torch import nn

from adarec.errors import CheckpointError
from adarec.training_state import STATE_JSON, load_training_state, save_training_state

RUN = Path(__file__).with_name("resumable_run.py")


def _run(tmp: Path, name: str, *flags: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(RUN.parent.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, str(RUN), str(tmp / f"{name}-state"),
                           str(tmp / f"{name}.safetensors"), *flags],
                          env=env, capture_output=True, text=True, timeout=120)


def _same(a: Path, b: Path) -> None:
    wa, wb = load_file(a), load_file(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_killed_mid_epoch_and_mid_save_resumes_bit_identical(tmp_path: Path) -> None:
    ref = _run(tmp_path, "ref")
    assert ref.returncode == 0, ref.stderr
    for name, flags in (("mid-epoch", ("--die-at", "7")), ("mid-save", ("--die-in-save", "6"))):
        killed = _run(tmp_path, name, *flags)
        assert killed.returncode == -9, killed.stderr  # SIGKILL
        assert not (tmp_path / f"{name}.safetensors").exists()
        resumed = _run(tmp_path, name, "--resume")
        assert resumed.returncode == 0, resumed.stderr
        first = int(resumed.stdout.split()[1])
        assert first < 12  # it resumed from a saved step, not from the start
        _same(tmp_path / "ref.safetensors", tmp_path / f"{name}.safetensors")


def _parts() -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    return model, optimizer, torch.optim.lr_scheduler.StepLR(optimizer, 1)


@settings(max_examples=20, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers(-2**60, 2**60) | st.text(max_size=5)
                    | st.floats(allow_nan=False),
                    lambda kids: st.lists(kids, max_size=3) | st.tuples(kids, kids)
                    | st.dictionaries(st.integers(0, 9) | st.text(max_size=3), kids, max_size=3),
                    max_leaves=10))
def test_extra_state_round_trips(extra: object) -> None:
    model = _parts()[0]
    with tempfile.TemporaryDirectory() as tmp:
        save_training_state(Path(tmp) / "s", model=model, extra={"x": extra})
        assert load_training_state(Path(tmp) / "s", model=model) == {"x": extra}


def test_an_edited_or_mismatched_folder_is_refused(tmp_path: Path) -> None:
    model, optimizer, scheduler = _parts()
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    save_training_state(tmp_path / "s", model=model, optimizer=optimizer, scheduler=scheduler,
                        extra={"epoch": 1})
    other, other_opt, other_sched = _parts()
    assert load_training_state(tmp_path / "s", model=other, optimizer=other_opt,
                               scheduler=other_sched) == {"epoch": 1}
    assert other_opt.state_dict()["state"][0]["step"] == optimizer.state_dict()["state"][0]["step"]
    with pytest.raises(CheckpointError, match="holds optimizer state, and optimizer= was not"):
        load_training_state(tmp_path / "s", model=other)
    with pytest.raises(CheckpointError, match="another model's state"):
        load_training_state(tmp_path / "s", model=nn.Linear(3, 1), optimizer=other_opt,
                            scheduler=other_sched)
    record = json.loads((tmp_path / "s" / STATE_JSON).read_text())
    record["extra"] = {"__dict__": [["epoch", 5]]}
    (tmp_path / "s" / STATE_JSON).write_text(json.dumps(record, sort_keys=True))
    with pytest.raises(CheckpointError, match="does not match the sha256"):
        load_training_state(tmp_path / "s", model=other, optimizer=other_opt,
                            scheduler=other_sched)
    with pytest.raises(CheckpointError, match="cannot store a object"):
        save_training_state(tmp_path / "t", model=model, extra={"x": object()})
