from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from adarec.rec.early_stopping import EarlyStopping


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.Linear(3, 1))
    model[0].weight.requires_grad_(False)  # frozen: never snapshotted
    return model


def test_keeps_the_best_weights_and_stops_after_patience() -> None:
    model = _model()
    stopper = EarlyStopping(patience=2)
    history = []
    for epoch, value in enumerate([0.1, 0.3, 0.2, 0.25, 0.9], start=1):
        with torch.no_grad():
            model[2].weight.add_(1.0)
        model(torch.randn(4, 3))  # moves BatchNorm's running stats (persistent buffers)
        improved = stopper.step(value, model, epoch)
        history.append(improved)
        if improved:
            best = {k: v.clone() for k, v in model.state_dict().items()}
        if stopper.should_stop:
            break
    assert history == [True, True, False, False] and epoch == 4
    assert stopper.best == 0.3 and stopper.best_step == 2
    stopper.restore(model)
    for k, v in model.state_dict().items():
        assert torch.equal(v, best[k]), k
    assert "0.weight" not in stopper._state


def test_min_mode_min_delta_nan_and_no_patience() -> None:
    model = _model()
    stopper = EarlyStopping(patience=None, mode="min", min_delta=0.1)
    assert stopper.step(1.0, model)
    assert not stopper.step(0.95, model)  # not better by more than min_delta
    assert not stopper.step(math.nan, model)
    assert stopper.step(0.5, model) and stopper.best_step == 4
    assert not stopper.should_stop


def test_restore_before_any_step_and_bad_arguments_are_refused() -> None:
    with pytest.raises(RuntimeError, match="no validation value"):
        EarlyStopping().restore(_model())
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(patience=0)
    with pytest.raises(ValueError, match="mode"):
        EarlyStopping(mode="up")
    with pytest.raises(ValueError, match="min_delta"):
        EarlyStopping(min_delta=-1.0)


def test_restore_refuses_a_changed_model() -> None:
    stopper = EarlyStopping()
    stopper.step(1.0, _model())
    with pytest.raises(KeyError, match="no tensor"):
        stopper.restore(nn.Linear(3, 1))


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    optimizer.zero_grad(set_to_none=True)
    model(torch.randn(4, 3)).pow(2).sum().backward()
    optimizer.step()


def test_a_parameter_frozen_at_the_best_step_and_unfrozen_later_is_restored() -> None:
    """Staged schedule: 'frozen' until the best step, then everything trains; restore must give
    back the model of the best step, the weight that was frozen then included."""
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    _train_step(model, optimizer)
    stopper = EarlyStopping(patience=None)
    assert stopper.step(1.0, model)
    best = {k: v.clone() for k, v in model.state_dict().items()}
    model[0].weight.requires_grad_(True)  # unfrozen after the best step
    for _ in range(3):
        _train_step(model, optimizer)
    assert not torch.equal(model[0].weight, best["0.weight"])
    assert not stopper.step(0.5, model)
    stopper.restore(model)
    for k, v in model.state_dict().items():
        assert torch.equal(v, best[k]), k


def test_a_frozen_parameter_written_outside_an_optimizer_is_refused_or_copied() -> None:
    model = _model()
    stopper = EarlyStopping()
    stopper.step(1.0, model)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    with pytest.raises(KeyError, match=r"frozen at the best step.*copy_frozen=True"):
        stopper.restore(model)
    model = _model()
    best = model[0].weight.clone()
    stopper = EarlyStopping(copy_frozen=True)
    stopper.step(1.0, model)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    stopper.restore(model)
    assert torch.equal(model[0].weight, best)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sets(st.integers(0, 5)), st.integers(0, 2), st.floats(0, 1)),
                min_size=1, max_size=6))
def test_restore_gives_back_the_best_model_under_any_freeze_schedule(
    schedule: list[tuple[set[int], int, float]],
) -> None:
    """Each epoch: choose which of the 6 parameter tensors train, take 0-2 optimiser steps
    (BatchNorm buffers move too), evaluate; restore must equal the state at the best value."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.Linear(3, 1))
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    stopper = EarlyStopping(patience=None)
    best: dict[str, torch.Tensor] | None = None
    for trainable, steps, value in schedule:
        for i, p in enumerate(params):
            p.requires_grad_(i in trainable)
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            out = model(torch.randn(4, 3))
            if out.requires_grad:
                out.pow(2).sum().backward()
            optimizer.step()
        if stopper.step(value, model):
            best = {k: v.clone() for k, v in model.state_dict().items()}
    assert best is not None
    stopper.restore(model)
    for k, v in model.state_dict().items():
        assert torch.equal(v, best[k]), k
