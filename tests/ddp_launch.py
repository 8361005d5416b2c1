"""Running a test file as ``world`` processes of a gloo process group, for the DDP tests.

Each test file doubles as the worker script: run with an output folder as its argument, it
trains its rank and saves ``rank{r}.pt`` there; the test launches it with this helper and
compares what the ranks saved.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

TESTS = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_ranks(script: str, out: Path, world: int, timeout_s: float) -> list[dict[str, Any]]:
    """Run ``script out`` once per rank, wait for all, and return what each rank saved; the
    test fails with the workers' output if one fails or they do not finish in time."""
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    path = os.pathsep.join([str(TESTS.parent), str(TESTS), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "WORLD_SIZE": str(world), "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    procs = [subprocess.Popen([sys.executable, script, str(out)],
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(world)]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=timeout_s)[0])
    except subprocess.TimeoutExpired:
        pytest.fail(f"distributed workers did not finish in {timeout_s}s")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    if any(p.returncode for p in procs):
        pytest.fail("a worker failed:\n" + "\n".join(logs)[-4000:])
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)]
