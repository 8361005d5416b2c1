"""TransRec checkpoints: adapter-only (adapters of both encoders + the small trained parts) and
full saves for the pre-train -> transfer protocol."""

from __future__ import annotations

from pathlib import Path

import tiny_transrec as helpers
import torch

import adarec

HISTORY = torch.tensor([[0, 1, 2, 3, 4], [0, 0, 7, 8, 9]])


def _train(model: adarec.rec.TransRec, steps: int = 3) -> None:
    opt = torch.optim.AdamW(adarec.trainable_parameters(model).values(), lr=1e-2)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        model.loss(helpers.batch()).backward()
        opt.step()
    model.eval()


def test_adapter_only_checkpoint_restores_both_encoders(tmp_path: Path) -> None:
    model = helpers.text_model(seed=0)
    model.inject_adapters(item="houlsby", user="pfeiffer")
    _train(model)
    expected = model.full_sort_scores(HISTORY)
    adarec.save_adapters(model, tmp_path / "ckpt")

    fresh = helpers.text_model(seed=0)  # same pre-trained base, same item table
    assert not torch.allclose(fresh.full_sort_scores(HISTORY), expected)
    adarec.load_adapters(fresh, tmp_path / "ckpt")
    assert torch.equal(fresh.full_sort_scores(HISTORY), expected)
    saved = set(adarec.checkpoint_info(tmp_path / "ckpt")["tensors"])
    assert any(k.startswith("dtl.") for k in saved)  # the DTL trained, so it is saved
    assert not any("word_embeddings" in k for k in saved)  # frozen base weights are not


def test_full_save_then_transfer_to_a_new_item_table(tmp_path: Path) -> None:
    source = helpers.text_model(seed=0, loss="sampled_softmax")
    source.set_policy("full")
    _train(source)
    adarec.save_model_state(source, tmp_path / "pretrained")

    target = helpers.text_model(seed=1, loss="sampled_softmax")  # other items, other init
    adarec.load_model_state(target, tmp_path / "pretrained")
    for (n, p), q in zip(source.state_dict().items(), target.state_dict().values(), strict=True):
        assert torch.equal(p, q), n
    # the item features stay the target's own: they are data, not weights
    assert not torch.equal(source.item_encoder.input_ids, target.item_encoder.input_ids)
    summary = target.inject_adapters(item="houlsby")
    assert summary is not None and 0 < summary.trainable < summary.total
    _train(target, steps=1)
