"""TransRec epoch on MovieLens-100k with all-MiniLM-L6-v2: where adapter and side tuning save time.

Every configuration is the quickstart's (``examples/quickstart.py --method ...``: same data, seed,
settings, and the library's model recipes and training step) held in its own worker process;
the workers train **one epoch at a time, in turn** (interleaved rounds, the order rotated
every round), so all configurations see the same machine conditions, and each process's memory
high-water mark is its own. Per configuration:
training seconds per epoch (median over rounds; evaluation excluded), speed-ups as medians of
per-round ratios, memory (the process's resident high-water mark ``VmHWM``, reset after the
model is built where the kernel allows, and the training memory: that peak minus the resident
size of the built model, i.e. what training adds: activations, gradients, optimizer state,
caches), trainable parameters, and test HR@10 / NDCG@10 of the epoch chosen by validation
NDCG@10. TPME (Fu et al., IISAN, SIGIR 2024: training time, parameters and memory, each min-max
normalised across the rows, weighted 0.45 / 0.1 / 0.45; lower is better; here with the training
memory) summarises efficiency. ID-SASRec (the same SASRec over learnt item IDs, no encoder) and
the frozen encoder (a fixed item table) are the floor: training a recommender without running an
encoder, which a side network over cached states should approach ("epoch / ID-SASRec").

    python benchmarks/bench_transrec_epoch.py --epochs 5            # ~10 min on 2 quiet cores
    python benchmarks/bench_transrec_epoch.py --configs side --epochs 3
    python benchmarks/bench_transrec_epoch.py --epochs 2 --max-steps 40   # a short run
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python benchmarks/...   # emulate AVX2 only
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from multiprocessing.connection import Connection
from typing import Any

import _common

TOP = 2
ID = "ID-SASRec"
CONFIGS: dict[str, list[str]] = {
    ID: ["--method", "id"],
    "frozen encoder": ["--method", "frozen"],
    "full fine-tuning": ["--method", "full"],
    "houlsby, all blocks": ["--method", "houlsby"],
    f"houlsby, top {TOP} + prefix cache": ["--method", "houlsby", "--adapter-layers", str(TOP)],
    "side, uncached": ["--method", "side", "--no-state-cache"],
    "side, cached": ["--method", "side"],
}
EXTRA: dict[str, list[str]] = {
    "side tokens, cached": ["--method", "side", "--side-states", "tokens"],
    "side tokens, uncached": ["--method", "side", "--side-states", "tokens", "--no-state-cache"],
    "side, cached, bf16 cache": ["--method", "side", "--cache-dtype", "bf16"],
    f"houlsby, top {TOP} + bf16 prefix cache": [
        "--method", "houlsby", "--adapter-layers", str(TOP), "--cache-dtype", "bf16"],
    f"houlsby, top {TOP} + cache, no dedup": [
        "--method", "houlsby", "--adapter-layers", str(TOP), "--no-dedup"],
}


def worker(argv: list[str], conn: Connection, max_steps: int = 0) -> None:
    """Build one configuration (the quickstart's, from its options), then train an epoch
    (its first ``max_steps`` batches, when given) whenever asked."""
    import itertools
    import random

    import torch

    import adarec
    from adarec.machine import fixed_mmap_threshold, peak_rss_bytes, reset_peak_rss, rss_bytes
    from adarec.rec.data import TrainCollator, TrainDataset
    from adarec.rec.param_groups import param_groups
    from adarec.rec.training import batches, epoch_order, train_step

    fixed_mmap_threshold()  # no glibc heap growth from per-batch shapes (see docs/transrec.md)
    args = _common.parse_quickstart_args(argv)
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    data, split = _common.load_data(args)
    model, summary = _common.build_model(args, data)
    model.dedup = not args.no_dedup
    optimizer = torch.optim.AdamW(param_groups(model, lr=args.lr, base_lr=args.encoder_lr))
    dataset = TrainDataset.for_split(split, args.max_len, sampling=args.sampling)
    collator = TrainCollator(data.n_items, args.max_len, args.negatives, args.seed)
    order_rng = torch.Generator().manual_seed(args.seed)
    rss_built, peak_reset = rss_bytes(), reset_peak_rss()
    best: tuple[float, int, dict[str, Any]] = (-1.0, 0, {})
    epoch = 0
    conn.send("ready")
    while (cmd := conn.recv()) == "epoch":
        epoch += 1
        start = time.perf_counter()
        model.train()
        steps = batches(dataset, collator, epoch_order(len(dataset), order_rng),
                        args.batch_size)
        losses = [train_step(model, batch, optimizer, args.precision) for batch in
                  (itertools.islice(steps, max_steps) if max_steps else steps)]
        seconds = time.perf_counter() - start
        trained_peak = peak_rss_bytes()  # before this epoch's evaluation
        valid = _common.evaluate(model, split.valid, args)  # history masked (adarec's)
        if valid["ndcg@10"] > best[0]:
            best = (valid["ndcg@10"], epoch, {n: p.detach().clone()
                                              for n, p in model.named_parameters()
                                              if p.requires_grad})
        conn.send({"seconds": seconds, "loss": sum(losses) / max(len(losses), 1),
                   "valid": valid, "train_mem": max(trained_peak - rss_built, 0)})
    assert cmd == "finish"
    with torch.no_grad():
        params = dict(model.named_parameters())
        for name, value in best[2].items():
            params[name].copy_(value)
    model.invalidate_cache()
    conn.send({"test": _common.evaluate(model, split.test, args), "best_epoch": best[1],
               "trainable": summary.trainable, "total": summary.total,
               "peak": peak_rss_bytes(), "rss_built": rss_built, "peak_reset": peak_reset,
               "precision": str(adarec.precision.resolve_precision(args.precision))})


def tpme(rows: dict[str, dict[str, float]]) -> dict[str, float]:
    """IISAN's TPME: 0.45 T + 0.1 P + 0.45 M over min-max normalised columns."""
    def norm(key: str) -> dict[str, float]:
        values = [r[key] for r in rows.values()]
        lo, hi = min(values), max(values)
        return {n: (r[key] - lo) / (hi - lo) if hi > lo else 0.0 for n, r in rows.items()}

    t, p, m = norm("seconds"), norm("trainable"), norm("peak")
    return {n: 0.45 * t[n] + 0.1 * p[n] + 0.45 * m[n] for n in rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--max-steps", type=int, default=0,
                   help="train only the first N batches of each epoch (0: all; a short run)")
    p.add_argument("--configs", nargs="*",
                   help="run only configurations whose name contains one of these words")
    p.add_argument("--extra", action="store_true", help=f"also run {list(EXTRA)}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=1e-3,
                   help="adapters, side networks, DTL, SASRec (fine-tuned encoder: 5e-5)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    p.add_argument("--quickstart-args", default="", help="more quickstart options, one string")
    args = p.parse_args()
    table = {**CONFIGS, **(EXTRA if args.extra else {})}
    chosen = {n: a for n, a in table.items()
              if not args.configs or any(w in n for w in args.configs)}
    common = ["--seed", str(args.seed), "--lr", str(args.lr), "--threads", str(args.threads),
              "--precision", args.precision, "--epochs", str(args.epochs), "--out",
              "/tmp/adarec-bench-unused", *args.quickstart_args.split()]
    spawn = multiprocessing.get_context("spawn")
    workers: dict[str, tuple[Any, Connection]] = {}
    for name, extra in chosen.items():  # built one at a time: model loading is not timed
        parent, child = spawn.Pipe()
        proc = spawn.Process(target=worker, args=([*extra, *common], child, args.max_steps),
                             daemon=True)
        proc.start()
        if parent.recv() != "ready":
            raise SystemExit(f"{name}: worker failed to start")
        workers[name] = (proc, parent)
        print(f"built {name}", flush=True)
    epochs: dict[str, list[dict[str, Any]]] = {n: [] for n in chosen}
    names = list(chosen)
    for r in range(args.epochs):
        for name in names[r % len(names):] + names[: r % len(names)]:
            conn = workers[name][1]
            conn.send("epoch")
            epochs[name].append(conn.recv())
            print(f"round {r + 1}: {name}: {epochs[name][-1]['seconds']:.1f}s", flush=True)
    final = {}
    for name, (proc, conn) in workers.items():
        conn.send("finish")
        final[name] = conn.recv()
        proc.join()
    report(args, epochs, final)


def report(args: argparse.Namespace, epochs: dict[str, list[dict[str, Any]]],
           final: dict[str, dict[str, Any]]) -> None:
    secs = {n: [e["seconds"] for e in v] for n, v in epochs.items()}

    def ratio(base: str, name: str) -> float:
        """Median over rounds of base's seconds / name's (same-run speed-up of name)."""
        if base not in secs:
            return float("nan")
        return statistics.median(b / s for b, s in zip(secs[base], secs[name], strict=True))

    for f in final.values():
        f["train_mem"] = max(f["peak"] - f["rss_built"], 0)
    rows = {n: {"seconds": statistics.median(secs[n]), "trainable": f["trainable"],
                "peak": f["train_mem"]} for n, f in final.items()}
    score = tpme(rows)
    full = final.get("full fine-tuning")
    top = f"houlsby, top {TOP} + prefix cache"
    precision = {f["precision"] for f in final.values()}
    steps = f" of {args.max_steps} batches" if args.max_steps else ""
    print(f"\nMovieLens-100k, all-MiniLM-L6-v2, {args.epochs} epochs{steps}, seed {args.seed}, lr "
          f"{args.lr}, precision {args.precision} -> {', '.join(sorted(precision))}, "
          f"{args.threads} threads, interleaved rounds; test HR@10 / NDCG@10 with the history "
          "masked, ties against the target")
    print(_common.cpu_line())
    if not all(f["peak_reset"] for f in final.values()):
        print("(VmHWM could not be reset after building: peaks include the model build)")
    print("\n| configuration | trainable | train s / epoch | speed-up vs full FT | vs Houlsby "
          f"top-2 + cache | epoch / {ID} | peak RSS MB | training MB | training MB / full FT | "
          "HR@10 | NDCG@10 | HR@10 / full FT | TPME |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, f in final.items():
        hr = f["test"]["hr@10"]
        mem = f["train_mem"] / full["train_mem"] if full else float("nan")
        print(f"| {name} | {f['trainable']:,} ({100 * f['trainable'] / f['total']:.1f}%) | "
              f"{rows[name]['seconds']:.2f} | {ratio('full fine-tuning', name):.2f}x | "
              f"{ratio(top, name):.2f}x | {ratio(name, ID):.2f}x | "
              f"{f['peak'] / 2**20:.0f} | "
              f"{f['train_mem'] / 2**20:.0f} | {mem:.2f} | {hr:.4f} | "
              f"{f['test']['ndcg@10']:.4f} | "
              f"{hr / full['test']['hr@10'] if full else float('nan'):.2f} | "
              f"{score[name]:.3f} |")
    print("\nfirst-epoch seconds (cache builds happen there): " + ", ".join(
        f"{n} {s[0]:.1f}" for n, s in secs.items()))
    print("training MB after each epoch's training (before its evaluation): " + "; ".join(
        f"{n} " + " / ".join(f"{e['train_mem'] / 2**20:.0f}" for e in v)
        for n, v in epochs.items()))


if __name__ == "__main__":
    main()
