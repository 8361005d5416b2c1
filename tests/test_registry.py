"""The method registry: the core names no method; everything method-specific is a `MethodDef`."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import adarec
import adarec.merge
import adarec.merge_state
import adarec.methods_table
import adarec.registry
import adarec.spec
import adarec.spec_fields
from adarec.registry import Placement, method_info, method_names

PACKAGE = Path(adarec.__file__).parent
BUILTIN = ("houlsby", "pfeiffer", "parallel", "compacter", "lora", "ia3", "kadapter", "prompt",
           "side", "prefix")
DISPLAY = ("k-adapter", "(ia)^3")


def _mentions(text: str, names: tuple[str, ...]) -> list[str]:
    """Method names in ``text`` as words (case-insensitive; ``lora_r`` counts, ``parallelism``
    does not)."""
    text = text.lower()
    found = []
    for name in names:
        for m in re.finditer(r"(?<![a-z0-9])" + re.escape(name) + r"(?![a-z0-9])", text):
            found.append(f"line {text[:m.start()].count(chr(10)) + 1}: {name}")
    return found


def test_builtin_methods_are_registered_in_order() -> None:
    assert method_names() == BUILTIN


@pytest.mark.parametrize("module", ["inject.py", "spec.py", "spec_fields.py", "planning.py",
                                    "sites.py", "stacks.py", "hooks.py", "attention.py"])
def test_the_core_names_no_method(module: str) -> None:
    """Not in code, strings or prose: a method lives in its own file."""
    names = (*method_names(), *BUILTIN, *DISPLAY)
    assert _mentions((PACKAGE / module).read_text(), names) == []


@pytest.mark.parametrize("module", ["merge.py", "merge_state.py", "interop/peft.py", "freezing.py",
                                    *sorted(p.relative_to(PACKAGE).as_posix() for p in
                                            (PACKAGE / "checkpoint").glob("*.py"))])
def test_merge_and_peft_ask_the_registry(module: str) -> None:
    """No method name as a string literal: no name lists to fall out of date."""
    tree = ast.parse((PACKAGE / module).read_text())
    literals = [n.value for n in ast.walk(tree)
                if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    # case-sensitive: peft's own type name 'LORA' is peft's vocabulary, not a method name
    assert [s for s in literals if s in (*BUILTIN, *method_names())] == []


def test_every_method_says_whether_it_merges_and_where_it_goes() -> None:
    for name in method_names():
        info = method_info(name)
        assert info.summary and info.merge_note, name
        assert (info.place is not None) == (info.placement is Placement.MODEL), name
        assert adarec.AdapterSpec.preset(name).method == name
    assert [n for n in method_names() if method_info(n).merges] == ["lora", "ia3"]
    assert [n for n in method_names() if method_info(n).peft_type == "LORA"] == ["lora"]


def test_peft_export_refuses_methods_peft_cannot_load() -> None:
    from tiny_models import build

    model = adarec.inject_adapters(build("bert"), "houlsby")
    with pytest.raises(adarec.AdapterStateError, match=r"\(\['lora'\]\); 'default' is houlsby"):
        adarec.export_peft_lora(model, "/nonexistent/never-written")


def test_module_constants_of_0_1_still_answer() -> None:
    from adarec import spec

    assert spec.METHODS == BUILTIN
    assert spec.MODEL_METHODS == ("kadapter", "prompt", "side", "prefix")
    assert spec.BOTTLENECK_METHODS == ("houlsby", "pfeiffer", "parallel", "compacter")



_TABLE_ONLY = {"add_to_table", "remove_from_table", "registered_methods"}
"""The table's own bookkeeping, for `adarec.registry` only (never public there)."""


@pytest.mark.parametrize(("public", "home", "names"), [
    (adarec.registry, adarec.methods_table,
     sorted(set(adarec.methods_table.__all__) - _TABLE_ONLY)),
    (adarec.spec, adarec.spec_fields, adarec.spec_fields.__all__),
    (adarec.merge, adarec.merge_state, ["ORIGINAL_PREFIX", "check_merge_state", "fold_order",
                                        "merge_state_problems", "refuse_shared_storage",
                                        "release"]),
], ids=["registry", "spec", "merge"])
def test_moved_names_keep_their_import_paths(public: object, home: object,
                                             names: list[str]) -> None:
    """The method table, the field vocabulary and the merge state moved below the modules that
    use them; each name is still importable from where it was, as the same object (one table,
    one vocabulary, not copies)."""
    missing = [n for n in names if getattr(public, n, None) is not getattr(home, n)]
    assert missing == []
