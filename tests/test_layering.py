"""The package's import graph, read statically (ast; nothing is imported): imports go one way.

Why: a module that imports a module above it (or one that imports it back) can only work by
importing inside functions, and then a change anywhere can break the import order at run time.
Here every file of ``adarec/`` has a layer; it may import (at module level) only from its own
layer or below, the module-level graph has no cycle, and function bodies import no adarec module
except the few listed below with their reason.

What counts as an edge: a module-level ``import``/``from ... import`` of an adarec module
(relative imports resolved), not one under ``if TYPE_CHECKING:`` (types only, never run), and not
a package ``__init__`` importing its own children (a re-export). ``from adarec.pkg import name``
counts as an import of the submodule that ``pkg/__init__.py`` takes ``name`` from, when it does.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "adarec"

# Lower numbers are lower layers. A module may import from its own layer or a lower one.
LAYERS: dict[str, int] = {
    # 0: leaves: no adarec import but errors
    "adarec.errors": 0,
    "adarec.version": 0,
    "adarec.logs": 0,
    "adarec.calls": 0,
    "adarec.hooks": 0,
    "adarec.distributed": 0,
    # 1: small services on the leaves
    "adarec.folders": 1,
    "adarec.precision": 1,
    "adarec.machine": 2,
    "adarec.state_key": 1,
    # 2: what an adapter is, and the sites it goes to
    "adarec.adapters.base": 2,
    "adarec.sites": 2,
    "adarec.sets": 3,
    "adarec.attention": 3,
    # 4: the spec's field vocabulary, what a method is and the table of methods, reading 0.1 specs
    "adarec.spec_fields": 4,
    "adarec.methods_table": 4,
    "adarec.spec_v1": 4,
    # 5: the spec
    "adarec.spec": 5,
    # 6: registering methods (builds their preset specs)
    "adarec.registry": 6,
    # 7: reading a model's structure
    "adarec.tracing": 7,
    "adarec.layouts": 8,
    "adarec.stacks": 9,
    "adarec.planning": 10,
    # 11: the methods, each in its own file, and what acts on parameters
    "adarec.adapters": 11,
    "adarec.adapters.bottleneck": 11,
    "adarec.adapters.houlsby": 11,
    "adarec.adapters.pfeiffer": 11,
    "adarec.adapters.parallel": 11,
    "adarec.adapters.compacter": 11,
    "adarec.adapters.lora": 11,
    "adarec.adapters.ia3": 11,
    "adarec.adapters.kadapter": 11,
    "adarec.adapters.prompt": 11,
    "adarec.adapters.side": 11,
    "adarec.freezing": 11,
    "adarec.hf": 11,
    # 13: injection, then merging on top of it
    # 12: the merge rules and taking merged sets out (inject checks them)
    "adarec.merge_state": 12,
    "adarec.inject": 13,
    "adarec.mixed": 13,
    "adarec.merge": 14,
    # 15: checkpoints: file primitives, then what they record, then save/load
    "adarec.checkpoint.files": 15,
    "adarec.checkpoint.fingerprints": 15,
    "adarec.checkpoint.records": 15,
    "adarec.checkpoint.digests": 15,
    "adarec.checkpoint.reading": 16,
    "adarec.checkpoint.set_records": 16,
    "adarec.checkpoint.loading": 17,
    "adarec.checkpoint.adapter_checkpoints": 18,
    "adarec.checkpoint.model_state": 18,
    "adarec.checkpoint": 19,
    "adarec.adapters.prefix": 19,  # a method that saves its folded prefix through checkpoint
    "adarec.training_state": 19,
    # 20: interoperation
    "adarec.interop.peft": 20,
    "adarec.interop": 20,
    # 21: the recommender side
    "adarec.rec.timestamps": 21,
    "adarec.rec.scoring": 21,
    "adarec.rec.state_cache": 21,
    "adarec.rec.early_stopping": 21,
    "adarec.rec.readers": 22,
    "adarec.rec.atomic": 24,
    "adarec.rec.tokens": 22,
    "adarec.rec.data": 23,
    "adarec.rec.splits": 24,
    "adarec.rec.datasets": 24,
    "adarec.rec.losses": 24,
    "adarec.rec.metrics": 24,
    "adarec.rec.item_adaptors": 24,
    "adarec.rec.user_encoders": 24,
    "adarec.rec.policies": 24,
    "adarec.rec.side_encoding": 24,
    "adarec.rec.kinds": 20,
    "adarec.rec.item_encoder": 21,
    "adarec.rec.transfer": 21,
    "adarec.rec.text_items": 25,
    "adarec.rec.text_length": 24,
    "adarec.rec.image_items": 25,
    "adarec.rec.audio_items": 25,
    "adarec.rec.table_items": 25,
    "adarec.rec.multimodal_items": 26,
    "adarec.rec.item_encoders": 27,
    "adarec.rec.item_tower": 27,
    "adarec.rec.set_dtl": 26,
    "adarec.rec.inference": 28,
    "adarec.rec.objective": 28,
    "adarec.rec.folder_format": 28,
    "adarec.rec.evaluation": 29,
    "adarec.rec.mixed_serving": 28,
    "adarec.rec.guards": 29,
    "adarec.rec.serving": 29,
    "adarec.rec.transrec": 30,
    "adarec.rec.pretrained": 31,
    "adarec.rec.ann": 31,
    "adarec.rec.recipes": 31,
    "adarec.rec.select": 31,
    "adarec.rec.param_groups": 21,
    "adarec.rec.training": 25,
    "adarec.rec.shard_files": 22,
    "adarec.rec.sharded": 28,
    "adarec.rec.batch_recommend": 24,
    "adarec.rec": 32,
    # 29: the package's public face
    "adarec": 29,
}

ALLOWED_IN_FUNCTIONS: dict[tuple[str, str], str] = {}
"""(module, imported module) -> why this import must stay inside a function."""


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int
    in_function: bool


def module_name(file: Path) -> str:
    parts = list(file.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


FILES = {module_name(f): f for f in sorted(PACKAGE.rglob("*.py"))}
PACKAGES = {m for m, f in FILES.items() if f.name == "__init__.py"}


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement with whether it is inside a function body, skipping
    ``if TYPE_CHECKING:`` blocks."""
    out: list[tuple[ast.Import | ast.ImportFrom, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit_one(sub, in_function)
                continue
            visit_one(child, in_function)

    def visit_one(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append((node, in_function))
        inner = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                 ast.Lambda))
        visit(node, inner)

    visit(tree, False)
    return out


def _base(source: str, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    package = source if source in PACKAGES else source.rsplit(".", 1)[0]
    parts = package.split(".")
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join([*parts, *([node.module] if node.module else [])])


_REEXPORTS: dict[str, dict[str, str]] = {}


def _reexports(package: str) -> dict[str, str]:
    """name -> the module ``package/__init__.py`` takes it from (its own children only)."""
    if package not in _REEXPORTS:
        found: dict[str, str] = {}
        tree = ast.parse(FILES[package].read_text(encoding="utf-8"))
        for node, in_function in _imports(tree):
            if isinstance(node, ast.ImportFrom) and not in_function:
                base = _base(package, node)
                for alias in node.names:
                    found[alias.asname or alias.name] = _resolve(base, alias.name)
        _REEXPORTS[package] = found
    return _REEXPORTS[package]


def _resolve(base: str, name: str) -> str:
    """The module that ``from base import name`` really reads ``name`` from."""
    if f"{base}.{name}" in FILES:
        return f"{base}.{name}"
    if base in PACKAGES:
        target = _reexports(base).get(name)
        if target is not None and target.startswith(base + "."):
            return target
    return base


def edges_of(source: str) -> list[Edge]:
    tree = ast.parse(FILES[source].read_text(encoding="utf-8"))
    out = []
    for node, in_function in _imports(tree):
        if isinstance(node, ast.Import):
            targets = []
            for alias in node.names:
                parts = alias.name.split(".")
                prefixes = [".".join(parts[:i]) for i in range(len(parts), 0, -1)]
                targets += [next((p for p in prefixes if p in FILES), alias.name)]
        else:
            base = _base(source, node)
            targets = [_resolve(base, alias.name) for alias in node.names]
        for target in targets:
            if target not in FILES or target == source:
                continue
            if not in_function and source in PACKAGES and target.startswith(source + "."):
                continue  # a package re-exporting its children
            out.append(Edge(source, target, node.lineno, in_function))
    return out


EDGES = list(dict.fromkeys(e for m in FILES for e in edges_of(m)))
GRAPH: dict[str, set[str]] = {m: set() for m in FILES}
for _e in EDGES:
    if not _e.in_function:
        GRAPH[_e.source].add(_e.target)


def _cycle() -> list[str] | None:
    """One import cycle (as a path a -> b -> ... -> a), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(GRAPH[m]):
            if state.get(t) == 1:
                return [*stack[stack.index(t):], t]
            if t not in state:
                found = dfs(t)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(GRAPH):
        if m not in state:
            found = dfs(m)
            if found:
                return found
    return None


def test_every_module_has_a_layer() -> None:
    missing = sorted(set(FILES) - set(LAYERS))
    assert not missing, (f"modules without a layer: {missing}; add each to LAYERS in "
                         "tests/test_layering.py at the layer it belongs to")
    gone = sorted(set(LAYERS) - set(FILES))
    assert not gone, f"LAYERS names modules that no longer exist: {gone}; remove them"


def test_no_import_cycles() -> None:
    cycle = _cycle()
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_imports_go_down_the_layers() -> None:
    bad = [f"{FILES[e.source].relative_to(ROOT)}:{e.line}: {e.source} (layer "
           f"{LAYERS[e.source]}) imports {e.target} (layer {LAYERS[e.target]})"
           for e in EDGES if not e.in_function and e.source in LAYERS and e.target in LAYERS
           and LAYERS[e.target] > LAYERS[e.source]]
    assert not bad, "imports from a higher layer:\n" + "\n".join(bad)


def test_no_adarec_imports_inside_functions() -> None:
    bad = [f"{FILES[e.source].relative_to(ROOT)}:{e.line}: imports {e.target} inside a function"
           for e in EDGES if e.in_function and (e.source, e.target) not in ALLOWED_IN_FUNCTIONS]
    assert not bad, ("imports inside functions (move the shared piece down a layer, or add the "
                     "pair to ALLOWED_IN_FUNCTIONS with its reason):\n" + "\n".join(bad))


def test_allow_list_names_real_imports() -> None:
    """An entry whose import is gone must go too, so the list does not outlive its reason."""
    real = {(e.source, e.target) for e in EDGES if e.in_function}
    stale = sorted(set(ALLOWED_IN_FUNCTIONS) - real)
    assert not stale, f"allow-list entries with no such import: {stale}"


# ------------------------------------------------------------------- the checker itself
def test_checker_sees_function_imports_and_skips_type_checking() -> None:
    text = ("from typing import TYPE_CHECKING\nimport os\nif TYPE_CHECKING:\n"
            "    from .spec import AdapterSpec\nelse:\n    import json\n"
            "def f():\n    from .inject import adapter_sets\n"
            "class C:\n    def m(self):\n        import adarec.merge\n")
    seen = [(getattr(n, "module", None) or n.names[0].name, f)
            for n, f in _imports(ast.parse(text))]
    assert seen == [("typing", False), ("os", False), ("json", False), ("inject", True),
                    ("adarec.merge", True)]


@pytest.mark.parametrize(("source", "module", "name", "level", "expected"), [
    ("adarec.inject", "freezing", "x", 1, "adarec.freezing"),
    ("adarec.adapters.houlsby", None, "bottleneck", 1, "adarec.adapters.bottleneck"),
    ("adarec.adapters.houlsby", "registry", "x", 2, "adarec.registry"),
    ("adarec.rec.pretrained", "adarec.checkpoint", "save_adapters", 0,
     "adarec.checkpoint.adapter_checkpoints"),
    ("adarec.interop", "peft", "export_peft_lora", 1, "adarec.interop.peft"),
])
def test_checker_resolves_relative_and_package_imports(
    source: str, module: str | None, name: str, level: int, expected: str
) -> None:
    node = ast.ImportFrom(module=module, names=[ast.alias(name=name)], level=level)
    assert _resolve(_base(source, node), name) == expected


def test_checker_finds_a_cycle() -> None:
    saved = {k: set(v) for k, v in GRAPH.items()}
    try:
        GRAPH["adarec.errors"].add("adarec.inject")
        cycle = _cycle()
        assert cycle is not None and cycle[0] == cycle[-1] and "adarec.errors" in cycle
    finally:
        GRAPH.clear()
        GRAPH.update(saved)
