"""Early stopping on a validation metric, for training loops that stay with the caller."""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_pre_hook
from torch.utils.hooks import RemovableHandle

from adarec.errors import AdapterStateError, ConfigError, StateMismatchError


@dataclass
class _Frozen:
    """A parameter frozen at the best step: held by reference, copied only if it may change."""

    tensor: Tensor
    version: int
    data_ptr: int
    copy: Tensor | None = None

    def unchanged(self) -> bool:
        return self.tensor._version == self.version and self.tensor.data_ptr() == self.data_ptr


class EarlyStopping:
    """Keeps the best-scoring weights seen so far and says when to stop.

    Call `step` once per evaluation with the validation value (higher is better unless
    ``mode="min"``); it snapshots the model when the value improves by more than ``min_delta``,
    and `should_stop` turns true after ``patience`` evaluations without improvement
    (``patience=None``: never; the best weights are still kept). `restore` copies the best
    snapshot back in place (every parameter and persistent buffer of the best step), so
    optimisers and injected adapters keep pointing at the same tensors. A NaN value never
    counts as an improvement.

    Copying a frozen BERT every epoch would cost more than the epoch, so trainable tensors and
    buffers are copied at the best step and frozen parameters are only watched: the first
    optimiser step that would update one of them (it was unfrozen later, e.g. policy "frozen"
    then "adapters") copies it just before the update. A frozen parameter changed by any other
    in-place write is seen through its version counter, and `restore` refuses rather than give
    back a model that never existed; ``copy_frozen=True`` copies every tensor at each best step
    instead (writes through ``.data`` bypass version counters: use it if you do those).

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
        self, patience: int | None = 3, mode: str = "max", min_delta: float = 0.0,
        copy_frozen: bool = False,
    ) -> None:
        if patience is not None and patience < 1:
            raise ConfigError(f"patience must be >= 1 or None, got {patience}")
        if mode not in ("max", "min"):
            raise ConfigError(f"mode must be 'max' or 'min', got {mode!r}")
        if min_delta < 0:
            raise ConfigError(f"min_delta must be >= 0, got {min_delta}")
        self.patience, self.mode, self.min_delta = patience, mode, min_delta
        self.copy_frozen = copy_frozen
        self.best = -math.inf if mode == "max" else math.inf
        self.best_step: int | None = None
        self.bad_steps = 0
        self.steps = 0
        self._state: dict[str, Tensor] = {}
        self._frozen: dict[str, _Frozen] = {}
        self._hook: RemovableHandle | None = None

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
        self._take_snapshot(model)
        return True

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad_steps >= self.patience

    def _take_snapshot(self, model: nn.Module) -> None:
        self._release_hook()
        persistent = set(model.state_dict(keep_vars=True))
        self._state = {n: b.detach().clone() for n, b in model.named_buffers() if n in persistent}
        self._frozen = {}
        for name, p in model.named_parameters():
            if p.requires_grad or self.copy_frozen:
                self._state[name] = p.detach().clone()
            else:
                self._frozen[name] = _Frozen(p, p._version, p.data_ptr())
        if self._frozen:
            self._hook = _watch(self)

    def _before_optimizer_step(self) -> None:
        """Copy every watched parameter the coming optimiser step may update."""
        for entry in self._frozen.values():
            if entry.copy is None and entry.tensor.grad is not None and entry.unchanged():
                entry.copy = entry.tensor.detach().clone()
        if all(entry.copy is not None for entry in self._frozen.values()):
            self._release_hook()

    def _release_hook(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    @torch.no_grad()
    def restore(self, model: nn.Module) -> None:
        """Copy the best snapshot back into ``model`` (in place); an error before any step."""
        if self.best_step is None:
            raise AdapterStateError("EarlyStopping.restore: no validation value was recorded yet")
        current = dict(model.named_parameters()) | dict(model.named_buffers())
        missing = [name for name in [*self._state, *self._frozen] if name not in current]
        if missing:
            raise StateMismatchError(
                f"the model has no tensor(s) {missing[:5]} from the snapshot: was it changed "
                "(adapters ejected, modules replaced) after the best step?")
        lost = [name for name, entry in self._frozen.items() if entry.copy is None
                and (current[name] is not entry.tensor or not entry.unchanged())]
        if lost:
            raise StateMismatchError(
                f"EarlyStopping.restore: parameter(s) {lost[:5]} were frozen at the best step and "
                "have been written since outside an optimiser step, so their best values are "
                "gone; pass copy_frozen=True to EarlyStopping to copy every tensor at each "
                "best step")
        for name, value in self._state.items():
            current[name].copy_(value)
        for name, entry in self._frozen.items():
            if entry.copy is not None:
                current[name].copy_(entry.copy)
                entry.copy, entry.version = None, entry.tensor._version
        if self._frozen:  # restored values may be trained again and restored again
            self._release_hook()
            self._hook = _watch(self)
        invalidate = getattr(model, "invalidate_cache", None)
        if callable(invalidate):  # e.g. TransRec's item table
            invalidate()


def _watch(stopper: EarlyStopping) -> RemovableHandle:
    """A global optimiser pre-step hook that holds the stopper weakly (no leak, no cycle)."""
    ref = weakref.ref(stopper)

    def hook(*_: object) -> None:
        target = ref()
        if target is not None:
            target._before_optimizer_step()

    return register_optimizer_step_pre_hook(hook)


__all__ = ["EarlyStopping"]
