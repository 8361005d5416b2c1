"""Library helpers the examples and benchmarks build on: parameter groups by role, transfer
checkpoints, named methods, and the resumable epoch loop."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_transrec import N_ITEMS, SEQS, L, batch, text_model
from torch.utils.data import DataLoader

import adarec
from adarec.errors import CheckpointError, ConfigError, StateMismatchError
from adarec.rec.data import TrainCollator, TrainDataset
from adarec.rec.early_stopping import EarlyStopping
from adarec.rec.item_encoders import IDItemEncoder, PrecomputedItemEncoder
from adarec.rec.param_groups import param_groups, parameter_roles
from adarec.rec.recipes import apply_method
from adarec.rec.training import (
    batches,
    epoch_order,
    load_loop_state,
    save_loop_state,
    train_step,
)
from adarec.rec.transfer import CONFIG, WEIGHTS, load_transferable, save_transferable
from adarec.rec.transrec import TransRec


# ------------------------------------------------------------------------------ param_groups
def _setups() -> dict[str, TransRec]:
    out = {}
    for method, kw in (("houlsby", {}), ("lora", {"user_adapters": True}), ("side", {}),
                       ("full", {}), ("full-top", {"top_blocks": 1}), ("frozen", {})):
        model = text_model(id_fusion="add") if method == "side" else text_model()
        apply_method(model, method.split("-")[0], **kw)  # type: ignore[arg-type]
        out[method] = model
    ids = TransRec(IDItemEncoder(N_ITEMS, 16), user_dim=16, max_len=L, dtl=False)
    apply_method(ids, "id")
    out["id"] = ids
    return out


@pytest.mark.parametrize("name", ["houlsby", "lora", "side", "full", "full-top", "frozen", "id"])
def test_every_trainable_parameter_is_in_exactly_one_group(name: str) -> None:
    model = _setups()[name]
    groups = param_groups(model, lr=1e-3, head_lr=2e-3, base_lr=5e-5, weight_decay=0.1)
    ids = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(ids) == sorted(trainable)  # each once, frozen ones never
    by_name = {g["name"]: g for g in groups}
    assert {g["name"]: g["lr"] for g in groups} == {
        k: v for k, v in {"adapters": 1e-3, "heads": 2e-3, "base": 5e-5}.items() if k in by_name}
    assert all(g["weight_decay"] == 0.1 for g in groups)
    torch.optim.AdamW(groups)  # a valid optimizer spec


def test_roles_follow_the_module_structure() -> None:
    setups = _setups()
    houlsby = parameter_roles(setups["houlsby"])
    adapters = set(adarec.adapter_parameters(setups["houlsby"]))
    assert {n for n, r in houlsby.items() if r == "adapters"} == adapters
    base = {n for n, r in houlsby.items() if r == "base"}  # the norms the policy trains
    assert base and all(n.startswith("item_encoder.model.") and "LayerNorm" in n for n in base)
    assert {n for n, r in houlsby.items() if r == "heads"} == {
        n for n, p in setups["houlsby"].named_parameters() if p.requires_grad
        and n.startswith(("dtl.", "user_encoder."))}
    lora = parameter_roles(setups["lora"])  # user-encoder adapters are adapters too
    assert any(n.startswith("user_encoder.") and r == "adapters" for n, r in lora.items())
    side = parameter_roles(setups["side"])  # a side network is learnt from scratch: a head
    assert "adapters" not in side.values() and "base" not in side.values()
    assert any(n.startswith("id_fusion.") for n in side)
    full = parameter_roles(setups["full"])
    assert {n for n, r in full.items() if r == "base"} == {
        n for n, _ in setups["full"].named_parameters() if n.startswith("item_encoder.model.")}
    assert set(parameter_roles(setups["id"]).values()) == {"heads"}
    bare = text_model().item_encoder.model  # no item_encoder: the whole model is the base
    adarec.inject_adapters(bare, "houlsby")
    assert set(parameter_roles(bare).values()) == {"adapters"}


def test_param_groups_refuses_bad_rates_and_nothing_to_train() -> None:
    model = _setups()["houlsby"]
    with pytest.raises(ConfigError, match="base learning rate"):
        param_groups(model, lr=1e-3, base_lr=0.0)
    with pytest.raises(ConfigError, match="weight_decay"):
        param_groups(model, lr=1e-3, weight_decay=-1.0)
    model.requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable parameter"):
        param_groups(model, lr=1e-3)


# ------------------------------------------------------------------------------ transfer
def _adapted(seed: int) -> TransRec:
    """One base encoder (the transfer keeps the base), adapters, DTL and SASRec per ``seed``."""
    model = text_model(0)
    model.inject_adapters(item="houlsby")
    torch.manual_seed(seed)
    with torch.no_grad():  # adapters start as the identity: make every transferred part matter
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def test_transfer_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    source, target = _adapted(0), _adapted(1)
    save_transferable(source, tmp_path / "src")
    history = torch.tensor([[0, 1, 2, 3, 4], [0, 0, 7, 8, 9]])
    candidates = torch.arange(1, N_ITEMS + 1).expand(2, -1)
    with torch.no_grad():
        assert not torch.equal(source.score(history, candidates),
                               target.score(history, candidates))
        load_transferable(target, tmp_path / "src")
        assert torch.equal(source.score(history, candidates), target.score(history, candidates))


def test_edited_truncated_or_mismatched_transfer_is_refused(tmp_path: Path) -> None:
    save_transferable(_adapted(0), tmp_path / "src")
    edited = tmp_path / "edited"
    save_transferable(_adapted(0), edited)
    config = json.loads((edited / CONFIG).read_text())
    config["layout"] = dict(list(config["layout"].items())[:-1])
    (edited / CONFIG).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="edited or mixed"):
        load_transferable(_adapted(1), edited)
    truncated = tmp_path / "truncated"
    save_transferable(_adapted(0), truncated)
    data = (truncated / WEIGHTS).read_bytes()
    (truncated / WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load_transferable(_adapted(1), truncated)
    with pytest.raises(StateMismatchError, match=r"checkpoint has .* the model lacks"):
        load_transferable(text_model(1), tmp_path / "src")  # no adapters
    other = text_model(1, dtl="moe")
    other.inject_adapters(item="houlsby")
    with pytest.raises(StateMismatchError, match="another layout"):
        load_transferable(other, tmp_path / "src")
    with pytest.raises(CheckpointError, match=r"no transfer_config\.json|no checkpoint"):
        load_transferable(_adapted(1), tmp_path / "nowhere")


# ------------------------------------------------------------------------------ recipes
def test_apply_method_refuses_options_of_other_methods() -> None:
    with pytest.raises(ConfigError, match="not one of"):
        apply_method(text_model(), "adapterz")
    with pytest.raises(ConfigError, match="top_blocks goes with method 'full'"):
        apply_method(text_model(), "houlsby", top_blocks=1)
    with pytest.raises(ConfigError, match="adapter method"):
        apply_method(text_model(), "frozen", adapter_layers=1)
    with pytest.raises(ConfigError, match="'side'"):
        apply_method(text_model(), "houlsby", side_width=8)
    frozen = text_model()
    summary = apply_method(frozen, "frozen")
    assert isinstance(frozen.item_encoder, PrecomputedItemEncoder)
    assert summary.total > adarec.parameter_summary(frozen).total  # the encoder counted


# ------------------------------------------------------------------------------ epoch loop
def test_epoch_order_is_the_dataloader_order_and_batches_resume_at_any_step() -> None:
    ds = TrainDataset(SEQS * 3, L)
    loader = DataLoader(ds, batch_size=3, shuffle=True, collate_fn=list,
                        generator=torch.Generator().manual_seed(4))
    mine = torch.Generator().manual_seed(4)
    for _ in range(2):  # two epochs: the generator advances the same way
        order = epoch_order(len(ds), mine)
        assert [ex for b in loader for ex in b] == [ds[i] for i in order]
    whole = list(batches(ds, list, order, 3))
    assert list(batches(ds, list, order, 3, start=2)) == whole[2:]
    with pytest.raises(ConfigError, match="start=99"):
        list(batches(ds, list, order, 3, start=99))


def test_loop_state_restores_stopper_generators_and_every_rng(tmp_path: Path) -> None:
    model = text_model()
    optimizer = torch.optim.AdamW(param_groups(model, lr=1e-2))
    collator = TrainCollator(N_ITEMS, L, 2, seed=0)
    order = torch.Generator().manual_seed(1)
    stopper = EarlyStopping(patience=2)
    train_step(model, batch(), optimizer, "fp32")
    stopper.step(0.5, model, 1)
    best = {k: v.clone() for k, v in model.state_dict().items()}
    train_step(model, batch(), optimizer, "fp32")
    stopper.step(0.4, model, 2)
    ds = TrainDataset(SEQS, L)
    epoch_order(10, order), collator([ds[0], ds[1]])  # generators advanced
    np.random.seed(3), random.seed(3), torch.manual_seed(3)
    save_loop_state(tmp_path / "s", model=model, optimizer=optimizer, stopper=stopper,
                    generators={"order": order, "negatives": collator.generator},
                    extra={"epoch": 2, "order": [3, 1, 2]})
    expect = (np.random.rand(), random.random(), torch.rand(1), epoch_order(10, order),
              torch.randint(0, 9, (3,), generator=collator.generator))
    fresh = text_model(5)
    fresh_opt = torch.optim.AdamW(param_groups(fresh, lr=1e-2))
    fresh_stopper, fresh_collator = EarlyStopping(patience=2), TrainCollator(N_ITEMS, L, 2, 7)
    fresh_order = torch.Generator().manual_seed(9)
    extra = load_loop_state(tmp_path / "s", model=fresh, optimizer=fresh_opt,
                            stopper=fresh_stopper,
                            generators={"order": fresh_order,
                                        "negatives": fresh_collator.generator})
    assert extra == {"epoch": 2, "order": [3, 1, 2]}
    got = (np.random.rand(), random.random(), torch.rand(1), epoch_order(10, fresh_order),
           torch.randint(0, 9, (3,), generator=fresh_collator.generator))
    assert got[:2] == expect[:2] and all(torch.equal(torch.as_tensor(a), torch.as_tensor(b))
                                         for a, b in zip(got[2:], expect[2:], strict=True))
    assert (fresh_stopper.best, fresh_stopper.best_step, fresh_stopper.bad_steps,
            fresh_stopper.steps) == (0.5, 1, 1, 2)
    fresh_stopper.restore(fresh)  # the best step's weights, not the saved (later) ones
    assert all(torch.equal(v, best[k]) for k, v in fresh.state_dict().items())
    with pytest.raises(ConfigError, match="generators"):
        load_loop_state(tmp_path / "s", model=fresh, optimizer=fresh_opt, stopper=fresh_stopper,
                        generators={"order": fresh_order})
