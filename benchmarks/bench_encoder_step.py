"""Encoder step benchmark: forward / training step time and peak memory per adapter method.

A BERT-base-shaped encoder (random weights, 12 x 768 by default), batch 64 x 32 tokens, on the CPU
threads you give it. Every configuration is timed in the same process, interleaved round by round,
and reported as the median; ratios are to full fine-tuning measured in the same run, because
absolute times on a shared machine are noisy. Peak memory (``--memory``) runs each configuration
in a fresh subprocess and reports the growth of its peak RSS over the model's own footprint.

    python benchmarks/bench_encoder_step.py                 # full size (several minutes on 2 cores)
    python benchmarks/bench_encoder_step.py --layers 2 --rounds 2   # quick look
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections.abc import Callable

import torch
from bert_shape import add_shape_args, bert_model, timed_ms, token_batch

import adarec
from adarec.machine import peak_rss_bytes, rss_bytes

METHODS = ["houlsby", "pfeiffer", "parallel", "compacter", "lora"]
MERGED = "lora merged (inference)"
CONFIGS = ["base forward (frozen)", "full fine-tuning", *METHODS, MERGED]
"""Forward-only rows: the frozen base, and LoRA folded into the base weights for serving."""


Built = tuple[torch.nn.Module, torch.optim.Optimizer | None]


def build(args: argparse.Namespace, config: str) -> Built:
    model = bert_model(args)
    model.train()
    if config in METHODS:
        adarec.inject_adapters(model, config)
    elif config == MERGED:  # merging costs nothing at inference: the forward is the base's
        adarec.inject_adapters(model, "lora")
        adarec.merge_adapters(model)
        adarec.freeze(model)
        return model, None
    elif config.startswith("base"):
        adarec.freeze(model)
        return model, None
    params = list(adarec.trainable_parameters(model).values())
    return model, torch.optim.AdamW(params, lr=1e-4)


def step_fn(
    model: torch.nn.Module, opt: torch.optim.Optimizer | None, x: dict
) -> Callable[[], None]:
    def forward() -> None:
        with torch.no_grad():
            model(**x)

    def train() -> None:
        assert opt is not None
        opt.zero_grad(set_to_none=True)
        model(**x).last_hidden_state.float().pow(2).mean().backward()
        opt.step()

    return forward if opt is None else train


def run_timing(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    x = token_batch(args)
    built = {c: build(args, c) for c in args.configs}
    fwd: dict[str, list[float]] = {c: [] for c in args.configs}
    stp: dict[str, list[float]] = {c: [] for c in args.configs}
    for model, opt in built.values():  # warm-up: allocator, optimizer state, kernels
        step_fn(model, opt, x)()
    for _ in range(args.rounds):
        for c, (model, opt) in built.items():
            fwd[c].append(timed_ms(step_fn(model, None, x)))
            if opt is not None:
                stp[c].append(timed_ms(step_fn(model, opt, x)))
    out = {}
    for c, (model, _) in built.items():
        s = adarec.parameter_summary(model)
        out[c] = {
            "forward_ms": statistics.median(fwd[c]),
            "step_ms": statistics.median(stp[c]) if stp[c] else float("nan"),
            "trainable": s.trainable if built[c][1] is not None else 0,
            "percent": s.percent if built[c][1] is not None else 0.0,
        }
    return out


def peak_memory_mb(args: argparse.Namespace, config: str) -> float:
    """Run one configuration in a subprocess; peak RSS growth over the built model during two
    training steps (activations, gradients, optimizer state)."""
    cmd = [sys.executable, __file__, "--_child", config, "--layers", str(args.layers),
           "--hidden", str(args.hidden), "--batch", str(args.batch), "--seq", str(args.seq),
           "--threads", str(args.threads)]
    return float(json.loads(subprocess.check_output(cmd, text=True).strip().splitlines()[-1]))


def child(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    model, opt = build(args, args._child)
    x = token_batch(args)
    before = rss_bytes() / 2**20
    for _ in range(2):
        step_fn(model, opt, x)()
    print(json.dumps(peak_rss_bytes() / 2**20 - before))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_shape_args(p)
    p.add_argument("--configs", nargs="+", default=CONFIGS, choices=CONFIGS)
    p.add_argument("--memory", action="store_true", help="also measure peak memory (subprocesses)")
    p.add_argument("--_child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._child:
        return child(args)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads; BERT-shaped {args.layers} x "
          f"{args.hidden}, batch {args.batch} x {args.seq} tokens, median of {args.rounds} rounds")
    res = run_timing(args)
    full = res.get("full fine-tuning", {}).get("step_ms", float("nan"))
    base_fwd = res.get(CONFIGS[0], {}).get("forward_ms", float("nan"))
    mem = {c: peak_memory_mb(args, c) for c in args.configs} if args.memory else {}
    head = (f"| {'configuration':<24} | {'trainable':>11} | {'%':>6} | {'forward ms':>10} | "
            f"{'fwd / base':>10} | {'step ms':>9} | {'step / full FT':>14} |")
    if mem:
        head += f" {'peak MB':>8} |"
    print(head)
    print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
    for c, r in res.items():
        line = (f"| {c:<24} | {r['trainable']:>11,} | {r['percent']:>6.2f} | "
                f"{r['forward_ms']:>10.1f} | {r['forward_ms'] / base_fwd:>10.2f} | "
                f"{r['step_ms']:>9.1f} | {r['step_ms'] / full:>14.2f} |")
        if mem:
            line += f" {mem[c]:>8.0f} |"
        print(line)


if __name__ == "__main__":
    main()
