"""The built API page: every documented name has a heading and a signature (issue 13: the site
showed docstrings of top-level functions with neither, so a reader could not tell which text
belonged to which function). Builds the site with mkdocs when it is installed (the docs extra)."""

from __future__ import annotations

import enum
import html
import importlib
import inspect
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TAG = re.compile(r"<[^>]+>")


def _documented() -> list[str]:
    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    return re.findall(r"^::: ([\w.]+)\s*$", text, flags=re.M)


def _resolve(name: str) -> object:
    module, _, attr = name.rpartition(".")
    try:
        return importlib.import_module(name)
    except ImportError:
        return getattr(importlib.import_module(module), attr)


def _wanted(name: str) -> dict[str, object]:
    """The ids that must carry a heading: the name itself, plus for a module its public
    functions and classes (by ``__all__``)."""
    obj = _resolve(name)
    out = {name: obj}
    if inspect.ismodule(obj):
        for member in getattr(obj, "__all__", []):
            value = getattr(obj, member)
            if (inspect.isfunction(value) or inspect.isclass(value)) and (
                    getattr(value, "__module__", "") == obj.__name__):
                out[f"{name}.{member}"] = value
    return out


def _fields_only(cls: type) -> bool:
    """Protocols, NamedTuples, enums and mixins without a constructor of their own: no
    constructor signature to show (their members are listed)."""
    return (bool(getattr(cls, "_is_protocol", False)) or issubclass(cls, enum.Enum)
            or (issubclass(cls, tuple) and hasattr(cls, "_fields"))
            or cls.__init__ is object.__init__)


@pytest.fixture(scope="module")
def api_html(tmp_path_factory: pytest.TempPathFactory) -> str:
    mkdocs = shutil.which("mkdocs") or str(Path(sys.executable).parent / "mkdocs")
    if not Path(mkdocs).exists():
        pytest.skip("mkdocs is not installed (pip install -e .[docs])")
    site = tmp_path_factory.mktemp("site")
    done = subprocess.run([mkdocs, "build", "--strict", "-q", "-d", str(site)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return (site / "api" / "index.html").read_text(encoding="utf-8")


def test_every_documented_name_has_a_heading_with_its_signature(api_html: str) -> None:
    names = _documented()
    assert len(names) > 40
    problems = []
    for name in names:
        for ident, obj in _wanted(name).items():
            found = re.search(
                rf'<h\d id="{re.escape(ident)}" class="doc doc-heading">(.*?)</h\d>(.*?)'
                r'(?=<h\d |$)', api_html, flags=re.S)
            if found is None:
                problems.append(f"{ident}: no heading")
                continue
            short = ident.rsplit(".", 1)[-1]
            heading = html.unescape(TAG.sub("", found[1]))
            if short not in heading:
                problems.append(f"{ident}: heading {heading.strip()!r} lacks the name")
            if inspect.isfunction(obj) or (inspect.isclass(obj) and not _fields_only(obj)):
                sig = re.search(r'<div class="doc-signature highlight">(.*?)</div>', found[2],
                                flags=re.S)
                text = html.unescape(TAG.sub("", sig[1])) if sig else ""
                if not re.search(rf"\b{re.escape(short)}\s*\(", text):
                    problems.append(f"{ident}: no signature ({text[:60]!r})")
    assert not problems, "\n".join(problems)
