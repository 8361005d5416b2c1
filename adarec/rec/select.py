"""A TransRec recipe picked on the user's own validation split (the quickstart's ``--method auto``).

The best configuration of one data set is not a good first answer for another: on a sparse
catalogue the side network with dot scores and in-batch negatives lost to the ID model while a
frozen encoder with ID fusion, cosine scores and a full softmax won by far. `select_recipe`
therefore trains a small, fixed set of candidates (`default_candidates`: side network and frozen
encoder, each with and without ID fusion, dot or cosine / 0.07, in-batch sampled or full
softmax) for a few epochs each, on the training split, compares them on validation NDCG@10 only
and returns the table and the pick; `save_recipe` / `load_recipe` keep the pick as JSON, to rerun
or reuse as a preset.

The search is optuna's (the optional extra ``adarec[auto]``): the fixed list enqueued as trials
of one categorical parameter and run in its order (cheapest first by default, so a time budget
cuts the dearest candidates, not random ones), a `MedianPruner` that stops a candidate whose
validation score after an epoch is below the median of the candidates finished so far, and
``time_budget`` as the study's timeout (checked between candidates). Candidates of one encoder
share its expensive part: one hidden-state cache for every side-network candidate (the backbone
is shared, each candidate's side network starts from the same initial weights) and one
precomputed item table for every frozen-encoder candidate, so a candidate's epoch costs about
an ID model's (a side network under the full softmax excepted: it encodes every item at every
step). Each candidate trains with the library's loop (`adarec.rec.training.fit`,
`evaluate_protocols`, `EarlyStopping`, `refuse_collapsed`), exactly as the chosen recipe is
trained afterwards; the pruner sits in `fit`'s ``on_epoch`` hook. The split's test pairs are
never read.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from adarec.errors import ConfigError, DataError, TrainingError
from adarec.folders import atomic_write
from adarec.rec.data import LeaveOneOutSplit, TrainCollator, TrainDataset
from adarec.rec.early_stopping import EarlyStopping
from adarec.rec.guards import refuse_collapsed
from adarec.rec.item_encoders import IDItemEncoder, PrecomputedItemEncoder
from adarec.rec.param_groups import param_groups
from adarec.rec.recipes import METHODS, apply_method
from adarec.rec.scoring import check_similarity
from adarec.rec.training import PROTOCOLS, EpochEnd, evaluate_protocols, fit
from adarec.rec.transrec import LOSS_NAMES, TransRec

logger = logging.getLogger(__name__)

RECIPE_FORMAT = "adarec.recipe"
RECIPE_VERSION = 1
METRIC = "ndcg@10"
"""What selection compares: validation NDCG@10 (under ``select``'s protocol)."""
ID_FUSIONS = (None, "add", "gate")
COSINE_TEMPERATURE = 0.07
"""Cosine scores lie in [-1, 1]: a softmax over them needs a temperature (UniSRec's 0.07)."""


@dataclass(frozen=True)
class Recipe:
    """The item-side and objective choices a candidate makes; everything else (widths,
    learning rate, data options) stays the caller's."""

    method: str = "side"
    id_fusion: str | None = None
    similarity: str = "dot"
    temperature: float = 1.0
    loss: str = "sampled_softmax"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"recipe method {self.method!r} is not one of {list(METHODS)}")
        if self.id_fusion not in ID_FUSIONS:
            raise ConfigError(f"recipe id_fusion {self.id_fusion!r} is not one of "
                              f"{list(ID_FUSIONS)}")
        if self.method == "id" and self.id_fusion:
            raise ConfigError("recipe method 'id' has no item text to fuse an ID embedding with: "
                              "id_fusion must be None")
        if self.loss not in LOSS_NAMES:
            raise ConfigError(f"recipe loss {self.loss!r} is not one of {list(LOSS_NAMES)}")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)):
            raise ConfigError(f"recipe temperature must be a number, got {self.temperature!r}")
        check_similarity(self.similarity, self.temperature)

    @property
    def name(self) -> str:
        """A short label for tables: ``side+id cos/0.07 full``."""
        scores = "dot" if self.similarity == "dot" else "cos"
        if self.temperature != 1.0:
            scores += f"/{self.temperature:g}"
        loss = {"sampled_softmax": "sampled", "full_softmax": "full"}.get(self.loss, self.loss)
        fusion = f"+id({self.id_fusion})" if self.id_fusion == "gate" else (
            "+id" if self.id_fusion else "")
        return f"{self.method}{fusion} {scores} {loss}"

    def num_negatives(self, given: int = 0) -> int:
        """Negatives per position this recipe trains with: ``given``, but at least one for a
        loss other than the in-batch sampled softmax (which alone can do with none)."""
        return given if self.loss == "sampled_softmax" else max(given, 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Recipe:
        """A recipe from `to_dict`'s keys; an unknown key is refused (a typo would otherwise
        silently train the default)."""
        if not isinstance(values, Mapping):
            raise ConfigError(f"a recipe is a JSON object, got {type(values).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"recipe keys {unknown} are not recipe fields {sorted(known)}")
        return cls(**values)


def default_candidates(methods: Sequence[str] = ("frozen", "side")) -> list[Recipe]:
    """Every combination of ``methods`` x loss (in-batch sampled softmax, full softmax) x ID
    fusion (none, add) x scores (dot, cosine / 0.07): 16 candidates for the two methods, in
    that order, cheapest first (a frozen table costs least; a side network under the full
    softmax encodes the whole catalogue every step), so a time budget cuts the dearest."""
    scores = (("dot", 1.0), ("cosine", COSINE_TEMPERATURE))
    return [Recipe(method, None if method == "id" else fusion, sim, temp, loss)
            for method, loss, fusion, (sim, temp) in itertools.product(
                methods, ("sampled_softmax", "full_softmax"), (None, "add"), scores)
            if not (method == "id" and fusion)]


@dataclass
class Candidate:
    """One row of the selection table: validation results only."""

    recipe: Recipe
    state: str = "not run"
    """``complete``, ``pruned`` (after ``epochs_run`` epochs), ``failed`` or ``not run``."""
    value: float | None = None
    """Best validation NDCG@10 under the selection protocol."""
    best_epoch: int | None = None
    epochs_run: int = 0
    valid: dict[str, dict[str, float]] = field(default_factory=dict)
    """Validation metrics of the best epoch, per protocol."""
    seconds: float = 0.0
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        row = asdict(self)
        row["recipe"] = self.recipe.to_dict()
        return row

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> Candidate:
        return cls(**{**row, "recipe": Recipe.from_dict(row["recipe"])})


@dataclass
class Selection:
    """What `select_recipe` found: the pick and every candidate's validation row."""

    recipe: Recipe
    candidates: list[Candidate]
    select: str = "masked"
    epochs: int = 2
    seed: int = 0

    @property
    def best(self) -> Candidate:
        return next(c for c in self.candidates if c.recipe == self.recipe
                    and c.state == "complete")

    def table(self) -> str:
        """The candidates as a Markdown table, best first (``*``: the pick)."""
        other = PROTOCOLS[1 - PROTOCOLS.index(self.select)]
        rows = sorted(self.candidates, key=lambda c: (c.state != "complete", c.state,
                                                      -(c.value if c.value is not None else -1)))
        lines = [f"| candidate | state | epochs (best) | valid NDCG@10 {self.select} | "
                 f"valid HR@10 {self.select} | valid NDCG@10 {other} | seconds |",
                 "|---|---|---|---|---|---|---|"]
        for c in rows:
            mine, theirs = c.valid.get(self.select, {}), c.valid.get(other, {})
            star = " *" if c.recipe == self.recipe and c.state == "complete" else ""
            lines.append(
                f"| {c.recipe.name}{star} | {c.state} | {c.epochs_run} ({c.best_epoch or '-'}) "
                f"| {_num(mine.get(METRIC))} | {_num(mine.get('hr@10'))} "
                f"| {_num(theirs.get(METRIC))} | {c.seconds:.0f} |")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"select": self.select, "metric": METRIC, "epochs": self.epochs,
                "seed": self.seed, "candidates": [c.to_dict() for c in self.candidates]}


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _optuna() -> Any:
    """optuna, or an `ImportError` that says how to get it (it is an optional extra)."""
    try:
        import optuna  # optional dependency
    except ImportError as exc:
        raise ImportError("select_recipe (--method auto) runs its search with optuna, which is "
                          "not installed: pip install 'adarec[auto]' (or pip install optuna)"
                          ) from exc
    return optuna


class _Candidates:
    """Builds each candidate's model, sharing what candidates of one encoder have in common:
    the frozen item table (frozen encoder) and the backbone with its hidden-state cache (side
    network). The caller's encoder is never changed (side networks go into a copy)."""

    def __init__(self, encoder: nn.Module | None, n_items: int, seed: int,
                 model_options: Mapping[str, Any], side_options: Mapping[str, Any]) -> None:
        self.encoder, self.n_items, self.seed = encoder, n_items, seed
        self.model_options, self.side_options = dict(model_options), dict(side_options)
        self._table: PrecomputedItemEncoder | None = None
        self._side: nn.Module | None = None
        self._side_init: list[tuple[nn.Parameter, torch.Tensor]] = []

    def model(self, recipe: Recipe, negatives: int) -> TransRec:
        """A fresh model for ``recipe``: the same initial weights whichever candidates ran
        before it (seeded here, and again before training)."""
        options = {**self.model_options, "loss": recipe.loss, "similarity": recipe.similarity,
                   "temperature": recipe.temperature, "id_fusion": recipe.id_fusion,
                   "num_negatives": recipe.num_negatives(negatives)}
        torch.manual_seed(self.seed)
        if recipe.method == "id":
            options.pop("id_fusion")
            dim = int(options.pop("user_dim", 64))
            options["dtl"] = False
            model = TransRec(IDItemEncoder(self.n_items, dim), user_dim=dim, **options)
            apply_method(model, "id")
        elif self.encoder is None:
            raise ConfigError(f"candidate {recipe.name!r} needs an item encoder; none was given")
        elif recipe.method == "frozen":
            if self._table is None:
                self._table = PrecomputedItemEncoder.from_encoder(self.encoder)
            model = TransRec(self._table, **options)
            apply_method(model, "frozen")
        elif recipe.method == "side" and self._side is not None:
            model = TransRec(self._side, **options)
            model.set_policy("adapters")
            with torch.no_grad():  # the side network as first injected; the cache stays valid
                for param, init in self._side_init:
                    param.copy_(init)
        else:
            encoder = copy.deepcopy(self.encoder)
            model = TransRec(encoder, **options)
            side = self.side_options if recipe.method == "side" else {}
            apply_method(model, recipe.method, **side)
            if recipe.method == "side":
                self._side = encoder
                self._side_init = [(p, p.detach().clone()) for p in encoder.parameters()
                                   if p.requires_grad]
        torch.manual_seed(self.seed)
        return model


def select_recipe(
    split: LeaveOneOutSplit,
    item_encoder: nn.Module | None = None,
    *,
    n_items: int | None = None,
    candidates: Iterable[Recipe] | None = None,
    epochs: int = 2,
    time_budget: float | None = None,
    select: str = "masked",
    seed: int = 0,
    prune: bool = True,
    patience: int | None = None,
    max_len: int = 20,
    batch_size: int = 64,
    lr: float = 1e-3,
    encoder_lr: float = 5e-5,
    sampling: str = "windows",
    negatives: int = 0,
    precision: str = "auto",
    model_options: Mapping[str, Any] | None = None,
    side_options: Mapping[str, Any] | None = None,
    path: str | Path | None = None,
    echo: Callable[[str], Any] | None = print,
) -> Selection:
    """Train each of ``candidates`` (default: `default_candidates`) for at most ``epochs``
    epochs on ``split``'s training data and pick the one with the best validation NDCG@10
    (``select``: ``"masked"`` or ``"unmasked"`` protocol); ``split.test`` is never read.

    ``item_encoder``: the item text encoder the candidates build on (e.g. a `TextItemEncoder`;
    left unchanged); ``n_items`` defaults to its item count. ``prune``: stop a candidate after
    an epoch whose validation score is below the median of the finished candidates' at that
    epoch (optuna's `MedianPruner`, after three finished candidates). ``time_budget``: seconds
    after which no new candidate starts (the one running finishes; the first always runs).
    ``patience``: early stopping within a candidate (None: all ``epochs``). ``model_options``
    go to `TransRec` (``user_dim``, ``dtl``, ``dropout``, ``n_layers``, ``n_heads``),
    ``side_options`` to `apply_method` for side candidates (``side_width``, ``side_states``).
    ``path``: where the pick is saved (`save_recipe`). ``echo`` receives the table (None: only
    logged). Raises `TrainingError` when no candidate completes."""
    optuna = _optuna()
    if select not in PROTOCOLS:
        raise ConfigError(f"select={select!r} is not one of {list(PROTOCOLS)}")
    if epochs < 1:
        raise ConfigError(f"epochs must be >= 1, got {epochs}")
    if time_budget is not None and not time_budget > 0:
        raise ConfigError(f"time_budget must be a number of seconds > 0, got {time_budget}")
    recipes = list(default_candidates() if candidates is None else candidates)
    if not recipes or len(set(recipes)) != len(recipes):
        raise ConfigError(f"candidates must be distinct recipes, and at least one: {recipes}")
    if n_items is None:
        if item_encoder is None:
            raise ConfigError("give item_encoder, or n_items for ID-only candidates")
        n_items = int(item_encoder.n_items)  # type: ignore[arg-type]
    valid = split.valid
    if not valid:
        raise DataError("the split has no validation pairs: selection compares candidates on "
                        "validation only")
    dataset = TrainDataset.for_split(split, max_len, sampling=sampling)
    if len(dataset) == 0:
        raise DataError("the split has no training examples")
    options = {"max_len": max_len, **(model_options or {})}
    build = _Candidates(item_encoder, n_items, seed, options, side_options or {})
    rows = [Candidate(r) for r in recipes]
    began = time.perf_counter()

    def objective(trial: Any) -> float:
        row = rows[trial.suggest_categorical("candidate", list(range(len(rows))))]
        row.state, start = "failed", time.perf_counter()
        try:
            return _train_candidate(row, trial, optuna, build, dataset, valid, n_items,
                                    epochs=epochs, select=select, seed=seed, patience=patience,
                                    max_len=max_len, batch_size=batch_size, lr=lr,
                                    encoder_lr=encoder_lr, negatives=negatives,
                                    precision=precision)
        except TrainingError as exc:
            row.error = str(exc)
            logger.warning("candidate %s failed: %s", row.recipe.name, exc)
            raise
        finally:
            row.seconds = time.perf_counter() - start

    sampler = optuna.samplers.TPESampler(seed=seed)  # never asked: every trial is enqueued
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0) if prune
              else optuna.pruners.NopPruner())
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the table below says it all
    try:
        study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
        for index in range(len(rows)):  # the fixed grid, in the order given
            study.enqueue_trial({"candidate": index})
        study.optimize(objective, n_trials=1, catch=(TrainingError,))  # one, whatever the budget
        left = None if time_budget is None else time_budget - (time.perf_counter() - began)
        if len(rows) > 1 and (left is None or left > 0):
            study.optimize(objective, n_trials=len(rows) - 1, timeout=left,
                           catch=(TrainingError,))
    finally:
        optuna.logging.set_verbosity(verbosity)
    done = [r for r in rows if r.state == "complete"]
    if not done:
        raise TrainingError("no candidate recipe completed its training (failed, pruned or "
                            "out of time): " + "; ".join(f"{r.recipe.name}: {r.state}"
                                                          f"{' ' + r.error if r.error else ''}"
                                                          for r in rows))
    best = max(done, key=lambda r: (r.value, -rows.index(r)))  # a tie: the earlier candidate
    selection = Selection(best.recipe, rows, select, epochs, seed)
    table = selection.table()
    logger.info("recipe picked on validation %s NDCG@10: %s\n%s", select, best.recipe.name,
                table)
    if echo is not None:
        echo(table)
    if path is not None:
        save_recipe(path, best.recipe, selection)
    return selection


def _train_candidate(row: Candidate, trial: Any, optuna: Any, build: _Candidates,
                     dataset: TrainDataset, valid: Sequence[tuple[list[int], int]],
                     n_items: int, *, epochs: int, select: str, seed: int,
                     patience: int | None, max_len: int, batch_size: int, lr: float,
                     encoder_lr: float, negatives: int, precision: str) -> float:
    """Train one candidate with `fit`, as the quickstart trains, reporting each epoch's
    validation score to the pruner; returns the best score."""
    model = build.model(row.recipe, negatives)
    optimizer = torch.optim.AdamW(param_groups(model, lr=lr, base_lr=encoder_lr))
    collator = TrainCollator(n_items, max_len, row.recipe.num_negatives(negatives), seed)
    stopper = EarlyStopping(patience=patience)

    def validate(epoch: int) -> tuple[float, dict[str, dict[str, float]]]:
        scores = evaluate_protocols(model, valid, max_len, precision)
        refuse_collapsed(model, valid, max_len, epoch)
        return scores[select][METRIC], scores

    def on_epoch(end: EpochEnd) -> None:
        value = cast(float, end.score)  # validate= is given: every epoch has a score
        row.epochs_run = end.epoch
        if end.improved:
            row.value, row.best_epoch, row.valid = value, end.epoch, end.details
        logger.info("candidate %s, epoch %d: valid NDCG@10 %.4f (%s)", row.recipe.name,
                    end.epoch, value, select)
        trial.report(value, end.epoch)
        if end.epoch < epochs and trial.should_prune():
            row.state = "pruned"
            raise optuna.TrialPruned()

    fit(model, dataset, collator, optimizer, epochs=epochs,
        batch_size=batch_size, generator=torch.Generator().manual_seed(seed),
        validate=validate, stopper=stopper, precision=precision, on_epoch=on_epoch,
        restore_best=False)
    if row.value is None or not math.isfinite(row.value):
        raise TrainingError(f"candidate {row.recipe.name}: no finite validation score")
    row.state = "complete"
    return row.value


# ------------------------------------------------------------------------------ the file
def save_recipe(path: str | Path, recipe: Recipe, selection: Selection | None = None) -> Path:
    """Write ``recipe`` (and the validation table it was picked from) as JSON, atomically:
    the file `load_recipe` and the quickstart's ``--recipe FILE`` read."""
    doc: dict[str, Any] = {"format": RECIPE_FORMAT, "version": RECIPE_VERSION,
                           "recipe": recipe.to_dict()}
    if selection is not None:
        doc["selection"] = selection.to_dict()
    return atomic_write(path, json.dumps(doc, indent=2, allow_nan=False) + "\n")


def load_recipe(path: str | Path) -> Recipe:
    """The recipe of a `save_recipe` file (or of a plain JSON object of recipe fields, a
    preset written by hand)."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"recipe file {path} not found") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"recipe file {path} is not JSON: {exc}") from None
    if isinstance(doc, dict) and "format" in doc:
        if doc["format"] != RECIPE_FORMAT or doc.get("version") != RECIPE_VERSION:
            raise ConfigError(f"{path} holds format {doc['format']!r} version "
                              f"{doc.get('version')!r}; expected {RECIPE_FORMAT!r} version "
                              f"{RECIPE_VERSION}")
        doc = doc.get("recipe")
    try:
        return Recipe.from_dict(doc)
    except TypeError as exc:
        raise ConfigError(f"{path}: not a recipe ({exc})") from None


def load_selection(path: str | Path) -> Selection | None:
    """The validation table saved with a recipe (None for a hand-written preset)."""
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(doc, dict) or "selection" not in doc:
        return None
    s = doc["selection"]
    return Selection(load_recipe(path), [Candidate.from_dict(r) for r in s["candidates"]],
                     s["select"], s["epochs"], s["seed"])


__all__ = ["COSINE_TEMPERATURE", "Candidate", "Recipe", "Selection", "default_candidates",
           "load_recipe", "load_selection", "save_recipe", "select_recipe"]
