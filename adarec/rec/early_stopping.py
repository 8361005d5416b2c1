"""Early stopping on a validation metric, for training loops that stay with the caller."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from adarec.errors import AdapterStateError, ConfigError, StateMismatchError


class EarlyStopping:
    """Keeps the best-scoring weights seen so far and says when to stop.

    Call `step` once per evaluation with the validation value (higher is better unless
    ``mode="min"``); it snapshots the model's trainable parameters and persistent buffers when
    the value improves by more than ``min_delta``, and `should_stop` turns true after
    ``patience`` evaluations without improvement (``patience=None``: never; the best weights
    are still kept). `restore` copies the best snapshot back in place, so optimisers and
    injected adapters keep pointing at the same tensors. Only trainable tensors are
    snapshotted: frozen weights cannot change, and copying a frozen BERT every epoch would
    cost more than the epoch. A NaN value never counts as an improvement.

        stopper = EarlyStopping(patience=3)
        for epoch in range(1, max_epochs + 1):
            train_one_epoch(model)
            if stopper.step(model.evaluate_ranking(split.valid)["ndcg@10"], model, epoch):
                print("new best")
            if stopper.should_stop:
                break
        stopper.restore(model)
    """

    def __init__(
        self, patience: int | None = 3, mode: str = "max", min_delta: float = 0.0
    ) -> None:
        if patience is not None and patience < 1:
            raise ConfigError(f"patience must be >= 1 or None, got {patience}")
        if mode not in ("max", "min"):
            raise ConfigError(f"mode must be 'max' or 'min', got {mode!r}")
        if min_delta < 0:
            raise ConfigError(f"min_delta must be >= 0, got {min_delta}")
        self.patience, self.mode, self.min_delta = patience, mode, min_delta
        self.best = -math.inf if mode == "max" else math.inf
        self.best_step: int | None = None
        self.bad_steps = 0
        self.steps = 0
        self._state: dict[str, Tensor] = {}

    def _improves(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.mode == "max":
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def step(self, value: float, model: nn.Module, step: int | None = None) -> bool:
        """Record one validation ``value`` of ``model``; True when it is the new best.
        ``step`` (e.g. the epoch) is what `best_step` reports; default: the call count."""
        self.steps += 1
        if not self._improves(float(value)):
            self.bad_steps += 1
            return False
        self.best, self.bad_steps = float(value), 0
        self.best_step = self.steps if step is None else step
        self._state = _snapshot(model)
        return True

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad_steps >= self.patience

    @torch.no_grad()
    def restore(self, model: nn.Module) -> None:
        """Copy the best snapshot back into ``model`` (in place); an error before any step."""
        if self.best_step is None:
            raise AdapterStateError("EarlyStopping.restore: no validation value was recorded yet")
        current = dict(model.named_parameters()) | dict(model.named_buffers())
        missing = [name for name in self._state if name not in current]
        if missing:
            raise StateMismatchError(
                f"the model has no tensor(s) {missing[:5]} from the snapshot: was it changed "
                "(adapters ejected, modules replaced) after the best step?")
        for name, value in self._state.items():
            current[name].copy_(value)
        invalidate = getattr(model, "invalidate_cache", None)
        if callable(invalidate):  # e.g. TransRec's item table
            invalidate()


def _snapshot(model: nn.Module) -> dict[str, Tensor]:
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    persistent = set(model.state_dict(keep_vars=True))
    buffers = {n: b.detach().clone() for n, b in model.named_buffers() if n in persistent}
    return trainable | buffers


__all__ = ["EarlyStopping"]
