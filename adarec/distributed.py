"""Data-parallel helpers: process-group setup, a differentiable all-gather and cross-rank negatives.

Adapter tuning under `torch.nn.parallel.DistributedDataParallel` needs nothing special: DDP only
registers parameters with ``requires_grad=True``, so a frozen base is never all-reduced (see
`ddp_sync_stats`). What DDP cannot do by itself is widen the softmax: with
`enable_cross_rank_negatives` every rank scores its users against the candidates of *all*
ranks, so the in-batch negatives grow with the world size, as in one big batch.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any, cast

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "all_gather_with_grad",
    "barrier",
    "cleanup",
    "ddp_sync_stats",
    "enable_cross_rank_negatives",
    "gather_candidates",
    "get_rank",
    "get_world_size",
    "is_distributed",
    "is_main_process",
    "setup",
    "shard_range",
    ]


def is_distributed() -> bool:
    """True inside an initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """Rank 0 (or no process group): the one process that logs and writes checkpoints."""
    return get_rank() == 0


def setup(backend: str | None = None, timeout_s: float = 600.0) -> torch.device:
    """Join the process group described by ``torchrun``'s environment; returns this rank's device.

    NCCL with one GPU per local rank when CUDA is there, else gloo on CPU. Without ``torchrun``
    (no ``WORLD_SIZE``) nothing is initialised, so the same script also runs single-process.
    """
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else (
        torch.device("cpu"))
    if "WORLD_SIZE" not in os.environ or dist.is_initialized():
        return device
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group(backend or ("nccl" if cuda else "gloo"),
                            timeout=timedelta(seconds=timeout_s))
    return device


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every rank gets here; a no-op outside a process group of > 1 ranks."""
    if is_distributed():
        dist.barrier()


def shard_range(n: int, rank: int | None = None, world_size: int | None = None) -> range:
    """This rank's contiguous share of ``n`` units (chunks, user shards): rank ``r`` of ``W``
    takes ``[n*r//W, n*(r+1)//W)``, so the shares tile ``range(n)`` in order and differ in size
    by at most one. Defaults: this process's rank and world size (0 and 1 without torchrun)."""
    rank = get_rank() if rank is None else rank
    world_size = get_world_size() if world_size is None else world_size
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of {world_size} process(es)")
    return range(n * rank // world_size, n * (rank + 1) // world_size)


def _sizes(n: int, group: dist.ProcessGroup | None, device: torch.device) -> list[int]:
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(get_world_size())]
    dist.all_gather(sizes, torch.tensor([n], device=device), group=group)
    return [int(s) for s in sizes]


def all_gather_with_grad(tensor: Tensor, group: dist.ProcessGroup | None = None) -> Tensor:
    """Concatenate every rank's ``tensor`` along dim 0 (sizes may differ), differentiably.

    The backward pass sums, over ranks, the gradients that reach each shard and hands the local
    shard its own, so a loss on the gathered tensor trains the weights that produced it on every
    rank (DDP then averages the weight gradients as usual). Uses torch's autograd-aware
    functional collective (a reduce-scatter in backward). Outside a process group of > 1 ranks
    it returns ``tensor`` itself.
    """
    if not is_distributed():
        return tensor
    from torch.distributed._functional_collectives import all_gather_single_autograd

    group = group or dist.group.WORLD
    assert group is not None  # set once a process group is initialised
    sizes = _sizes(tensor.size(0), group, tensor.device)
    longest = max(sizes)
    if longest == 0:
        return tensor
    padded = tensor
    if tensor.size(0) < longest:  # equal shapes for the collective; padding cut out below
        padded = torch.cat([tensor, tensor.new_zeros(longest - tensor.size(0), *tensor.shape[1:])])
    out = all_gather_single_autograd(padded.contiguous(), 0, group)
    if hasattr(out, "wait"):  # AsyncCollectiveTensor
        out = out.wait()
    chunks = out.split(longest)
    return torch.cat([c[:n] for c, n in zip(chunks, sizes, strict=True)])


def gather_candidates(
    ids: Tensor, emb: Tensor, group: dist.ProcessGroup | None = None
) -> tuple[Tensor, Tensor, int]:
    """Every rank's candidate ids ``[C_r]`` and embeddings ``[C_r, d]``, plus where this rank's
    rows start (its positives come first in TransRec, so they sit at that offset).

    Ids need no gradient; embeddings keep it. The same item on two ranks then has one id, so
    `TransRec` merges it into a single column: never a false negative, counted twice for logQ.
    """
    if not is_distributed():
        return ids, emb, 0
    sizes = _sizes(ids.numel(), group, ids.device)
    return all_gather_with_grad(ids, group), all_gather_with_grad(emb, group), sum(
        sizes[: dist.get_rank(group)])


def enable_cross_rank_negatives(
    model: nn.Module, enabled: bool = True, group: dist.ProcessGroup | None = None
) -> None:
    """Make a `TransRec` (or DDP around one) score against all ranks' sampled-softmax candidates.

    Every rank must then call ``loss`` the same number of times (it runs collectives). A no-op
    in a single process.
    """
    model = getattr(model, "module", model)
    if getattr(model, "loss_name", "sampled_softmax") != "sampled_softmax":
        raise ValueError("cross-rank negatives need loss='sampled_softmax'")

    def gather(ids: Tensor, emb: Tensor) -> tuple[Tensor, Tensor, int]:
        return gather_candidates(ids, emb, group)

    model.gather_candidates = gather if enabled else None


def ddp_sync_stats(ddp_model: nn.Module) -> dict[str, int]:
    """What a `DistributedDataParallel` wrapper all-reduces each step, as its reducer reports it
    (``_get_ddp_logging_data``, a private torch API): ``tensors`` and ``bytes``. DDP registers
    only parameters with ``requires_grad=True``, so for an adapter-tuned model these match the
    trainable parameters and a frozen base costs no communication."""
    data = cast(Any, ddp_model)._get_ddp_logging_data()
    return {"tensors": int(data["num_parameter_tensors"]),
            "bytes": int(data["total_parameter_size_bytes"])}
