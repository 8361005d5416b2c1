"""TransRec epoch on MovieLens-100k with all-MiniLM-L6-v2: where adapter tuning saves time.

Runs the quickstart (``examples/quickstart.py``) once per configuration, one after the other, with
the same data, seed, epochs and settings, and reads each run's ``results.json``: training seconds
per epoch (evaluation excluded), and the test HR@10 / NDCG@10 of the epoch chosen by validation.
Configurations: full fine-tuning, Houlsby in every block, Houlsby in the top ``--top`` blocks
with the frozen lower blocks computed once (the exact frozen-prefix cache), and the same without
per-batch item deduplication.

    python benchmarks/bench_transrec_epoch.py --epochs 5        # ~15 min on 2 quiet cores
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "quickstart.py"


def configs(top: int) -> dict[str, list[str]]:
    return {
        "full fine-tuning": ["--method", "full"],
        "houlsby, all blocks": ["--method", "houlsby"],
        f"houlsby, top {top} + prefix cache": ["--method", "houlsby", "--adapter-layers", str(top)],
        f"houlsby, top {top} + bf16 prefix cache": [
            "--method", "houlsby", "--adapter-layers", str(top), "--cache-dtype", "bf16"],
        f"houlsby, top {top} + cache, no dedup": [
            "--method", "houlsby", "--adapter-layers", str(top), "--no-dedup"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--top", type=int, default=2, help="adapted blocks for the cached runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=1e-3,
                   help="adapters, DTL, SASRec (the fine-tuned encoder keeps 5e-5)")
    p.add_argument("--only", nargs="*", help="run only configurations containing these words")
    args = p.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, extra) in enumerate(configs(args.top).items()):
            if args.only and not any(w in name for w in args.only):
                continue
            out = Path(tmp) / str(i)
            cmd = [sys.executable, str(QUICKSTART), "--epochs", str(args.epochs),
                   "--seed", str(args.seed), "--lr", str(args.lr), "--out", str(out), *extra]
            print(f"running {name}: {' '.join(cmd[1:])}", flush=True)
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            rows[name] = json.loads((out / "results.json").read_text())
    full = rows.get("full fine-tuning")
    print(f"\nMovieLens-100k, all-MiniLM-L6-v2, {args.epochs} epochs, seed {args.seed}, "
          f"lr {args.lr}, bf16 autocast, 2 threads")
    print("| configuration | trainable | train s / epoch | speed-up vs full FT | HR@10 | "
          "NDCG@10 | HR@10 / full FT |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        sec = statistics.median(r["train_seconds_per_epoch"])
        speed = statistics.median(full["train_seconds_per_epoch"]) / sec if full else float("nan")
        hr_ratio = r["test"]["hr@10"] / full["test"]["hr@10"] if full else float("nan")
        print(f"| {name} | {r['trainable']:,} ({100 * r['trainable'] / r['total']:.1f}%) | "
              f"{sec:.1f} | {speed:.2f}x | {r['test']['hr@10']:.4f} | "
              f"{r['test']['ndcg@10']:.4f} | {hr_ratio:.2f} |")


if __name__ == "__main__":
    main()
