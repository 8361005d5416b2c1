"""`adarec.rec.training.fit`, the one epoch loop: early stopping restores the best epoch, a run
interrupted mid-epoch and resumed ends bit for bit as a straight one, a NaN loss names its
step, and the epoch callback can stop training (and the stop survives a resume)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from adarec.errors import ConfigError, TrainingError
from adarec.rec.data import TrainCollator, TrainDataset
from adarec.rec.early_stopping import EarlyStopping
from adarec.rec.item_encoders import IDItemEncoder
from adarec.rec.training import EpochEnd, FitResult, StepEnd, fit, save_loop_state
from adarec.rec.transrec import TransRec

N_ITEMS, L, BATCH = 20, 5, 4
SEQS = [[(u * 7 + i) % N_ITEMS + 1 for i in range(8)] for u in range(12)]
VALID = [(s[:-1], s[-1]) for s in SEQS]


class Interrupted(Exception):
    """Stands in for a kill: raised from ``on_step``."""


def setup(seed: int = 0) -> tuple[TransRec, TrainDataset, TrainCollator, torch.optim.Optimizer]:
    """A tiny ID TransRec with dropout and sampled negatives (both draw random numbers, so a
    resume that lost an RNG would show)."""
    torch.manual_seed(seed)
    model = TransRec(IDItemEncoder(N_ITEMS, 16), user_dim=16, max_len=L, dtl=False,
                     dropout=0.3, num_negatives=2)
    dataset = TrainDataset(SEQS, L)
    collate = TrainCollator(N_ITEMS, L, 2, seed)
    return model, dataset, collate, torch.optim.AdamW(model.parameters(), lr=1e-2)


def ndcg(model: TransRec) -> Any:
    def validate(_epoch: int) -> tuple[float, dict[str, float]]:
        scores = model.evaluate_ranking(VALID, ks=(10,), metrics=("ndcg",), max_len=L)
        return scores["ndcg@10"], scores
    return validate


def run(state: Path, *, epochs: int = 3, resume: bool = False, stop_at: int = 0,
        seed: int = 0) -> tuple[TransRec, FitResult]:
    model, dataset, collate, optimizer = setup(seed)
    seen = [0]

    def on_step(_s: StepEnd) -> None:
        seen[0] += 1
        if seen[0] == stop_at:
            raise Interrupted

    result = fit(model, dataset, collate, optimizer, epochs=epochs, batch_size=BATCH,
                 generator=torch.Generator().manual_seed(seed),
                 generators={"negatives": collate.generator}, validate=ndcg(model),
                 stopper=EarlyStopping(patience=5), precision="fp32", state_dir=state,
                 resume=resume, save_every_steps=2, on_step=on_step)
    return model, result


def test_resumed_after_an_interruption_mid_epoch_equals_a_straight_run(tmp_path: Path) -> None:
    straight, want = run(tmp_path / "straight")
    steps = -(-len(TrainDataset(SEQS, L)) // BATCH)
    assert steps >= 4  # the interruptions land mid-epoch, between saves
    with pytest.raises(Interrupted):
        run(tmp_path / "cut", stop_at=steps + 3)  # epoch 2, step 3: its step-2 save made
    with pytest.raises(Interrupted):
        run(tmp_path / "cut", resume=True, stop_at=2)  # cut once more, before a save
    model, got = run(tmp_path / "cut", resume=True)
    assert got.resumed and not want.resumed
    assert (got.epochs_run, got.best_epoch, got.best_score, got.stopped) == (
        want.epochs_run, want.best_epoch, want.best_score, want.stopped)
    assert got.losses == want.losses and got.history == want.history
    mine, theirs = model.state_dict(), straight.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_a_different_seed_changes_the_run(tmp_path: Path) -> None:
    """The equality above means something: the outcome depends on the seeded order."""
    _, a = run(tmp_path / "a", epochs=1)
    _, b = run(tmp_path / "b", epochs=1, seed=1)
    assert a.losses != b.losses


def test_stops_when_validation_stops_improving_and_restores_the_best_epoch() -> None:
    model, dataset, collate, optimizer = setup()
    scores = {1: 0.1, 2: 0.5, 3: 0.3, 4: 0.2, 5: 0.9}
    at: dict[int, dict[str, torch.Tensor]] = {}

    def validate(epoch: int) -> float:
        at[epoch] = {k: v.clone() for k, v in model.state_dict().items()}
        return scores[epoch]

    ends: list[EpochEnd] = []
    result = fit(model, dataset, collate, optimizer, epochs=5, batch_size=BATCH,
                 generator=torch.Generator().manual_seed(0), validate=validate,
                 stopper=EarlyStopping(patience=2), on_epoch=ends.append)
    assert (result.epochs_run, result.best_epoch, result.best_score, result.stopped) == (
        4, 2, 0.5, "patience")
    assert [e.improved for e in ends] == [True, True, False, False]
    assert len(result.losses) == 4 and all(loss > 0 for loss in result.losses)
    now = model.state_dict()
    assert all(torch.equal(now[k], at[2][k]) for k in now)  # epoch 2's weights are back
    assert not all(torch.equal(now[k], at[4][k]) for k in now)


def test_a_nan_loss_raises_naming_the_epoch_and_step() -> None:
    model, dataset, collate, optimizer = setup()
    real, calls = model.loss, [0]

    def loss(batch: Any) -> torch.Tensor:
        calls[0] += 1
        value = real(batch)
        return value * float("nan") if calls[0] == 3 else value

    model.loss = loss  # type: ignore[method-assign]
    with pytest.raises(TrainingError, match=r"epoch 1: the training loss is nan at step 3"):
        fit(model, dataset, collate, optimizer, epochs=2, batch_size=BATCH,
            generator=torch.Generator().manual_seed(0))


def test_the_epoch_callback_can_stop_training_and_a_resume_keeps_the_stop(
        tmp_path: Path) -> None:
    model, dataset, collate, optimizer = setup()
    steps: list[StepEnd] = []

    def go(epochs: int, resume: bool) -> FitResult:
        return fit(model, dataset, collate, optimizer, epochs=epochs, batch_size=BATCH,
                   generator=torch.Generator().manual_seed(0),
                   generators={"negatives": collate.generator}, validate=ndcg(model),
                   stopper=EarlyStopping(patience=None), state_dir=tmp_path / "s",
                   resume=resume, on_step=steps.append, on_epoch=lambda e: e.epoch == 2)

    first = go(5, resume=False)
    assert (first.epochs_run, first.stopped) == (2, "callback")
    assert [s.epoch for s in steps][-1] == 2
    steps.clear()
    again = go(5, resume=True)
    assert again.resumed and (again.epochs_run, again.stopped) == (2, "callback")
    assert steps == []  # nothing more was trained


def test_a_paper_study_state_of_the_old_layout_resumes(tmp_path: Path) -> None:
    """States the paper study saved before `fit` (``spent``, ``seconds``, ``curve``) load."""
    model, dataset, collate, optimizer = setup()
    order, stopper = torch.Generator().manual_seed(0), EarlyStopping(patience=3)
    stopper.step(0.25, model, 1)
    save_loop_state(tmp_path / "s", model=model, optimizer=optimizer, stopper=stopper,
                    generators={"order": order, "negatives": collate.generator},
                    extra={"epoch": 1, "step": 0, "order": None, "spent": 0.0, "seconds": [1.5],
                           "curve": [{"ndcg@10": 0.25}]})
    result = fit(model, dataset, collate, optimizer, epochs=1, batch_size=BATCH,
                 generator=order, generators={"negatives": collate.generator},
                 validate=ndcg(model), stopper=EarlyStopping(patience=3),
                 state_dir=tmp_path / "s", resume=True)
    assert (result.epochs_run, result.best_epoch, result.best_score) == (1, 1, 0.25)
    assert result.train_seconds == [1.5] and result.history == [{"ndcg@10": 0.25}]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"stopper": EarlyStopping()}, "a stopper needs validate="),
    ({"resume": True}, "need state_dir="),
    ({"save_every_steps": 2}, "need state_dir="),
    ({"save_every_steps": -1}, "save_every_steps must be >= 0"),
    ({"epochs": -1}, "epochs must be >= 0"),
    ({"generators": {"order": torch.Generator()}}, "'order' is generator="),
])
def test_bad_arguments_are_refused_by_name(kwargs: dict[str, Any], message: str) -> None:
    model, dataset, collate, optimizer = setup()
    options: dict[str, Any] = {"epochs": 1, **kwargs}
    with pytest.raises(ConfigError, match=message):
        fit(model, dataset, collate, optimizer, batch_size=BATCH,
            generator=torch.Generator().manual_seed(0), **options)
