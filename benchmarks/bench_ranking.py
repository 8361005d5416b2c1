"""Full-ranking evaluation throughput: adarec's evaluation path against a matrix-product floor.

Synthetic embeddings (d = 64), item tables of 10k, 100k and 1M items (+ the padding row),
4,096 users scored in batches, ~50 history items per user. Two paths:

- ``ranks``: `full_ranking_ranks` (rank of one target per user among all items, history
  masked; the default tie rule, one comparison pass); floor = ``users @ items.T`` over the same
  user batches and nothing else.
- ``ranks, expected``: `full_ranking_counts` (items above and tied with each target: what
  ``ties="expected"`` and ``"random"`` need; two comparison passes), same floor.
- ``top-10``: `topk_chunked` (history excluded); floor = ``torch.topk(users @ items.T, 10)``.

A stricter second floor for ``ranks`` writes every product into one reused buffer (``out=``),
as adarec does: on CPU a fresh ``[batch, N]`` tensor per batch costs page faults that can be a
third of the plain floor's time.

Each round runs every configuration once (interleaved); users/s is the median over rounds and
the ratio is the median of per-round time ratios adarec / floor.

    python benchmarks/bench_ranking.py                              # 10k, 100k, 1M
    python benchmarks/bench_ranking.py --items 10000 100000 --rounds 2   # quick look
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor

from adarec.rec.metrics import full_ranking_counts, full_ranking_ranks, topk_chunked


def data(n_items: int, args: argparse.Namespace) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Users, items (row 0 = padding), targets and 0-padded histories of 40..60 items."""
    g = torch.Generator().manual_seed(0)
    users = torch.randn(args.users, args.dim, generator=g)
    items = torch.randn(n_items + 1, args.dim, generator=g)
    targets = torch.randint(1, n_items + 1, (args.users,), generator=g)
    hist = torch.randint(1, n_items + 1, (args.users, args.history + 10), generator=g)
    lengths = torch.randint(args.history - 10, args.history + 11, (args.users, 1), generator=g)
    hist[torch.arange(hist.size(1)) >= lengths] = 0
    return users, items, targets, hist


def paths(n_items: int, args: argparse.Namespace) -> dict[str, Callable[[], object]]:
    users, items, targets, hist = data(n_items, args)
    b = args.batch_size

    def ranks() -> object:
        return full_ranking_ranks(users, items, targets, hist, batch_size=b)

    def counts() -> object:
        return full_ranking_counts(users, items, targets, hist, batch_size=b)

    def ranks_floor() -> object:
        for s in range(0, len(users), b):
            users[s : s + b] @ items.T
        return None

    buffer = torch.empty(b, items.size(0))

    def ranks_floor_reused() -> object:
        for s in range(0, len(users), b):
            torch.matmul(users[s : s + b], items.T, out=buffer[: len(users[s : s + b])])
        return None

    def top() -> object:
        return [topk_chunked(users[s : s + b], items, args.k, exclude=hist[s : s + b])
                for s in range(0, len(users), b)]

    def top_floor() -> object:
        return [torch.topk(users[s : s + b] @ items.T, args.k, dim=1)
                for s in range(0, len(users), b)]

    return {"ranks": ranks, "ranks, expected": counts, "ranks floor": ranks_floor,
            "ranks floor reused": ranks_floor_reused, "top-k": top, "top-k floor": top_floor}


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--items", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--users", type=int, default=4096)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--history", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads; d={args.dim}, {args.users} users "
          f"in batches of {args.batch_size}, ~{args.history} history items, median of "
          f"{args.rounds} rounds")
    head = (f"| {'items':>9} | {'path':<15} | {'adarec users/s':>14} | {'floor users/s':>13} | "
            f"{'adarec / floor (time)':>21} | {'vs reused-buffer floor':>22} |")
    print(head)
    print("|" + "|".join("-" * len(c) for c in head.split("|")[1:-1]) + "|")
    for n in args.items:
        fns = paths(n, args)
        for fn in fns.values():  # warm-up
            fn()
        t: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(args.rounds):
            for k, fn in fns.items():
                t[k].append(timed(fn))
        def ratio(ours: list[float], floor: list[float]) -> str:
            return f"{statistics.median(a / b for a, b in zip(ours, floor, strict=True)):.2f}x"

        for name in ("ranks", "ranks, expected", "top-k"):
            base = name.split(",")[0]
            ours, floor = t[name], t[f"{base} floor"]
            strict = ratio(ours, t["ranks floor reused"]) if base == "ranks" else "-"
            print(f"| {n:>9,} | {name:<15} | {args.users / statistics.median(ours):>14,.0f} | "
                  f"{args.users / statistics.median(floor):>13,.0f} | {ratio(ours, floor):>21} | "
                  f"{strict:>22} |", flush=True)


if __name__ == "__main__":
    main()
