"""Benchmarks import no example: what they share with one lives in the library or in
benchmarks/_common.py (an example is a user's script, free to change)."""

from __future__ import annotations

import ast
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _imported(file: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_no_benchmark_imports_an_example() -> None:
    examples = {p.stem for p in EXAMPLES.glob("*.py")} | {
        p.name for p in EXAMPLES.iterdir() if p.is_dir()} | {"examples"}
    found = {f.name: sorted(_imported(f) & examples) for f in BENCHMARKS.glob("*.py")}
    assert all(not v for v in found.values()), found
    text = {f.name: f.read_text() for f in BENCHMARKS.glob("*.py")}
    assert not [n for n, t in text.items() if "sys.path.insert" in t and "examples" in t]


def test_cpu_line_and_rss_are_read_in_one_place() -> None:
    for f in BENCHMARKS.glob("*.py"):
        text = f.read_text()
        for copy in ("model name", "ru_maxrss", "VmHWM:", "/proc/self/status", "lscpu"):
            assert copy not in text, f"{f.name} reads {copy!r} itself: use adarec.machine"
