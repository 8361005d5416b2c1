"""Cost of fingerprinting a base model's weights (what `save_adapters` records and
`load_adapters` checks): a sha256 of each tensor's bytes, on a BERT-base-shaped random model.

Also checks the digests are the same with 1, 2 and 4 hashing threads and with 1 or 2 torch
threads (they are bytes, not float sums, so they must be). A Houlsby set is injected so the
numbers include the split into adapter and base tensors; ``save`` and ``load`` are whole
`save_adapters` / `load_adapters` calls of that set (tmpfs-backed /tmp on Linux).

    python benchmarks/bench_fingerprint.py
    OPENSSL_ia32cap=":~0x20000000" python benchmarks/bench_fingerprint.py  # no SHA instructions
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from bert_shape import add_shape_args, bert_model

import adarec
from adarec.checkpoint import _base_tensors, weights_digest


def seconds(fn, rounds: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_shape_args(p)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = bert_model(args)
    adarec.inject_adapters(model, "houlsby")
    base = _base_tensors(model, adarec.adapter_parameters(model))
    n_bytes = sum(t.numel() * t.element_size() for t in base.values())
    print(f"torch {torch.__version__}; {len(base)} base tensors, "
          f"{sum(t.numel() for t in base.values()) / 1e6:.1f} M values, {n_bytes / 2**20:.0f} MiB; "
          f"os.cpu_count() = {os.cpu_count()}; median of {args.rounds} rounds")
    ref = weights_digest(base)
    same = all(weights_digest(base, workers=w) == ref for w in (1, 2, 4))
    torch.set_num_threads(1)
    same &= weights_digest(base) == ref
    torch.set_num_threads(args.threads)
    print("| what | seconds | MiB/s |")
    print("|---|---|---|")
    for workers in (1, 2):
        t = seconds(lambda w=workers: weights_digest(base, workers=w), args.rounds)
        print(f"| digest, {workers} hashing thread{'s' * (workers > 1)} | {t:.3f} | "
              f"{n_bytes / 2**20 / t:,.0f} |")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "houlsby"
        t_save = seconds(lambda: adarec.save_adapters(model, path), args.rounds)
        t_load = seconds(lambda: adarec.load_adapters(model, path), args.rounds)
    print(f"| save_adapters (Houlsby set + base digest) | {t_save:.3f} | - |")
    print(f"| load_adapters (read, checks, base digest, copy) | {t_load:.3f} | - |")
    print(f"digests identical across hashing threads 1/2/4 and torch threads 1/{args.threads}: "
          f"{same}")


if __name__ == "__main__":
    main()
