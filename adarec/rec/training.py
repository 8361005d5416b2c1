"""A training epoch that can stop at any step and resume bit for bit.

A ``DataLoader`` hides where it is in an epoch: after a kill, the epoch's order, the batches
already seen and the negative sampler's position are gone. Here an epoch is an explicit order
(`epoch_order`: the same ``randperm`` a shuffling ``DataLoader`` with that generator draws, so
results do not change), batches are cut from it from any step on (`batches`), and
`save_loop_state` / `load_loop_state` carry, on top of `adarec.save_training_state` (model,
optimizer, scheduler, torch and Python RNG), the numpy RNG, the data-order and sampler
generators and the early-stopping state (best value, counters, best weights).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from adarec.errors import ConfigError, TrainingError
from adarec.precision import autocast
from adarec.rec.early_stopping import EarlyStopping
from adarec.training_state import STATE_JSON, load_training_state, save_training_state

logger = logging.getLogger(__name__)


class Examples(Protocol):
    """What the loop reads training examples from: a length and indexing (a list, a
    `TrainDataset`, any map-style torch ``Dataset`` with ``__len__``)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...


def epoch_order(n: int, generator: torch.Generator) -> list[int]:
    """One epoch's example order, drawn as ``DataLoader(shuffle=True, generator=generator)``
    draws it (its iterator takes a worker base seed from the generator, the sampler a
    ``randperm``, and at the end of the epoch an empty remainder ``randperm``), so a loop moved
    off a DataLoader keeps its results, epoch after epoch."""
    torch.empty((), dtype=torch.int64).random_(generator=generator)  # the DataLoader's base seed
    order = torch.randperm(n, generator=generator).tolist()
    torch.randperm(n, generator=generator)  # RandomSampler's remainder draw (num_samples % n)
    return order


def n_batches(n: int, batch_size: int) -> int:
    return -(-n // batch_size)


def batches(dataset: Examples, collate: Callable[[list[Any]], Any], order: Sequence[int],
            batch_size: int, start: int = 0) -> Iterator[Any]:
    """The batches of ``order`` from step ``start`` on (``drop_last=False``)."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= start <= n_batches(len(order), batch_size):
        raise ConfigError(f"start={start} is not a step of an epoch of "
                          f"{n_batches(len(order), batch_size)} batches")
    for i in range(start * batch_size, len(order), batch_size):
        yield collate([dataset[j] for j in order[i:i + batch_size]])


def train_epoch(model: nn.Module, dataset: Examples, collate: Callable[[list[Any]], Any],
                order: Sequence[int], optimizer: torch.optim.Optimizer, *, batch_size: int,
                precision: str = "auto", start: int = 0,
                after_step: Callable[[int, float], None] | None = None) -> float:
    """`train_step` on every batch of ``order`` from step ``start`` on; ``after_step(step,
    loss)`` runs after each (1-based step of the epoch: progress, saves). Returns the summed
    loss of the steps run. `fit` trains with it, so every caller trains alike."""
    total = 0.0
    for step, batch in enumerate(batches(dataset, collate, order, batch_size, start), start + 1):
        loss = train_step(model, batch, optimizer, precision, step=step)
        total += loss
        if after_step is not None:
            after_step(step, loss)
    return total


PROTOCOLS = ("masked", "unmasked")
"""The user's history masked (adarec's default) or ranked too (RecBole's full sort)."""


def evaluate_protocols(model: Any, pairs: Sequence[tuple[Sequence[int], int]], max_len: int,
                       precision: str = "auto", ties: str = "pessimistic",
                       ks: Sequence[int] = (10,)) -> dict[str, dict[str, float]]:
    """HR / NDCG / MRR at ``ks`` of ``pairs`` under both `PROTOCOLS` (full ranking, ties
    against the target by default): what the quickstart reports and selection compares."""
    with autocast(precision, "cpu"):
        return {p: model.evaluate_ranking(pairs, ks=ks, metrics=("hr", "ndcg", "mrr"),
                                          max_len=max_len, exclude_history=p == "masked",
                                          ties=ties)
                for p in PROTOCOLS}


def check_loss(loss: float, step: int | None = None) -> float:
    """``loss``, or `TrainingError` when it is NaN/inf: a step on it would write NaN into every
    trained weight, and each later epoch would "evaluate" a model that no longer exists."""
    if not math.isfinite(loss):
        at = f" at step {step}" if step is not None else ""
        raise TrainingError(
            f"the training loss is {loss}{at}: training diverged (or the batch holds bad "
            "values); stopped before the optimiser step. Lower the learning rate, check the "
            "inputs, or train in fp32")
    return loss


def train_step(model: nn.Module, batch: Any, optimizer: torch.optim.Optimizer,
               precision: str = "auto", clip_norm: float | None = 5.0,
               step: int | None = None) -> float:
    """One optimiser step on ``model.loss(batch)`` (bf16 autocast where ``precision`` says so,
    gradients clipped to ``clip_norm``); returns the loss. A NaN/inf loss raises `TrainingError`
    (naming ``step``) before the step, so the weights stay those of the last finite step."""
    with autocast(precision, "cpu"):
        loss = model.loss(batch)  # type: ignore[operator]
    check_loss(float(loss.detach()), step)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip_norm is not None:
        nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], clip_norm)
    optimizer.step()
    return float(loss.item())


# ------------------------------------------------------------------------------ loop state
def _stopper_state(stopper: EarlyStopping) -> dict[str, Any]:
    return {"best": stopper.best, "best_step": stopper.best_step, "bad_steps": stopper.bad_steps,
            "steps": stopper.steps, "snapshot": dict(stopper._state)}


def _load_stopper(stopper: EarlyStopping, state: Mapping[str, Any], model: nn.Module) -> None:
    """Put a saved stopper back: counters, and the best weights (frozen parameters are watched
    again from their current values, which are the best step's: nothing has trained them)."""
    if state["best_step"] is not None:
        stopper._take_snapshot(model)
        stopper._state = dict(state["snapshot"])
    stopper.best, stopper.best_step = float(state["best"]), state["best_step"]
    stopper.bad_steps, stopper.steps = int(state["bad_steps"]), int(state["steps"])


def _numpy_rng() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    return {"kind": kind, "keys": torch.from_numpy(np.asarray(keys).astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss), "gauss": float(gauss)}


def _set_numpy_rng(state: Mapping[str, Any]) -> None:
    keys = state["keys"].numpy().astype(np.uint32)
    np.random.set_state((state["kind"], keys, state["pos"], state["has_gauss"], state["gauss"]))


def save_loop_state(path: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                    stopper: EarlyStopping | None = None,
                    generators: Mapping[str, torch.Generator] | None = None,
                    scheduler: Any = None, extra: Mapping[str, Any] | None = None) -> None:
    """`adarec.save_training_state` plus the numpy RNG, ``generators`` (data order, negative
    sampler ...) and ``stopper``; ``extra`` is the loop's own state (epoch, step, order ...)."""
    loop = {"numpy_rng": _numpy_rng(),
            "generators": {k: g.get_state() for k, g in (generators or {}).items()},
            "stopper": None if stopper is None else _stopper_state(stopper)}
    save_training_state(path, model=model, optimizer=optimizer, scheduler=scheduler,
                        extra={"loop": loop, "extra": dict(extra or {})})


def load_loop_state(path: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                    stopper: EarlyStopping | None = None,
                    generators: Mapping[str, torch.Generator] | None = None,
                    scheduler: Any = None) -> dict[str, Any]:
    """Load a `save_loop_state` folder in place (model, optimizer, scheduler, every RNG, the
    generators, the stopper) and return its ``extra``."""
    saved = load_training_state(path, model=model, optimizer=optimizer, scheduler=scheduler)
    loop = saved["loop"]
    mine, theirs = set(generators or {}), set(loop["generators"])
    if mine != theirs or (stopper is None) != (loop["stopper"] is None):
        raise ConfigError(f"{path} was saved with generators {sorted(theirs)} and "
                          f"{'a' if loop['stopper'] is not None else 'no'} stopper; given "
                          f"{sorted(mine)} and {'a' if stopper is not None else 'no'} stopper")
    for name, generator in (generators or {}).items():
        state: Tensor = loop["generators"][name]
        generator.set_state(state)
    _set_numpy_rng(loop["numpy_rng"])
    if stopper is not None:
        _load_stopper(stopper, loop["stopper"], model)
    invalidate = getattr(model, "invalidate_cache", None)
    if callable(invalidate):  # e.g. TransRec's item table was computed from other weights
        invalidate()
    extra: dict[str, Any] = saved["extra"]
    return extra


# ------------------------------------------------------------------------------ the loop
@dataclass(frozen=True)
class StepEnd:
    """What `fit` tells ``on_step`` after each optimiser step (progress bars, test kills)."""

    epoch: int
    step: int  # 1-based step of the epoch
    steps: int  # steps per epoch
    loss: float
    mean_loss: float  # of this epoch's steps so far (steps before a resume included)


@dataclass(frozen=True)
class EpochEnd:
    """What `fit` tells ``on_epoch`` after each epoch's validation (logs, pruners)."""

    epoch: int
    loss: float  # mean training loss of the epoch
    score: float | None  # the validation score (None without ``validate``)
    details: Any  # what ``validate`` returned beside the score
    improved: bool  # a new best score: the stopper took a snapshot
    seconds: float  # training seconds of the epoch, validation and saves excluded


@dataclass
class FitResult:
    """How a `fit` ended. ``stopped``: ``"epochs"`` (all run), ``"patience"`` (early
    stopping) or ``"callback"`` (``on_epoch`` returned True)."""

    epochs_run: int
    best_epoch: int | None
    best_score: float | None
    stopped: str
    losses: list[float] = field(default_factory=list)
    train_seconds: list[float] = field(default_factory=list)
    history: list[Any] = field(default_factory=list)  # ``validate``'s details per epoch
    resumed: bool = False


Validation = float | tuple[float, Any]
"""What ``validate(epoch)`` returns: the score (higher is better unless the stopper's mode
says otherwise), or the score and details kept per epoch (`FitResult.history`, JSON-able)."""


def _fresh_loop() -> dict[str, Any]:
    return {"epoch": 0, "step": 0, "order": None, "loss_sum": 0.0, "seconds": 0.0,
            "train_seconds": [], "losses": [], "history": [], "stopped": None}


def _loop_from_saved(saved: Mapping[str, Any]) -> dict[str, Any]:
    """The loop state of a saved ``extra``; states the paper study wrote before `fit` named
    the partial seconds ``spent``, the per-epoch seconds ``seconds`` and the history ``curve``."""
    if "spent" in saved:
        saved = {**saved, "seconds": saved["spent"], "train_seconds": saved["seconds"],
                 "history": saved.get("curve", [])}
    loop = _fresh_loop()
    loop.update({k: saved[k] for k in loop if k in saved})
    return loop


def fit(model: nn.Module, dataset: Examples, collate: Callable[[list[Any]], Any],
        optimizer: torch.optim.Optimizer, *, epochs: int, batch_size: int,
        generator: torch.Generator, validate: Callable[[int], Validation] | None = None,
        stopper: EarlyStopping | None = None, precision: str = "auto",
        state_dir: str | Path | None = None, resume: bool = False,
        save_every_steps: int | None = None,
        generators: Mapping[str, torch.Generator] | None = None,
        on_step: Callable[[StepEnd], None] | None = None,
        on_epoch: Callable[[EpochEnd], bool | None] | None = None,
        restore_best: bool = True) -> FitResult:
    """Train ``model`` for up to ``epochs`` epochs: the one epoch loop of adarec, so that the
    quickstart, the paper study and `select_recipe` train the same way and a fix lands once.

    Each epoch's order is `epoch_order` from ``generator`` (a shuffling DataLoader's), batches
    of ``batch_size`` go through `train_step` (a NaN/inf loss raises `TrainingError` naming the
    epoch and step), then ``validate(epoch)`` scores the model and ``stopper`` (an
    `EarlyStopping`) keeps the best weights and ends training when the score stops improving;
    at the end the best weights are put back (``restore_best``). ``on_step`` / ``on_epoch``
    see each step / epoch; ``on_epoch`` may return True to stop, or raise (a pruner).

    With ``state_dir`` the whole loop state (`save_loop_state`: model, optimizer, every RNG,
    ``generator`` as ``"order"`` and ``generators`` such as a negative sampler's, the stopper,
    the position in the epoch) is written atomically at each epoch end and every
    ``save_every_steps`` steps; ``resume=True`` continues from it when it is there, and the run
    ends bit for bit as one never interrupted.
    """
    if epochs < 0:
        raise ConfigError(f"epochs must be >= 0, got {epochs}")
    if save_every_steps is not None and save_every_steps < 0:
        raise ConfigError(f"save_every_steps must be >= 0 (0/None: epoch ends), got "
                          f"{save_every_steps}")
    if stopper is not None and validate is None:
        raise ConfigError("fit: a stopper needs validate= (the score it stops on)")
    if state_dir is None and (resume or save_every_steps):
        raise ConfigError("fit: resume and save_every_steps need state_dir=")
    if "order" in (generators or {}):
        raise ConfigError("fit: generators= holds the other generators; 'order' is generator=")
    rngs = {"order": generator, **(generators or {})}
    folder = None if state_dir is None else Path(state_dir)
    loop, resumed = _fresh_loop(), False
    if resume and folder is not None and (folder / STATE_JSON).is_file():
        loop = _loop_from_saved(load_loop_state(folder, model=model, optimizer=optimizer,
                                                stopper=stopper, generators=rngs))
        resumed = True
        logger.info("resumed from %s: epoch %d, after step %d", folder, loop["epoch"] + 1,
                    loop["step"])

    def save() -> None:
        if folder is not None:
            save_loop_state(folder, model=model, optimizer=optimizer, stopper=stopper,
                            generators=rngs, extra=loop)

    per_epoch = n_batches(len(dataset), batch_size)
    tick = 0.0

    def after_step(step: int, loss: float) -> None:
        nonlocal tick
        loop["loss_sum"] += loss
        loop["step"] = step
        if on_step is not None:
            on_step(StepEnd(loop["epoch"] + 1, step, per_epoch, loss, loop["loss_sum"] / step))
        if save_every_steps and step % save_every_steps == 0 and step < per_epoch:
            loop["seconds"] += time.perf_counter() - tick
            save()
            tick = time.perf_counter()

    while (loop["epoch"] < epochs and loop["stopped"] is None
           and not (stopper is not None and stopper.should_stop)):
        epoch = loop["epoch"] + 1
        if loop["order"] is None:
            loop["order"] = epoch_order(len(dataset), generator)
        model.train()
        tick = time.perf_counter()
        try:
            train_epoch(model, dataset, collate, loop["order"], optimizer,
                        batch_size=batch_size, precision=precision, start=loop["step"],
                        after_step=after_step)
        except TrainingError as exc:
            raise TrainingError(f"epoch {epoch}: {exc}") from exc
        seconds = loop["seconds"] + time.perf_counter() - tick
        loss = loop["loss_sum"] / max(per_epoch, 1)
        score, details, improved = None, None, False
        if validate is not None:
            got = validate(epoch)
            score, details = (float(got[0]), got[1]) if isinstance(got, tuple) else (float(got),
                                                                                     None)
            if stopper is not None:
                improved = stopper.step(score, model, epoch)
        loop["train_seconds"].append(seconds)
        loop["losses"].append(loss)
        loop["history"].append(details)
        loop.update(epoch=epoch, step=0, order=None, loss_sum=0.0, seconds=0.0)
        if on_epoch is not None and on_epoch(EpochEnd(epoch, loss, score, details, improved,
                                                      seconds)):
            loop["stopped"] = "callback"
        save()
    if loop["stopped"] is None:
        loop["stopped"] = "patience" if stopper is not None and stopper.should_stop else "epochs"
    best = stopper is not None and stopper.best_step is not None
    if restore_best and stopper is not None and best:
        stopper.restore(model)
    return FitResult(
        epochs_run=loop["epoch"], best_epoch=stopper.best_step if stopper is not None else None,
        best_score=stopper.best if stopper is not None and best else None,
        stopped=loop["stopped"], losses=list(loop["losses"]),
        train_seconds=list(loop["train_seconds"]), history=list(loop["history"]),
        resumed=resumed)


__all__ = ["PROTOCOLS", "EpochEnd", "Examples", "FitResult", "StepEnd", "Validation", "batches",
           "check_loss", "epoch_order", "evaluate_protocols", "fit", "load_loop_state",
           "n_batches", "save_loop_state", "train_epoch", "train_step"]
