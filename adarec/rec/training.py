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

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from adarec.errors import ConfigError, TrainingError
from adarec.precision import autocast
from adarec.rec.early_stopping import EarlyStopping
from adarec.training_state import load_training_state, save_training_state


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


def batches(dataset: Sequence[Any], collate: Callable[[list[Any]], Any], order: Sequence[int],
            batch_size: int, start: int = 0) -> Iterator[Any]:
    """The batches of ``order`` from step ``start`` on (``drop_last=False``)."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= start <= n_batches(len(order), batch_size):
        raise ConfigError(f"start={start} is not a step of an epoch of "
                          f"{n_batches(len(order), batch_size)} batches")
    for i in range(start * batch_size, len(order), batch_size):
        yield collate([dataset[j] for j in order[i:i + batch_size]])


def train_epoch(model: nn.Module, dataset: Sequence[Any], collate: Callable[[list[Any]], Any],
                order: Sequence[int], optimizer: torch.optim.Optimizer, *, batch_size: int,
                precision: str = "auto", start: int = 0,
                after_step: Callable[[int, float], None] | None = None) -> float:
    """`train_step` on every batch of ``order`` from step ``start`` on; ``after_step(step,
    loss)`` runs after each (1-based step of the epoch: progress, saves). Returns the summed
    loss of the steps run. The quickstart and `adarec.rec.select_recipe` both train with it,
    so a candidate trains exactly as the chosen recipe later does."""
    total = 0.0
    for step, batch in enumerate(batches(dataset, collate, order, batch_size, start), start + 1):
        loss = train_step(model, batch, optimizer, precision)
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
               precision: str = "auto", clip_norm: float | None = 5.0) -> float:
    """One optimiser step on ``model.loss(batch)`` (bf16 autocast where ``precision`` says so,
    gradients clipped to ``clip_norm``); returns the loss. A NaN/inf loss raises `TrainingError`
    before the step, so the weights stay those of the last finite step."""
    with autocast(precision, "cpu"):
        loss = model.loss(batch)  # type: ignore[operator]
    check_loss(float(loss.detach()))
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


__all__ = ["PROTOCOLS", "batches", "check_loss", "epoch_order", "evaluate_protocols",
           "load_loop_state", "n_batches", "save_loop_state", "train_epoch", "train_step"]
