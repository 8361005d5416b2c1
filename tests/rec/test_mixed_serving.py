"""TransRec.recommend(..., set_names=...): one adapter set per history, all rows in one call,
each row what serving it alone with its set active gives; item tables cached per set."""

from __future__ import annotations

import pytest
import tiny_transrec as helpers
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import adarec
from adarec.errors import AdapterStateError, ConfigError
from adarec.rec import TransRec
from adarec.rec.mixed_serving import set_item_table

SETS: dict[str, dict[str, str]] = {
    "m0": {"item": "lora", "user": "houlsby"},
    "m1": {"item": "houlsby", "user": "lora"},
    "m2": {"item": "ia3"},  # no user-encoder adapters: the base user encoder serves its rows
    "m3": {"user": "parallel"},  # no item-encoder adapters: the base item table
}
K = 5


def _perturb(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adarec.adapter_parameters(model).values():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)


def _build() -> TransRec:
    model = helpers.text_model()
    for name, parts in SETS.items():
        model.inject_adapters(name=name, policy=None, **parts)  # type: ignore[arg-type]
    _perturb(model, 1)
    return model.eval()


@pytest.fixture(scope="module")
def model() -> TransRec:
    return _build()


def _alone(model: TransRec, history: list[int], name: str | None) -> tuple[torch.Tensor, ...]:
    adarec.set_active_adapters(model, name)
    r = model.recommend([history], k=K)
    return r.scores[0], r.indices[0]


def _check_rows(model: TransRec, names: list[str | None]) -> None:
    mixed = model.recommend(helpers.SEQS, k=K, set_names=names)
    for row, (history, name) in enumerate(zip(helpers.SEQS, names, strict=True)):
        scores, indices = _alone(model, history, name)
        assert torch.equal(mixed.indices[row], indices), (row, name)
        torch.testing.assert_close(mixed.scores[row], scores, rtol=1e-6, atol=1e-6)


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from([None, *SETS]), min_size=len(helpers.SEQS),
                max_size=len(helpers.SEQS)))
def test_each_row_equals_serving_it_alone(model: TransRec, names: list[str | None]) -> None:
    adarec.set_active_adapters(model, "m1")
    _check_rows(model, names)


def test_sets_give_different_rankings(model: TransRec) -> None:
    """Not vacuous: the same history ranks differently under different sets."""
    history = helpers.SEQS[0]
    got = model.recommend([history] * 5, k=K, set_names=[None, *SETS])
    assert len({tuple(r.tolist()) for r in got.scores}) == 5


def test_active_sets_are_restored(model: TransRec) -> None:
    adarec.set_active_adapters(model, ["m0"])
    model.recommend(helpers.SEQS, k=K, set_names=["m1", "m2", None, "m3"])
    assert adarec.active_adapters(model) == ["m0"]


def test_item_tables_are_cached_per_set_and_follow_their_state() -> None:
    model = _build()
    names = ["m0", "m1", "m2", "m3"]
    model.recommend(helpers.SEQS, k=K, set_names=names)
    before = {n: set_item_table(model, n) for n in names}
    model.recommend(helpers.SEQS, k=K, set_names=names)
    assert all(set_item_table(model, n) is before[n] for n in names)  # reused
    with torch.no_grad():  # change m0's item adapters only
        for name, p in model.item_encoder.named_parameters():
            if ".m0." in name:
                p.mul_(1.5)
    assert set_item_table(model, "m0") is not before["m0"]  # rebuilt: its state changed
    # the key skips switched-off layers, so the other sets' tables are reused
    assert all(set_item_table(model, n) is before[n] for n in names[1:])
    _check_rows(model, names)  # and the rebuilt table is the one serving alone reads
    model.train()
    model.eval()
    assert set_item_table(model, "m1") is not before["m1"]  # train() drops the caches


def test_bad_set_names_are_refused(model: TransRec) -> None:
    with pytest.raises(AdapterStateError, match=r"no adapter set named \['zz'\]"):
        model.recommend(helpers.SEQS, k=K, set_names=["m0", "zz", None, None])
    with pytest.raises(ConfigError, match="3 set names for 4 histories"):
        model.recommend(helpers.SEQS, k=K, set_names=["m0", None, None])


def test_many_tiles_and_batches(model: TransRec) -> None:
    """Rows beyond one user tile (16) and one ``batch_size``: rows are regrouped by set inside
    and put back in order."""
    g = torch.Generator().manual_seed(4)
    histories = [helpers.SEQS[int(i)] for i in torch.randint(0, 4, (37,), generator=g)]
    choices = [None, *SETS]
    names = [choices[int(i)] for i in torch.randint(0, len(choices), (37,), generator=g)]
    mixed = model.recommend(histories, k=K, set_names=names, batch_size=20)
    for row in range(37):
        scores, indices = _alone(model, histories[row], names[row])
        assert torch.equal(mixed.indices[row], indices), row
        torch.testing.assert_close(mixed.scores[row], scores, rtol=1e-6, atol=1e-6)
