"""TransRec's item-side options: UniSRec's whitening MoE adaptor, ID + text fusion, cosine
scoring, held-out (cold) items, and both evaluation protocols."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_transrec import N_ITEMS, batch, text_model

import adarec
from adarec.rec.data import PAD, TrainCollator, TrainDataset, pad_left
from adarec.rec.item_adaptors import IDFusion, WhiteningMoEAdaptor
from adarec.rec.losses import full_softmax_loss
from adarec.rec.metrics import evaluate_full_ranking

PAIRS = [([1, 2, 3], 4), ([5, 6], 7), ([2, 7, 8, 3, 1], 6), ([9], 2), ([4, 4, 5], 4)]


def test_moe_adaptor_is_the_gated_sum_of_whitened_experts() -> None:
    torch.manual_seed(0)
    moe = WhiteningMoEAdaptor(6, 4, n_experts=3, dropout=0.0).eval()
    with torch.no_grad():
        for p in moe.parameters():
            p.normal_()
    x = torch.randn(5, 6)
    gates = torch.softmax(x @ moe.gate, -1)
    want = sum(gates[:, k : k + 1] * ((x - moe.shift[k]) @ moe.proj[k]) for k in range(3))
    torch.testing.assert_close(moe(x), want, atol=1e-5, rtol=1e-5)
    moe.train()  # noisy gating: random while training, still a convex mix of the experts
    assert not torch.allclose(moe.gates(x), gates)
    torch.testing.assert_close(moe.gates(x).sum(-1), torch.ones(5))


def test_moe_starts_with_equal_experts_and_refuses_no_experts() -> None:
    moe = WhiteningMoEAdaptor(6, 4, n_experts=4).eval()
    torch.testing.assert_close(moe.gates(torch.randn(3, 6)), torch.full((3, 4), 0.25))
    with pytest.raises(ValueError, match="n_experts"):
        WhiteningMoEAdaptor(6, 4, n_experts=0)


@pytest.mark.parametrize("mode", ["add", "gate"])
def test_id_fusion_is_off_exactly_for_excluded_items(mode: str) -> None:
    fusion = IDFusion(10, 4, mode)
    content = torch.randn(4, 4)
    ids = torch.tensor([1, 2, 3, 0])
    fusion.exclude([2, 3])
    out = fusion(ids, content)
    torch.testing.assert_close(out[1:], content[1:])  # excluded items and padding: content only
    assert not torch.allclose(out[0], content[0])
    with pytest.raises(ValueError, match=r"1\.\.10"):
        fusion.exclude([11])
    with pytest.raises(ValueError, match="fusion"):
        IDFusion(10, 4, "concat")


@pytest.mark.parametrize("mode", ["add", "gate"])
def test_id_dropout_switches_the_id_part_off_for_a_share_in_training_only(mode: str) -> None:
    torch.manual_seed(0)
    fusion = IDFusion(50, 4, mode, dropout=0.3)
    fusion.exclude([7])
    ids = torch.randint(1, 51, (4000,))
    content = torch.randn(4000, 4)
    dropped = (fusion(ids, content) - content).abs().sum(-1) == 0
    assert dropped[ids == 7].all()  # excluded items stay off
    share = dropped[ids != 7].float().mean().item()
    assert 0.27 < share < 0.33, share
    fusion.eval()  # serving: every known item keeps its ID part
    dropped = (fusion(ids, content) - content).abs().sum(-1) == 0
    assert dropped.tolist() == (ids == 7).tolist()
    with pytest.raises(ValueError, match="dropout"):
        IDFusion(10, 4, mode, dropout=1.0)


def test_id_dropout_needs_fusion_and_survives_a_folder_round_trip(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs id_fusion"):
        text_model(id_dropout=0.5)
    model = text_model(id_fusion="add", id_dropout=0.25)
    model.save_pretrained(tmp_path / "m", include_base=True)
    back = adarec.rec.TransRec.from_pretrained(tmp_path / "m")
    assert back.id_fusion is not None and back.id_fusion.dropout == 0.25
    torch.testing.assert_close(back.eval().item_table(), model.eval().item_table())


@pytest.mark.parametrize("mode", ["add", "gate"])
def test_items_added_after_training_score_by_content_and_survive_a_reload(
    mode: str, tmp_path: Path,
) -> None:
    from tiny_transrec import Tok

    model = text_model(id_fusion=mode).eval()
    with torch.no_grad():
        model.id_fusion.embedding.weight.normal_()
    before = model.item_table().clone()
    new = model.add_items([13, 14], ["a b c", "d e"], Tok())
    assert new == [13, 14] and model.id_fusion.n_items == 14
    table = model.item_table()
    torch.testing.assert_close(table[: N_ITEMS + 1], before)  # old items: unchanged
    content = model.dtl(model.item_encoder(torch.tensor(new)))
    torch.testing.assert_close(table[new], content)  # no ID part: content alone
    ranked = model.recommend([[1, 2]], k=12).items[0]  # every item but the history
    assert set(new) <= set(ranked) and len(ranked) == 12
    model.save_pretrained(tmp_path / "m", include_base=True)
    back = adarec.rec.TransRec.from_pretrained(tmp_path / "m")
    torch.testing.assert_close(back.item_table(), table)


@pytest.mark.parametrize("kw", [{"dtl": "moe"}, {"id_fusion": "add"}, {"id_fusion": "gate"},
                                {"similarity": "cosine", "temperature": 0.1}])
@pytest.mark.parametrize("loss", ["bce", "sampled_softmax", "full_softmax"])
def test_options_train_and_rank_consistently(kw: dict[str, object], loss: str) -> None:
    model = text_model(loss=loss, num_negatives=2, **kw)
    model.loss(batch()).backward()
    grads = [n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum()]
    assert any(n.startswith("dtl.") for n in grads)
    if "id_fusion" in kw:
        assert any(n.startswith("id_fusion.") for n in grads)
    model.eval()
    hist = torch.tensor([[0, 0, 1, 2, 3], [4, 5, 6, 7, 8]])
    cand = torch.tensor([[1, 5, 9], [2, 3, 12]])
    raw = model.full_sort_scores(hist, exclude_history=False)
    torch.testing.assert_close(model.score(hist, cand), raw.gather(1, cand), atol=1e-5,
                               rtol=1e-5)


def test_cosine_scores_are_bounded_by_one_over_temperature() -> None:
    model = text_model(similarity="cosine", temperature=0.5).eval()
    scores = model.full_sort_scores(torch.tensor([[0, 1, 2, 3, 4]]), exclude_history=False)
    assert scores[0, 1:].abs().max() <= 2.0 + 1e-5


def test_unknown_similarity_and_bad_temperature_are_refused() -> None:
    with pytest.raises(ValueError, match="similarity"):
        text_model(similarity="l2")
    with pytest.raises(ValueError, match="temperature"):
        text_model(temperature=0.0)
    with pytest.raises(ValueError, match="dtl"):
        text_model(dtl="mlp")


def test_id_fusion_stays_out_of_transfer_and_its_exclusions_survive_a_reload(
    tmp_path: Path,
) -> None:
    model = text_model(id_fusion="gate")
    model.id_fusion.exclude([3])
    assert not any(k.startswith("id_fusion.") for k in model.transferable_state_dict())
    adarec.save_model_state(model, tmp_path / "m")
    fresh = text_model(id_fusion="gate")  # same item features, other weights
    with torch.no_grad():
        for p in fresh.parameters():
            p.add_(0.1)
    adarec.load_model_state(fresh, tmp_path / "m")
    assert not bool(fresh.id_fusion.known[3]) and bool(fresh.id_fusion.known[4])
    model.eval()
    fresh.eval()
    torch.testing.assert_close(fresh.item_table(), model.item_table())


@pytest.mark.parametrize("exclude_history", [True, False])
def test_evaluate_ranking_names_both_protocols(exclude_history: bool) -> None:
    model = text_model().eval()
    got = model.evaluate_ranking(PAIRS, ks=(1, 5), max_len=3, exclude_history=exclude_history)
    with torch.no_grad():
        users = model.user_embeddings(pad_left([h for h, _ in PAIRS], 3))
        want = evaluate_full_ranking(users, model.item_table(), [t for _, t in PAIRS],
                                     [h for h, _ in PAIRS], ks=(1, 5),
                                     exclude_history=exclude_history)
    assert got == want


def test_masking_the_history_never_lowers_a_metric() -> None:
    model = text_model().eval()
    masked = model.evaluate_ranking(PAIRS, ks=(1, 3, 5), max_len=3)
    unmasked = model.evaluate_ranking(PAIRS, ks=(1, 3, 5), max_len=3, exclude_history=False)
    assert all(masked[k] >= unmasked[k] for k in masked)


def test_held_out_items_never_enter_training() -> None:
    cold = torch.zeros(N_ITEMS + 1, dtype=torch.bool)
    cold[[11, 12]] = True
    seqs = [[i for i in s if not cold[i]] for s in ([1, 2, 3, 4, 5, 6], [3, 4, 5], [7, 8, 9, 10])]
    ds = TrainDataset(seqs, 5)
    examples = [ds[i] for i in range(len(ds))]
    safe = TrainCollator(N_ITEMS, 5, 3, seed=0, exclude_items=[11, 12])(examples)
    unsafe = TrainCollator(N_ITEMS, 5, 8, seed=0)(examples)
    assert bool(torch.isin(unsafe["negative_ids"], torch.tensor([11, 12])).any())
    for loss in ("bce", "sampled_softmax"):
        model = text_model(loss=loss, num_negatives=3)
        model.held_out = cold
        model.loss(safe)
        with pytest.raises(ValueError, match="held-out"):
            model.loss(unsafe)
    model = text_model(loss="full_softmax", num_negatives=1)
    model.held_out = cold
    model.loss(safe).backward()
    table_grad = model.dtl[0].weight.grad
    assert table_grad is not None
    # held-out rows are outside the softmax: their embeddings get no gradient from the loss
    model.zero_grad()
    emb = model._encode(torch.arange(N_ITEMS + 1)).detach().requires_grad_(True)
    user = torch.randn(4, emb.size(1))
    full_softmax_loss(user, emb, torch.tensor([1, 2, 3, 4]), ~cold).backward()
    assert emb.grad is not None and emb.grad[cold].abs().sum() == 0
    with pytest.raises(ValueError, match="outside the items"):
        full_softmax_loss(user, emb, torch.tensor([1, 11, 3, 4]), ~cold)
    assert PAD == 0


def test_hold_out_items_ranks_them_by_content_alone() -> None:
    model = text_model(id_fusion="add", loss="full_softmax", num_negatives=1).eval()
    adarec.rec.hold_out_items(model, [11, 12], N_ITEMS)
    assert model.held_out is not None and model.held_out.tolist() == [
        i in (11, 12) for i in range(N_ITEMS + 1)]
    before = model.item_table().detach()
    with torch.no_grad():
        model.id_fusion.embedding.weight.add_(1.0)  # any ID table: cold rows do not move
    after = model.item_table().detach()
    torch.testing.assert_close(after[[11, 12]], before[[11, 12]])
    assert not torch.allclose(after[[1, 2]], before[[1, 2]])
    with pytest.raises(ValueError, match=r"1\.\.12"):
        adarec.rec.hold_out_items(model, [0], N_ITEMS)
