"""Adapter sets that own their DTL and side network (`adarec.rec.set_dtl`): switched with the set,
one hidden-state cache of the frozen backbone shared by every set, one item table per set that
follows exactly its own state, and save_pretrained / from_pretrained keep every set."""

from __future__ import annotations

from pathlib import Path

import pytest
import tiny_transrec as helpers
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import adarec
from adarec.adapters.side import side_networks
from adarec.errors import AdapterStateError, ConfigError
from adarec.inject import count_forward_hooks
from adarec.rec import TransRec
from adarec.rec.item_tower import tower_fingerprint
from adarec.rec.mixed_serving import set_item_table
from adarec.rec.set_dtl import SetDTL, set_dtls

SIDE = adarec.AdapterSpec.preset("side", bottleneck=8)
# one model per market: each set some of {item adapters or side network, own DTL, user adapters}
SETS: dict[str, dict[str, object]] = {
    "side_dtl_user": {"item": SIDE, "user": "houlsby", "dtl": True},
    "side_dtl": {"item": SIDE, "dtl": "copy"},  # no user-encoder adapters
    "lora_moe": {"item": "lora", "user": "lora", "dtl": "moe"},
    "dtl_only": {"dtl": True},
    "side_shared_dtl": {"item": SIDE, "user": "parallel"},  # reads the shared DTL
}


def perturb(model: torch.nn.Module, seed: int = 1) -> None:
    """Random weights in every set (side networks' zero ``up``, LoRA's zero ``B`` included), so
    the sets compute different things."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adarec.adapter_parameters(model).values():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)


def build(sets: dict[str, dict[str, object]] = SETS) -> TransRec:
    model = helpers.text_model()
    for name, parts in sets.items():
        model.inject_adapters(name=name, policy=None, **parts)  # type: ignore[arg-type]
    perturb(model)
    return model.eval()


def content_table(model: TransRec) -> torch.Tensor:
    """The item encoder's output for every item, with the active sets."""
    with torch.no_grad():
        return model.item_encoder(torch.arange(model.n_items + 1))


def test_the_active_set_maps_items_through_its_own_dtl() -> None:
    model = build()
    for name in [None, *SETS]:
        adarec.set_active_adapters(model, name)
        own = set_dtls(model).get(name or "")
        dtl = own.dtl if own is not None else model.dtl
        expected = dtl(content_table(model))
        torch.testing.assert_close(model.item_table(), expected, rtol=0, atol=0)
    tables = []
    for name in SETS:
        adarec.set_active_adapters(model, name)
        tables.append(model.item_table())
    assert all(not torch.equal(a, b) for i, a in enumerate(tables) for b in tables[i + 1:])


def test_copy_starts_as_the_shared_dtl_and_is_its_own() -> None:
    model = helpers.text_model().eval()
    shared = model.item_table().clone()
    model.inject_adapters(name="m", policy=None, dtl="copy")
    torch.testing.assert_close(model.item_table(), shared, rtol=0, atol=0)
    with torch.no_grad():
        model.dtl[0].weight.mul_(2.0)  # the shared one changes, the copy does not
    assert torch.equal(model.item_table(), shared)
    adarec.set_active_adapters(model, None)
    assert not torch.equal(model.item_table(), shared)


def test_a_new_set_dtl_goes_where_the_model_is() -> None:
    """Built where the model's weights are (device and dtype), not where torch builds modules."""
    model = helpers.text_model().double().eval()
    model.inject_adapters(name="m", policy=None, dtl=True)
    assert model.item_table().dtype == torch.float64
    assert set_dtls(model)["m"].dtl[0].weight.dtype == torch.float64


def test_two_active_set_dtls_are_refused() -> None:
    model = build()
    adarec.set_active_adapters(model, ["side_dtl_user", "lora_moe"])
    with pytest.raises(AdapterStateError, match=r"\['side_dtl_user', 'lora_moe'\] each have "
                                                 "their own DTL"):
        model.item_table()
    adarec.set_active_adapters(model, ["side_dtl_user", "side_shared_dtl"])  # one own DTL: fine
    model.item_table()


def test_bad_dtl_choices_are_refused() -> None:
    model = helpers.text_model()
    model.inject_adapters(name="m", policy=None, dtl=True)
    with pytest.raises(AdapterStateError, match="'m' already has its own DTL"):
        model.inject_adapters(item="lora", name="m", policy=None, dtl=True)
    assert "m" not in adarec.adapter_sets(model.item_encoder)  # refused before any change
    with pytest.raises(ConfigError, match="dtl=3 for set 'n'"):
        model.inject_adapters(name="n", policy=None, dtl=3)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="dtl='bogus'"):
        model.inject_adapters(name="n", policy=None, dtl="bogus")
    own = TransRec(helpers.text_items(), user_dim=16, max_len=5,
                   dtl=torch.nn.Linear(32, 16))
    with pytest.raises(ConfigError, match="passed as a module"):
        own.inject_adapters(name="n", policy=None, dtl="copy")
    with pytest.raises(AdapterStateError, match="which its owner saves"):
        adarec.save_adapters(model, Path("unused"))


def test_the_active_sets_dtl_trains_and_the_others_do_not() -> None:
    model = build()
    model.set_policy("adapters")
    adarec.set_active_adapters(model, "lora_moe")
    model.train()
    model.loss(helpers.batch()).backward()
    grads = {n: layer.dtl.proj.grad if n == "lora_moe" else layer.dtl[0].weight.grad
             for n, layer in set_dtls(model).items()}
    assert grads["lora_moe"] is not None and grads["lora_moe"].abs().sum() > 0
    assert all(g is None for n, g in grads.items() if n != "lora_moe")
    assert model.dtl[0].weight.grad is None  # the shared DTL is not read while it is active


def test_eject_takes_the_sets_dtl_out() -> None:
    model = helpers.text_model().eval()
    hooks = count_forward_hooks(model)
    shared = model.item_table().clone()
    model.inject_adapters(name="m", policy=None, dtl=True)
    assert not torch.equal(model.item_table(), shared)
    adarec.eject_adapters(model, "m")
    assert set_dtls(model) == {} and count_forward_hooks(model) == hooks
    assert torch.equal(model.item_table(), shared)


def test_one_hidden_state_cache_serves_every_set() -> None:
    """The state cache depends on the backbone only: its key is the same whichever set is
    active, switching sets never rebuilds it, and editing another set's weights (a LoRA that is
    switched off) does not either."""
    model = build()
    encoder = model.item_encoder
    names = list(SETS)
    model.recommend(helpers.SEQS, k=3, set_names=names[:4])
    cache = encoder._state_cache
    assert cache is not None
    keys = []
    for name in ("side_dtl_user", "side_dtl", "side_shared_dtl"):
        adarec.set_active_adapters(model, name)
        model.item_table()
        sides = encoder.side_networks()
        assert [s.set_name for s in sides] == [name]
        keys.append(encoder._key(sides, encoder._slots(sides), False, torch.device("cpu")))
        assert encoder._state_cache is cache
    assert keys[0] == keys[1] == keys[2]
    with torch.no_grad():
        for pname, p in encoder.named_parameters():
            if ".lora_moe." in pname:
                p.mul_(1.5)
    model.recommend(helpers.SEQS, k=3, set_names=names[1:])
    assert encoder._state_cache is cache
    with torch.no_grad():  # a backbone weight: the cache must go
        next(encoder.model.parameters()).mul_(1.01)
    adarec.set_active_adapters(model, "side_dtl")
    model.item_table()
    assert encoder._state_cache is not cache


def test_each_sets_table_follows_its_own_dtl_and_side_network() -> None:
    """No cache outlives its state, and none is rebuilt for another set's change."""
    model = build()
    names = list(SETS)
    model.recommend(helpers.SEQS * 2, k=3, set_names=[*names, None, None, None])
    before = {n: set_item_table(model, n) for n in [*names, None]}
    for changed, edit in (("lora_moe", "dtl"), ("side_dtl_user", "dtl"), ("side_dtl", "side")):
        with torch.no_grad():
            if edit == "dtl":
                for p in set_dtls(model)[changed].parameters():
                    p.mul_(1.5)
            else:
                side = next(s for s in side_networks(model.item_encoder.model, active_only=False)
                            if s.set_name == changed)
                for p in side.parameters():
                    p.mul_(1.5)
        for name in [*names, None]:
            table = set_item_table(model, name)
            if name == changed:
                assert table is not before[name], name
                adarec.set_active_adapters(model, name)  # and it is what serving alone reads
                assert torch.equal(table, model.item_table())
            else:
                assert table is before[name], (changed, name)
        before[changed] = set_item_table(model, changed)


def test_the_persistent_table_fingerprint_follows_the_active_sets_dtl() -> None:
    """A table written to disk (sharded builds) is fingerprinted like the in-memory key: per
    active set, with a set's own DTL inside and switched-off sets left out."""
    model = build()
    prints = {}
    for name in SETS:
        adarec.set_active_adapters(model, name)
        prints[name] = tower_fingerprint(model)
    assert len(set(prints.values())) == len(SETS)
    adarec.set_active_adapters(model, "lora_moe")
    with torch.no_grad():
        for p in set_dtls(model)["side_dtl"].parameters():  # a switched-off set's DTL
            p.mul_(1.5)
    assert tower_fingerprint(model) == prints["lora_moe"]
    with torch.no_grad():
        for p in set_dtls(model)["lora_moe"].parameters():
            p.mul_(1.5)
    assert tower_fingerprint(model) != prints["lora_moe"]


def test_save_and_load_keep_every_set(tmp_path: Path) -> None:
    model = build()
    adarec.set_active_adapters(model, "side_dtl")
    model.save_pretrained(tmp_path / "m", include_base=True)
    loaded = TransRec.from_pretrained(tmp_path / "m")
    assert adarec.active_adapters(loaded) == adarec.active_adapters(model) == ["side_dtl"]
    assert set(adarec.adapter_sets(loaded)) == set(adarec.adapter_sets(model))
    assert {n: (type(d.dtl), d.kind) for n, d in set_dtls(loaded).items()} == {
        n: (type(d.dtl), d.kind) for n, d in set_dtls(model).items()}
    assert all(isinstance(d, SetDTL) for d in set_dtls(loaded).values())
    names = [*SETS, None]
    histories = [helpers.SEQS[i % 4] for i in range(len(names))]
    for name in names:
        adarec.set_active_adapters(model, name)
        adarec.set_active_adapters(loaded, name)
        assert torch.equal(loaded.item_table(), model.item_table()), name
        assert torch.equal(loaded.user_vectors(torch.tensor([[1, 2, 3]])),
                           model.user_vectors(torch.tensor([[1, 2, 3]]))), name
    got = loaded.recommend(histories, k=4, set_names=names)
    want = model.recommend(histories, k=4, set_names=names)
    assert torch.equal(got.indices, want.indices) and torch.equal(got.scores, want.scores)


# ------------------------------------------------------------------ mixed batches of such sets
@pytest.fixture(scope="module")
def served() -> TransRec:
    return build()


def alone(model: TransRec, history: list[int], name: str | None, k: int) -> tuple[torch.Tensor,
                                                                                   torch.Tensor]:
    adarec.set_active_adapters(model, name)
    r = model.recommend([history], k=k)
    return r.scores[0], r.indices[0]


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, len(helpers.SEQS) - 1),
                          st.sampled_from([None, *SETS])), min_size=1, max_size=24))
def test_mixed_rows_equal_serving_each_alone(served: TransRec,
                                             rows: list[tuple[int, str | None]]) -> None:
    """Row ``i`` of one mixed call is what serving it alone with its set active gives: the same
    top-k (torch.equal) and the same scores to float32 rounding (1e-6: the user encoder runs the
    row in a batch of another size)."""
    histories = [helpers.SEQS[h] for h, _ in rows]
    names = [n for _, n in rows]
    adarec.set_active_adapters(served, "lora_moe")
    mixed = served.recommend(histories, k=4, set_names=names, batch_size=7)
    assert adarec.active_adapters(served) == ["lora_moe"]
    for row, (history, name) in enumerate(zip(histories, names, strict=True)):
        scores, indices = alone(served, history, name, 4)
        assert torch.equal(mixed.indices[row], indices), (row, name)
        torch.testing.assert_close(mixed.scores[row], scores, rtol=1e-6, atol=1e-6)


def test_every_set_ranks_differently(served: TransRec) -> None:
    """Not vacuous: one history, six different rankings (five sets and the base model)."""
    got = served.recommend([helpers.SEQS[0]] * 6, k=6, set_names=[None, *SETS])
    assert len({tuple(r.tolist()) for r in got.scores}) == 6
