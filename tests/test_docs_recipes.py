"""The recipes of docs/core.md ("How to add a method", "How to add a layout") run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import adarec

CORE = Path(__file__).parents[1] / "docs" / "core.md"


def _python_blocks(section: str) -> list[str]:
    text = CORE.read_text()
    start = text.index(f"## {section}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end if end > 0 else None], re.S)


@pytest.mark.parametrize("section", ["How to add a method", "How to add a layout"])
def test_recipe_runs(section: str, capsys: pytest.CaptureFixture[str]) -> None:
    blocks = _python_blocks(section)
    assert blocks, f"no python block under '## {section}'"
    before = adarec.method_names()
    for code in blocks:
        torch.manual_seed(0)
        exec(compile(code, f"docs/core.md ({section})", "exec"), {"__name__": "__recipe__"})
    assert adarec.method_names() == before  # the method recipe unregisters what it added
    out = capsys.readouterr().out
    assert "site(s)" in out  # it printed a plan
