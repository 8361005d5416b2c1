from __future__ import annotations

import pytest
import torch
from tiny_transrec import N_ITEMS, L, batch, text_model

from adarec import adapter_parameters
from adarec.rec.data import TrainCollator, TrainDataset
from adarec.rec.item_encoders import IDItemEncoder
from adarec.rec.transrec import TransRec


@pytest.mark.parametrize("loss", ["bce", "sampled_softmax", "full_softmax"])
def test_dedup_equals_encoding_every_position(loss: str) -> None:
    model = text_model(loss=loss, num_negatives=2)
    b = batch()
    grads = []
    values = []
    for dedup in (True, False):
        model.dedup = dedup
        model.zero_grad()
        value = model.loss(b)
        value.backward()
        values.append(value.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()
                      if p.grad is not None})
    torch.testing.assert_close(values[0], values[1], atol=1e-5, rtol=1e-5)
    assert grads[0].keys() == grads[1].keys() and any("item_encoder" in n for n in grads[0])
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], atol=1e-5, rtol=1e-4, msg=n)


def test_dedup_encodes_each_item_once() -> None:
    model = text_model()
    seen: list[int] = []
    model.item_encoder.register_forward_hook(lambda m, args, out: seen.append(args[0].numel()))
    b = batch(k=1)
    model.loss(b)
    ids = torch.cat([b["input_ids"].flatten(), b["target_ids"][b["mask"]],
                     b["negative_ids"][b["mask"]].flatten()])
    assert seen == [torch.unique(ids).numel()]


def test_cpc_uses_only_the_last_position() -> None:
    b = batch()
    changed = {k: v.clone() for k, v in b.items()}
    changed["target_ids"][0, 2] = 11 if b["target_ids"][0, 2] != 11 else 10
    for objective, same in (("cpc", True), ("sasrec", False)):
        model = text_model(objective=objective).eval()
        a, c = model.loss(b), model.loss(changed)
        assert torch.equal(a, c) == same


def test_full_sort_scores_masks_history_and_padding() -> None:
    model = text_model().eval()
    hist = torch.tensor([[0, 0, 1, 2, 3], [4, 5, 6, 7, 8]])
    scores = model.full_sort_scores(hist)
    assert scores.shape == (2, N_ITEMS + 1)
    assert torch.isinf(scores[:, 0]).all()
    assert torch.isinf(scores[0, [1, 2, 3]]).all() and torch.isfinite(scores[0, 4:]).all()
    assert torch.isinf(scores[1, 4:9]).all() and torch.isfinite(scores[1, 9:]).all()
    extra = model.full_sort_scores(hist, exclude_ids=torch.tensor([[9], [10]]))
    assert torch.isinf(extra[0, 9]) and torch.isinf(extra[1, 10])
    raw = model.full_sort_scores(hist, exclude_history=False)
    cand = torch.tensor([[1, 5, 9], [2, 3, 12]])
    torch.testing.assert_close(model.score(hist, cand), raw.gather(1, cand), atol=1e-5,
                               rtol=1e-5)


def test_item_table_cache_and_invalidation() -> None:
    model = text_model().eval()
    table = model.item_table()
    assert model.item_table() is table
    model.train()
    model.eval()
    second = model.item_table()
    assert second is not table
    torch.testing.assert_close(second, table)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.loss(batch()).backward()
    opt.step()  # in place, without train(): the version key notices
    third = model.item_table()
    assert third is not second and not torch.allclose(third, second)
    model.invalidate_cache()
    assert model.item_table() is not third


def trainable_groups(model: TransRec) -> dict[str, set[str]]:
    adapters = set(adapter_parameters(model))
    out: dict[str, set[str]] = {}
    for n, p in model.named_parameters():
        if p.requires_grad:
            part = n.split(".")[0] + (".adapter" if n in adapters else "")
            if n not in adapters and ("LayerNorm" in n or "ln" in n.split(".")[-2]):
                part += ".norm"
            out.setdefault(part, set()).add(n)
    return out


def test_policies_train_the_documented_parts() -> None:
    model = text_model()
    model.inject_adapters(item={"method": "houlsby", "bottleneck": 4})
    parts = lambda: set(trainable_groups(model))  # noqa: E731
    # adapters in the item encoder only: item adapters + item norms, DTL, the whole SASRec
    assert parts() == {"item_encoder.adapter", "item_encoder.norm", "dtl", "user_encoder",
                       "user_encoder.norm"}
    emb_norm = "item_encoder.model.embeddings.LayerNorm.weight"
    assert not dict(model.named_parameters())[emb_norm].requires_grad
    model.set_policy("adapters", layernorm=False)
    assert "item_encoder.norm" not in parts()
    model.set_policy("frozen")
    assert parts() == {"dtl", "user_encoder", "user_encoder.norm"}
    model.set_policy("full")
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="user encoder"):
        model.set_policy("user_adapters")

    model.inject_adapters(user={"method": "houlsby", "bottleneck": 4}, policy="adapters")
    assert parts() == {"item_encoder.adapter", "item_encoder.norm", "dtl",
                       "user_encoder.adapter", "user_encoder.norm"}
    assert not model.user_encoder.position.weight.requires_grad
    assert model.user_encoder.final_ln.weight.requires_grad
    model.set_policy("item_adapters")
    assert parts() == {"item_encoder.adapter", "item_encoder.norm", "dtl", "user_encoder",
                       "user_encoder.adapter", "user_encoder.norm"}
    summary = model.set_policy("user_adapters")
    assert parts() == {"dtl", "user_encoder.adapter", "user_encoder.norm"}
    assert summary.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="policy"):
        model.set_policy("everything")


def test_adapter_tuning_changes_only_trainable_parameters() -> None:
    model = text_model(loss="sampled_softmax", num_negatives=1)
    model.inject_adapters(item={"method": "houlsby", "bottleneck": 4})
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        model.loss(batch()).backward()
        opt.step()
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) != p.requires_grad, n


def test_transfer_to_a_new_item_table() -> None:
    src = text_model(seed=0)
    state = src.transferable_state_dict()
    assert any(k.startswith("item_encoder.model.") for k in state)
    assert not any(k.endswith(("input_ids", "attention_mask")) for k in state)
    dst = text_model(seed=1)
    assert dst.load_transferable_state_dict(state) == []
    for k, v in dst.state_dict().items():
        torch.testing.assert_close(v, state[k])
    assert not torch.equal(dst.item_encoder.input_ids, src.item_encoder.input_ids)

    id_model = TransRec(IDItemEncoder(N_ITEMS, 16), user_dim=16, dtl=False, max_len=L)
    id_state = id_model.transferable_state_dict()
    assert not any(k.startswith("item_encoder.") for k in id_state) and id_state
    other = TransRec(IDItemEncoder(N_ITEMS + 5, 16), user_dim=16, dtl=False, max_len=L)
    assert other.load_transferable_state_dict(id_state) == ["item_encoder.embedding.weight"]
    with pytest.raises(KeyError, match="unexpected"):
        other.load_transferable_state_dict({**id_state, "nope": torch.zeros(1)})


def test_constructor_checks() -> None:
    with pytest.raises(ValueError, match="dtl=False"):
        TransRec(IDItemEncoder(N_ITEMS, 8), user_dim=16, dtl=False)
    with pytest.raises(ValueError, match="objective"):
        TransRec(IDItemEncoder(N_ITEMS, 8), objective="bert4rec")
    with pytest.raises(ValueError, match="num_negatives"):
        TransRec(IDItemEncoder(N_ITEMS, 8), loss="bce", num_negatives=0)
    assert TransRec(IDItemEncoder(N_ITEMS, 8), loss="sampled_softmax", num_negatives=0)


@pytest.mark.parametrize("loss", ["bce", "sampled_softmax"])
def test_training_lowers_the_loss_on_a_pattern(loss: str) -> None:
    """Item i is always followed by i + 1: 30 steps should learn much of it."""
    torch.manual_seed(0)
    seqs = [[(s + j) % N_ITEMS + 1 for j in range(L + 1)] for s in range(N_ITEMS)] * 2
    model = TransRec(IDItemEncoder(N_ITEMS, 16), user_dim=16, dtl=False, max_len=L,
                     dropout=0.0, loss=loss, num_negatives=1)
    model.set_policy("full")
    ds = TrainDataset(seqs, L)
    collate = TrainCollator(N_ITEMS, L, 1, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        b = collate([ds[i] for i in range(len(ds))])
        value = model.loss(b)
        opt.zero_grad()
        value.backward()
        opt.step()
        losses.append(value.item())
    assert losses[-1] < 0.5 * losses[0]
    model.eval()
    hist = torch.tensor([[0, 0, 0, 3, 4]])
    assert model.full_sort_scores(hist).argmax(1).item() == 5


def test_evaluate_ranking_matches_manual_full_ranking_and_keeps_train_mode() -> None:
    from adarec.rec.data import pad_left
    from adarec.rec.metrics import evaluate_full_ranking

    model = text_model()
    model.inject_adapters(item="houlsby")
    model.train()
    pairs = [([1, 2, 3], 4), ([5, 6], 7), ([2, 7, 8, 3, 1], 6), ([9], 2)]
    got = model.evaluate_ranking(pairs, ks=(1, 5), max_len=3)
    assert model.training and all(m.training for m in model.modules())
    model.eval()
    with torch.no_grad():
        users = model.user_embeddings(pad_left([h for h, _ in pairs], 3))
        want = evaluate_full_ranking(users, model.item_table(), [t for _, t in pairs],
                                     [h for h, _ in pairs], ks=(1, 5))
    assert got == want
    assert set(got) == {f"{m}@{k}" for m in ("hr", "ndcg", "mrr") for k in (1, 5)}
