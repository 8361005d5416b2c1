"""`select_recipe`: candidates trained on the training split, picked on validation only, the pick
saved as JSON (tiny random BERT items, tiny data, CPU)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from tiny_transrec import N_ITEMS, text_items

import adarec.folders as folders
import adarec.rec.select as select_module
from adarec.adapters.side import side_networks
from adarec.errors import ConfigError, DataError
from adarec.rec.data import LeaveOneOutSplit
from adarec.rec.select import (
    Recipe,
    default_candidates,
    load_recipe,
    load_selection,
    save_recipe,
    select_recipe,
)
from adarec.rec.state_cache import HiddenStateCache
from adarec.rec.table_items import PrecomputedItemEncoder

needs_optuna = pytest.mark.skipif(importlib.util.find_spec("optuna") is None,
                                  reason="optuna (adarec[auto]) is not installed")

CANDIDATES = [Recipe("side"), Recipe("frozen", "add", "cosine", 0.07, "full_softmax"),
              Recipe("side", "add", "cosine", 0.07, "sampled_softmax")]


class NoTestSplit(LeaveOneOutSplit):
    """A split whose test pairs raise when anything reads them."""

    @property  # type: ignore[override]
    def test(self) -> list[tuple[list[int], int]]:
        raise AssertionError("selection read the test pairs")


def split() -> LeaveOneOutSplit:
    seqs = [[(u + 2 * i) % N_ITEMS + 1 for i in range(6 + u % 3)] for u in range(16)]
    s = LeaveOneOutSplit(list(range(16)), [q[:-2] for q in seqs],
                         [(q[:-2], q[-2]) for q in seqs], [(q[:-1], q[-1]) for q in seqs])
    s.__class__ = NoTestSplit  # the property wins over the field's instance value
    return s


def run(candidates: list[Recipe] = CANDIDATES, **kw: object) -> select_module.Selection:
    options = dict(epochs=2, seed=0, max_len=5, batch_size=4, precision="fp32",
                   model_options={"user_dim": 16, "dropout": 0.1}, side_options={"side_width": 8},
                   echo=None)
    torch.manual_seed(0)  # the tiny BERT's weights
    return select_recipe(split(), text_items(0), candidates=candidates, **{**options, **kw})


def values(selection: select_module.Selection) -> dict[Recipe, float | None]:
    return {c.recipe: c.value for c in selection.candidates}


@needs_optuna
def test_picks_on_validation_deterministically_without_reading_test() -> None:
    with pytest.raises(AssertionError, match="read the test"):
        _ = split().test  # the guard works
    first = run()
    assert all(c.state == "complete" and c.epochs_run == 2 for c in first.candidates)
    assert first.recipe == max(first.candidates, key=lambda c: c.value or -1.0).recipe
    assert first.best.value == max(v for v in values(first).values() if v is not None)
    again = run(list(reversed(CANDIDATES)))  # another order: the same scores, the same pick
    assert values(again) == values(first)
    assert again.recipe == first.recipe
    assert all(set(c.valid) == {"masked", "unmasked"} for c in first.candidates)
    table = first.table()
    assert table.count("\n") == len(CANDIDATES) + 1 and f"{first.recipe.name} *" in table


@needs_optuna
def test_unmasked_select_compares_unmasked_scores() -> None:
    picked = run(CANDIDATES[:2], select="unmasked")
    assert all(c.value == c.valid["unmasked"]["ndcg@10"] for c in picked.candidates)


@needs_optuna
def test_candidates_of_one_encoder_share_its_cache_and_table(
        monkeypatch: pytest.MonkeyPatch) -> None:
    builds: list[int] = []
    tables: list[int] = []
    build, from_encoder = HiddenStateCache.build, PrecomputedItemEncoder.from_encoder.__func__

    def counted_build(*a: object, **k: object) -> HiddenStateCache:
        builds.append(1)
        return build(*a, **k)  # type: ignore[arg-type]

    def counted_table(cls: type, *a: object, **k: object) -> PrecomputedItemEncoder:
        tables.append(1)
        return from_encoder(cls, *a, **k)  # type: ignore[no-any-return]

    monkeypatch.setattr(HiddenStateCache, "build", staticmethod(counted_build))
    monkeypatch.setattr(PrecomputedItemEncoder, "from_encoder", classmethod(counted_table))
    encoder = text_items(0)
    select_recipe(split(), encoder, candidates=[*CANDIDATES, Recipe("frozen")], epochs=1,
                  max_len=5, batch_size=4, precision="fp32", model_options={"user_dim": 16},
                  side_options={"side_width": 8}, echo=None)
    assert (len(builds), len(tables)) == (1, 1)
    assert side_networks(encoder.model, active_only=False) == []  # the caller's encoder as given


@needs_optuna
def test_time_budget_stops_starting_candidates() -> None:
    picked = run(time_budget=1e-6)
    states = [c.state for c in picked.candidates]
    assert states == ["complete", "not run", "not run"]  # the first, in the order given
    assert "not run" in picked.table()


@needs_optuna
def test_the_pick_is_saved_as_json_and_read_back(tmp_path: Path) -> None:
    file = tmp_path / "presets" / "recipe.json"
    picked = run(CANDIDATES[:2], path=file)
    assert load_recipe(file) == picked.recipe
    doc = json.loads(file.read_text())
    assert doc["format"] == "adarec.recipe" and doc["selection"]["metric"] == "ndcg@10"
    again = load_selection(file)
    assert again is not None and again.table() == picked.table()
    assert [p.name for p in file.parent.iterdir()] == ["recipe.json"]  # no temporary left
    save_recipe(file, Recipe("frozen", "add"))  # replaced whole
    assert load_recipe(file) == Recipe("frozen", "add") and load_selection(file) is None
    preset = tmp_path / "preset.json"  # a hand-written preset: just the fields
    preset.write_text(json.dumps({"method": "frozen", "similarity": "cosine",
                                  "temperature": 0.07}))
    assert load_recipe(preset) == Recipe("frozen", None, "cosine", 0.07)


@pytest.mark.parametrize(("text", "match"), [
    ('{"method": "side", "lr": 1}', r"\['lr'\] are not recipe fields"),
    ('{"method": "sides"}', "method 'sides' is not one of"),
    ('{"method": "id", "id_fusion": "add"}', "id_fusion must be None"),
    ('{"similarity": "cosine", "temperature": 0}', "temperature"),
    ('{"format": "other", "recipe": {}}', "expected 'adarec.recipe'"),
    ("[1, 2]", "a recipe is a JSON object"),
    ("{not json", "is not JSON"),
])
def test_bad_recipe_files_are_refused_by_name(tmp_path: Path, text: str, match: str) -> None:
    file = tmp_path / "recipe.json"
    file.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_recipe(file)


@needs_optuna
def test_missing_file_and_bad_arguments_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_recipe(tmp_path / "none.json")
    with pytest.raises(ConfigError, match="select='both'"):
        run(select="both")
    with pytest.raises(ConfigError, match="distinct"):
        run([Recipe(), Recipe()])
    empty = LeaveOneOutSplit([0], [[1, 2]], [], [([1, 2], 3)])
    with pytest.raises(DataError, match="no validation pairs"):
        select_recipe(empty, text_items(0), echo=None)


def test_default_grid_covers_method_fusion_scores_and_loss() -> None:
    grid = default_candidates()
    assert len(grid) == len(set(grid)) == 16
    assert grid[0] == Recipe("frozen") and grid[-1].method == "side"  # cheapest first
    assert grid[-1].loss == "full_softmax"
    for axis in ("method", "id_fusion", "similarity", "loss"):
        assert len({getattr(r, axis) for r in grid}) == 2
    assert {r.temperature for r in grid if r.similarity == "cosine"} == {0.07}
    assert Recipe(loss="full_softmax").num_negatives(0) == 1 and Recipe().num_negatives(0) == 0


def test_missing_optuna_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna now raises ImportError
    with pytest.raises(ImportError, match=r"adarec\[auto\]"):
        run()


@needs_optuna
def test_id_candidates_need_no_encoder() -> None:
    picked = select_recipe(split(), None, n_items=N_ITEMS, candidates=[Recipe("id")], epochs=1,
                           max_len=5, batch_size=4, precision="fp32",
                           model_options={"user_dim": 16}, echo=None)
    assert picked.recipe == Recipe("id") and picked.best.epochs_run == 1
    with pytest.raises(ConfigError, match="needs an item encoder"):
        select_recipe(split(), None, n_items=N_ITEMS, candidates=[Recipe("frozen")],
                      echo=None)



def test_a_failed_write_keeps_the_old_recipe(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "recipe.json"
    save_recipe(file, Recipe("frozen"))

    def fail(*_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(folders.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        save_recipe(file, Recipe("side"))
    assert load_recipe(file) == Recipe("frozen")
    assert [p.name for p in tmp_path.iterdir()] == ["recipe.json"]  # no temporary left
