"""A side network with its hidden-state cache under DDP: two gloo ranks on CPU take the same steps
as one uncached process over the concatenated batch (BCE: a mean over equal-size local
batches), and rank 0's adapter checkpoint loads back.

The file is also the worker script (started twice, ``RANK`` 0 and 1, as torchrun would).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers as tf
from ddp_launch import launch_ranks

import adarec
from adarec.rec.item_encoders import TextItemEncoder
from adarec.rec.transrec import TransRec

WORLD, N_ITEMS, L, STEPS, LR, TIMEOUT_S = 2, 40, 8, 3, 0.05, 120


def tiny_model(cache: bool = True) -> TransRec:
    torch.manual_seed(0)
    cfg = tf.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=16)
    ids = torch.randint(3, 99, (N_ITEMS + 1, 6), generator=torch.Generator().manual_seed(1))
    item = TextItemEncoder(tf.BertModel(cfg), ids, torch.ones_like(ids), cache_states=cache)
    model = TransRec(item, user_dim=16, loss="bce", num_negatives=1, max_len=L,
                     n_layers=1, n_heads=2, dropout=0.0)
    model.inject_adapters(item=adarec.AdapterSpec.preset("side", bottleneck=8))
    return model


def local_batch(step: int, rank: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(100 * step + rank)
    seqs = torch.randint(1, N_ITEMS + 1, (2, L + 1), generator=g)
    negs = torch.randint(1, N_ITEMS + 1, (2, L, 1), generator=g)
    return {"input_ids": seqs[:, :-1], "target_ids": seqs[:, 1:], "negative_ids": negs,
            "mask": torch.ones(2, L, dtype=torch.bool)}


def trainable(model: TransRec) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def worker(out: Path) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    from adarec import distributed as D

    torch.set_num_threads(1)
    D.setup(timeout_s=60)
    rank = D.get_rank()
    model = tiny_model()
    ddp = DDP(model)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR)
    for step in range(STEPS):
        opt.zero_grad()
        ddp(local_batch(step, rank)).backward()
        opt.step()
    res = {"params": trainable(model), "cached": model.item_encoder._state_cache is not None}
    if D.is_main_process():
        adarec.save_adapters(model, out / "ckpt")
    torch.distributed.barrier()
    torch.save(res, out / f"rank{rank}.pt")
    D.cleanup()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    out = tmp_path_factory.mktemp("side-ddp")
    return out, launch_ranks(__file__, out, WORLD, TIMEOUT_S)


def test_ddp_with_cached_side_network_matches_one_process(
    ranks: tuple[Path, list[dict[str, Any]]]
) -> None:
    out, results = ranks
    model = tiny_model(cache=False)  # the uncached side network, one process
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR)
    for step in range(STEPS):
        parts = [local_batch(step, r) for r in range(WORLD)]
        batch = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        opt.zero_grad()
        model.loss(batch).backward()
        opt.step()
    ref, start = trainable(model), trainable(tiny_model())
    assert any("adarec_adapters" in n and not torch.equal(ref[n], start[n]) for n in ref)
    for res in results:
        assert res["cached"] and res["params"].keys() == ref.keys()
        for n, value in ref.items():
            torch.testing.assert_close(res["params"][n], value, atol=1e-5, rtol=1e-4, msg=n)
    fresh = tiny_model()
    adarec.load_adapters(fresh, out / "ckpt")
    for n, value in trainable(fresh).items():
        torch.testing.assert_close(value, results[0]["params"][n], atol=0, rtol=0, msg=n)


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
