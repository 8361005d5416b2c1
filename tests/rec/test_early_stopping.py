from __future__ import annotations

import math

import pytest
import torch
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
