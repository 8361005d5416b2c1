"""Approximate retrieval (`adarec.rec.ann.ItemIndex`) against the exact top-k, one run.

Random item tables (float32, ``N(0, 1)``, d = 64 = TransRec's default ``user_dim``; row 0 is
padding) of 100k and 1M items served by a `TransRec` over a `PrecomputedItemEncoder` (no DTL),
dot-product scores; 1,024 random user vectors. Random Gaussian vectors have no cluster
structure, so they are a hard case for any index: trained item tables usually give higher
recall at the same settings.

Per catalogue size and index kind (flat, HNSW, IVF-PQ at several search widths): build time,
index size (faiss's serialised bytes), latency p50/p99 of one user's top-10 (``--latency``
single-user calls), throughput of one call for 1,024 users, recall@10 against the exact top-10
(`adarec.rec.scoring.topk`: ties broken by the lower item index on both sides, since the ANN
results are re-ranked by the same scoring), and the exact path's throughput and latency in the
same run with the same threads.

    python benchmarks/bench_ann.py                         # 100k and 1M
    python benchmarks/bench_ann.py --items 100000 --latency 50    # quick look
    python benchmarks/bench_ann.py --items 10000000 --kinds ivfpq # if it fits (see the estimate)
"""

from __future__ import annotations

import argparse
import statistics
import time

import faiss
import torch
from torch import Tensor

from adarec.rec import PrecomputedItemEncoder, TransRec
from adarec.rec.ann import ItemIndex
from adarec.rec.scoring import topk

WIDTHS = {"flat": [None], "hnsw": [256, 512, 1024], "ivfpq": [64, 256, 1024]}


def estimate_gb(n: int, d: int, kinds: list[str]) -> float:
    """Peak memory: the table twice (the encoder's buffer and the model's cached table), plus
    each index (flat 4d, HNSW 4d + 2 x 4 x 32 links, IVF-PQ d/2 + 8 bytes an item)."""
    per_item = {"flat": 4 * d, "hnsw": 4 * d + 256 + 8, "ivfpq": d // 2 + 8}
    return (2 * 4 * d * n + max(per_item[k] * n for k in kinds)) / 1e9


def recall(got: Tensor, truth: Tensor) -> float:
    hits = sum(len(set(a) & set(b)) for a, b in zip(got.tolist(), truth.tolist(), strict=True))
    return hits / truth.numel()


def latency_ms(fn, users: Tensor, n: int) -> tuple[float, float]:
    times = []
    for i in range(n):
        t = time.perf_counter()
        fn(users[i : i + 1])
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(0.99 * len(times)))]


def run(n: int, args: argparse.Namespace) -> list[dict[str, object]]:
    g = torch.Generator().manual_seed(0)
    table = torch.randn(n + 1, args.dim, generator=g)
    model = TransRec(PrecomputedItemEncoder(table), dtl=False, user_dim=args.dim, max_len=5,
                     dropout=0.0).eval()
    del table
    items = model.item_vectors()
    users = torch.randn(args.users, args.dim, generator=g)
    pad = torch.zeros(args.users, 1, dtype=torch.long)

    def exact(u: Tensor) -> Tensor:
        return topk(u, items, args.k, exclude=pad[: u.size(0)])[1]

    t = time.perf_counter()
    truth = exact(users)
    exact_s = time.perf_counter() - t
    p50, p99 = latency_ms(exact, users, min(args.latency, 50))
    rows: list[dict[str, object]] = [dict(items=n, kind="exact (scoring.topk)", width="",
                                          build_s=0.0, size_mb=4 * args.dim * n / 1e6,
                                          p50=p50, p99=p99, users_s=args.users / exact_s,
                                          recall=1.0, speedup=1.0)]
    print(f"  exact: {args.users / exact_s:,.0f} users/s, p50 {p50:.1f} ms", flush=True)
    for kind in args.kinds:
        t = time.perf_counter()
        index = ItemIndex.build(model, kind)
        build_s = time.perf_counter() - t
        size = len(faiss.serialize_index(index.index)) / 1e6
        for width in WIDTHS[kind]:
            if kind == "hnsw":
                index.ef_search = width
            elif kind == "ivfpq":
                index.nprobe = width
            index.search(users[:16], args.k)  # warm up

            def approx(u: Tensor, index: ItemIndex = index) -> Tensor:
                return index.search(u, args.k).indices

            t = time.perf_counter()
            got = approx(users)
            s = time.perf_counter() - t
            p50, p99 = latency_ms(approx, users, args.latency)
            row = dict(items=n, kind=f"{kind} ({index.factory})",
                       width="" if width is None else
                       f"{'ef' if kind == 'hnsw' else 'nprobe'}={width}",
                       build_s=build_s, size_mb=size, p50=p50, p99=p99, users_s=args.users / s,
                       recall=recall(got, truth), speedup=exact_s / s)
            rows.append(row)
            print(f"  {row['kind']} {row['width']}: build {build_s:.1f} s, recall "
                  f"{row['recall']:.4f}, {row['users_s']:,.0f} users/s ({row['speedup']:.1f}x)",
                  flush=True)
        del index
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--kinds", nargs="+", default=["flat", "hnsw", "ivfpq"])
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--users", type=int, default=1024)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--latency", type=int, default=200, help="single-user calls timed")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-gb", type=float, default=8.0, help="skip sizes estimated above this")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for n in args.items:
        gb = estimate_gb(n, args.dim, args.kinds)
        if gb > args.max_gb:
            print(f"{n:,} items: skipped, estimated {gb:.1f} GB > --max-gb {args.max_gb}")
            continue
        print(f"{n:,} items (estimated peak {gb:.1f} GB), {args.threads} threads", flush=True)
        rows.extend(run(n, args))
    print(f"\n| items | index | search width | build s | size MB | p50 ms (1 user) | p99 ms "
          f"| users/s ({args.users} users) | vs exact | recall@{args.k} |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['items']:,} | {r['kind']} | {r['width']} | {r['build_s']:.1f} | "
              f"{r['size_mb']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['users_s']:,.0f} | "
              f"{r['speedup']:.1f}x | {r['recall']:.4f} |")


if __name__ == "__main__":
    main()
