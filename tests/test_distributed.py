"""Two gloo ranks on CPU against one process over the same global batch.

The file is also the worker script: the fixture starts it twice (``RANK`` 0 and 1, as torchrun
would) with a hard timeout, so a hung collective fails the test instead of hanging CI.
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

WORLD, N_ITEMS, L, STEPS, LR, TIMEOUT_S = 2, 40, 8, 3, 0.5, 120
POOL = N_ITEMS // WORLD  # rank r draws its items from its own pool, so candidates never overlap


def tiny_model() -> TransRec:
    """Tiny BERT item encoder with Houlsby adapters; dropout 0 everywhere, fixed seed."""
    torch.manual_seed(0)
    cfg = tf.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=16, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    ids = torch.randint(3, 99, (N_ITEMS + 1, 6), generator=torch.Generator().manual_seed(1))
    item = TextItemEncoder(tf.BertModel(cfg), ids, torch.ones_like(ids))
    model = TransRec(item, user_dim=16, loss="sampled_softmax", num_negatives=1, max_len=L,
                     n_layers=1, n_heads=2, dropout=0.0)
    model.inject_adapters(item="houlsby")
    return model


def local_batch(step: int, rank: int) -> dict[str, torch.Tensor]:
    """2 users x L full positions from rank's pool: 16 distinct targets + 2 negatives."""
    perm = torch.randperm(POOL, generator=torch.Generator().manual_seed(100 * step + rank))
    items = perm + 1 + rank * POOL
    seqs = torch.stack([items[: L + 1], items[L + 1 : 2 * L + 2]])
    negs = items[2 * L + 2 : 2 * L + 4].view(2, 1, 1).expand(2, L, 1)
    return {"input_ids": seqs[:, :-1], "target_ids": seqs[:, 1:], "negative_ids": negs.clone(),
            "mask": torch.ones(2, L, dtype=torch.bool)}


def trainable(model: TransRec) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def worker(out: Path) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    import adarec.rec.objective as transrec_mod
    from adarec import distributed as D

    torch.set_num_threads(1)
    D.setup(timeout_s=60)
    rank = D.get_rank()
    res: dict[str, Any] = {}

    x = torch.full((rank + 1, 2), float(rank + 1), requires_grad=True)  # uneven shards
    y = D.all_gather_with_grad(x)
    (y * (rank + 1)).sum().backward()
    res["gather"] = (y.detach(), x.grad)

    seen: list[int] = []
    original = transrec_mod.sampled_softmax_loss

    def spy(user: torch.Tensor, candidates: torch.Tensor, *a: Any, **kw: Any) -> torch.Tensor:
        seen.append(candidates.size(0))
        return original(user, candidates, *a, **kw)

    transrec_mod.sampled_softmax_loss = spy
    model = tiny_model()
    with torch.no_grad():
        res["loss_local"] = model.loss(local_batch(0, rank))
        D.enable_cross_rank_negatives(model)
        res["loss_gathered"] = model.loss(local_batch(0, rank))
    res["candidates"] = list(seen)
    transrec_mod.sampled_softmax_loss = original

    ddp = DDP(model)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR)
    for step in range(STEPS):
        opt.zero_grad()
        ddp(local_batch(step, rank)).backward()
        opt.step()
    res["sync"] = D.ddp_sync_stats(ddp)
    res["params"] = trainable(model)
    res["fsdp2"] = train_fsdp2(rank)
    if D.is_main_process():
        adarec.save_adapters(model, out / "ckpt")
    torch.distributed.barrier()
    torch.save(res, out / f"rank{rank}.pt")
    D.cleanup()


def train_fsdp2(rank: int) -> dict[str, torch.Tensor]:
    """The same steps with FSDP2 (``fully_shard``: each BERT block, then the root); returns the
    unsharded trainable weights."""
    from torch.distributed.fsdp import fully_shard

    from adarec import distributed as D

    model = tiny_model()
    for block in model.item_encoder.model.encoder.layer:
        fully_shard(block)
    fully_shard(model)
    D.enable_cross_rank_negatives(model)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR)
    for step in range(STEPS):
        opt.zero_grad()
        model(local_batch(step, rank)).backward()  # forward, not .loss: FSDP hooks forward
        opt.step()
    return {n: p.full_tensor().detach() if hasattr(p, "full_tensor") else p.detach().clone()
            for n, p in model.named_parameters() if p.requires_grad}


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    out = tmp_path_factory.mktemp("ddp")
    return out, launch_ranks(__file__, out, WORLD, TIMEOUT_S)


def test_all_gather_with_grad_uneven_shards(ranks: tuple[Path, list[dict[str, Any]]]) -> None:
    for res in ranks[1]:
        y, grad = res["gather"]
        torch.testing.assert_close(y, torch.tensor([[1.0, 1.0], [2.0, 2.0], [2.0, 2.0]]))
        torch.testing.assert_close(grad, torch.full_like(grad, 3.0))  # sum over ranks of (r+1)


def test_ddp_matches_single_process(ranks: tuple[Path, list[dict[str, Any]]]) -> None:
    """DDP and FSDP2 average rank gradients and each rank's loss is a mean over equal-size
    batches, so one process with the mean loss over the concatenated batch takes the same steps."""
    model = tiny_model()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR)
    for step in range(STEPS):
        parts = [local_batch(step, r) for r in range(WORLD)]
        batch = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        opt.zero_grad()
        model.loss(batch).backward()
        opt.step()
    ref, start = trainable(model), trainable(tiny_model())
    for res in ranks[1]:
        for kind in ("params", "fsdp2"):  # DDP, and FSDP2 with the frozen base sharded too
            assert res[kind].keys() == ref.keys()
            for n, value in ref.items():
                torch.testing.assert_close(res[kind][n], value, atol=1e-5, rtol=0, msg=n)
    moved = [n for n in ref if "adapters" in n and not torch.equal(ref[n], start[n])]
    assert moved, "adapters did not train"


def test_only_trainable_parameters_are_synchronised(
    ranks: tuple[Path, list[dict[str, Any]]]
) -> None:
    model = tiny_model()
    params = [p for p in model.parameters() if p.requires_grad]
    sync = ranks[1][0]["sync"]
    assert sync["tensors"] == len(params) < len(list(model.parameters()))
    assert sync["bytes"] == sum(p.numel() * p.element_size() for p in params)


def test_cross_rank_negatives(ranks: tuple[Path, list[dict[str, Any]]]) -> None:
    for res in ranks[1]:
        local, gathered = res["candidates"]
        assert local == 2 * L + 2 and gathered == WORLD * local
        assert not torch.allclose(res["loss_local"], res["loss_gathered"])


def test_rank0_saves_one_checkpoint(ranks: tuple[Path, list[dict[str, Any]]]) -> None:
    out, results = ranks
    assert sorted(p.name for p in out.iterdir()) == ["ckpt", "rank0.pt", "rank1.pt"]
    model = tiny_model()
    adarec.load_adapters(model, out / "ckpt")
    for n, value in trainable(model).items():
        torch.testing.assert_close(value, results[0]["params"][n], atol=0, rtol=0, msg=n)


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
