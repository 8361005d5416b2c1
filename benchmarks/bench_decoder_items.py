"""A decoder LLM as the item encoder: step time and memory per item, LoRA inside vs. a cached side
network beside it, for a tiny and a mid-size randomly initialised Qwen2 (no download).

Each step encodes ``--batch`` random items (token rows of length uniform in 8..T, last-token
pooling) and back-propagates a scalar of their vectors: what a TransRec step costs on the item
side. LoRA runs the decoder forward and backward every step; the side network reads cached
last-token states (``(n_items + 1) * S * H`` values) and never runs the decoder after the cache
is built. Peak RSS growth is measured from just before the first step (VmHWM reset).

    python benchmarks/bench_decoder_items.py                 # ~1 min on 2 cores
    python benchmarks/bench_decoder_items.py --sizes mid --items 2000 --steps 5
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import transformers as tf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_line

import adarec
from adarec.machine import peak_rss_bytes, reset_peak_rss, rss_bytes
from adarec.rec import TextItemEncoder

SIZES = {  # hidden, blocks, heads, kv heads, MLP width, vocabulary
    "tiny": (64, 2, 4, 2, 128, 1000),
    "mid": (512, 8, 8, 2, 1408, 32000),
}


def encoder(size: str, items: int, t: int, method: str) -> TextItemEncoder:
    h, n, heads, kv, ff, vocab = SIZES[size]
    torch.manual_seed(0)
    model = tf.Qwen2Model(tf.Qwen2Config(hidden_size=h, num_hidden_layers=n,
                                         num_attention_heads=heads, num_key_value_heads=kv,
                                         intermediate_size=ff, vocab_size=vocab,
                                         max_position_embeddings=max(64, t), use_cache=False))
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(8, t + 1, (items + 1,), generator=g)
    mask = (torch.arange(t) < lengths[:, None]).long()
    ids = torch.randint(3, vocab, (items + 1, t), generator=g) * mask
    enc = TextItemEncoder(model, ids, mask, chunk_size=64, cache_states=method == "side")
    spec = (adarec.AdapterSpec.preset("side", side_pooling="last") if method == "side"
            else adarec.AdapterSpec.preset("lora"))
    adarec.inject_adapters(model, spec)
    adarec.mark_only_adapters_trainable(model)
    return enc


def run(size: str, method: str, args: argparse.Namespace) -> str:
    enc = encoder(size, args.items, args.text_len, method)
    params = [p for p in enc.parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(1, args.items + 1, (args.batch,), generator=g)
               for _ in range(args.steps + 1)]
    rss0, _ = rss_bytes(), reset_peak_rss()
    start = time.perf_counter()
    enc(batches[0]).square().mean().backward()  # warm-up (builds the side cache)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for ids in batches[1:]:
        for p in params:
            p.grad = None
        enc(ids).square().mean().backward()
    step = (time.perf_counter() - start) / args.steps
    growth = peak_rss_bytes() - rss0
    cache = enc._state_cache
    cached = f"{cache.nbytes / 2**20:.1f} MB" if cache is not None else "-"
    trainable = sum(p.numel() for p in params)
    h = SIZES[size][0]
    return (f"| {size} (H={h}) | {method} | {trainable:,} | {first:.2f} s | "
            f"{1e3 * step / args.batch:.2f} | {cached} | {growth / 2**20:.0f} MB |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["tiny", "mid"], choices=sorted(SIZES))
    p.add_argument("--methods", nargs="+", default=["lora", "side"], choices=("lora", "side"))
    p.add_argument("--items", type=int, default=1000)
    p.add_argument("--text-len", type=int, default=30)
    p.add_argument("--batch", type=int, default=64, help="items per step")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(cpu_line())
    print(f"{args.items:,} items, T={args.text_len}, {args.batch} items/step, "
          f"{args.steps} timed steps, {args.threads} threads, float32")
    print("| decoder | method | trainable | first step (cache build) | ms/item/step | "
          "state cache | peak RSS growth |")
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes:
        for method in args.methods:
            print(run(size, method, args), flush=True)


if __name__ == "__main__":
    main()
