"""Peers benchmark: one training step of adarec against peft (LoRA) and AdapterHub `adapters`
(Houlsby, Pfeiffer, Compacter) on the same BERT-base-shaped encoder.

Every library gets a copy of one randomly initialised ``BertModel`` (same weights, same sdpa
attention, same dropout, train mode), batch 64 x 32 tokens, AdamW over its trainable parameters,
and is timed for forward + backward + optimizer step. Configurations are interleaved round by
round (the order rotates each round) and reported as medians; the ratio column is the median of
the per-round ratios adarec / peer, because absolute times on a shared machine drift.

AdapterHub pins an older transformers than adarec's main environment uses, so run it in the venv
made by ``benchmarks/peers_env.sh``, where all three libraries share one transformers:

    bash benchmarks/peers_env.sh
    .venv-peers/bin/python benchmarks/bench_peers.py                     # full size
    .venv-peers/bin/python benchmarks/bench_peers.py --layers 2 --rounds 2   # quick look
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch
from bert_shape import add_shape_args, bert_model, timed_ms, token_batch
from torch import nn
from transformers import BertModel

import adarec

CASES = ("lora", "houlsby", "pfeiffer", "compacter")


@dataclass
class Entry:
    case: str
    library: str
    model: nn.Module
    opt: torch.optim.Optimizer
    note: str = ""

    @property
    def trainable(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)


def adarec_spec(case: str, args: argparse.Namespace) -> adarec.AdapterSpec:
    """adarec's side; activations follow AdapterHub's defaults so both run the same op."""
    if case == "lora":
        return adarec.AdapterSpec.preset("lora", lora_r=8, lora_alpha=16.0, lora_dropout=0.0)
    act = {"houlsby": "swish", "pfeiffer": "relu", "compacter": "gelu"}[case]
    phm = {"phm_dim": 4, "phm_rank": 1} if case == "compacter" else {}
    return adarec.AdapterSpec.preset(case, bottleneck=args.bottleneck, activation=act, **phm)


def peer(case: str, model: BertModel, args: argparse.Namespace) -> tuple[nn.Module, str, str]:
    """The peer library's version of ``case`` on ``model``: (model, library, note)."""
    if case == "lora":
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"], lora_dropout=0.0,
                         bias="none")
        return get_peft_model(model, cfg), "peft", ""
    import adapters
    from adapters import CompacterConfig, DoubleSeqBnConfig, SeqBnConfig

    # adding an adapter logs "none are activated" before train_adapter activates it
    logging.getLogger("adapters").setLevel(logging.ERROR)

    rf = args.hidden / args.bottleneck  # AdapterHub sizes bottlenecks by a reduction factor
    if case == "houlsby":
        config, note = DoubleSeqBnConfig(reduction_factor=rf, non_linearity="swish"), ""
    elif case == "pfeiffer":
        # AdapterHub's default Pfeiffer also applies the block's LayerNorm before the adapter
        # (original_ln_before=True), one extra add + LayerNorm per block that adarec's Pfeiffer
        # does not do; switched off so both compute the same function.
        config = SeqBnConfig(reduction_factor=rf, non_linearity="relu", original_ln_before=False)
        note = "AH original_ln_before=False"
    else:
        config = CompacterConfig(reduction_factor=rf, non_linearity="gelu", phm_dim=4, phm_rank=1)
        note = "AH factorised W, shared rule"
    adapters.init(model)
    model.add_adapter("bench", config=config)
    model.train_adapter("bench")
    return model, "AdapterHub", note


def build(args: argparse.Namespace) -> list[Entry]:
    base = bert_model(args)
    entries = []
    for case in args.cases:
        ours = copy.deepcopy(base)
        adarec.inject_adapters(ours, adarec_spec(case, args))
        theirs, library, note = peer(case, copy.deepcopy(base), args)
        for lib, model, n in (("adarec", ours, ""), (library, theirs, note)):
            model.train()
            params = [p for p in model.parameters() if p.requires_grad]
            entries.append(Entry(case, lib, model, torch.optim.AdamW(params, lr=1e-4), n))
    return entries


def step(e: Entry, x: dict[str, torch.Tensor]) -> Callable[[], None]:
    def run() -> None:
        e.opt.zero_grad(set_to_none=True)
        e.model(**x).last_hidden_state.float().pow(2).mean().backward()
        e.opt.step()

    return run


def check(e: Entry) -> None:
    """After the warm-up step every trainable tensor must have a gradient (adapter wired in)."""
    missing = [n for n, p in e.model.named_parameters() if p.requires_grad and p.grad is None]
    if missing or e.trainable == 0:
        raise RuntimeError(f"{e.library} {e.case}: no gradient for {missing[:3]} (or nothing "
                           "trainable); the adapter is not in the forward pass")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_shape_args(p)
    p.add_argument("--bottleneck", type=int, default=64)
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import peft
    import transformers

    try:
        import adapters

        ah = adapters.__version__
    except ImportError:
        ah = "missing"
        args.cases = [c for c in args.cases if c == "lora"]
        print("AdapterHub `adapters` is not installed: only LoRA vs peft (see peers_env.sh)")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft "
          f"{peft.__version__}, adapters {ah}; {args.threads} threads; BERT-shaped {args.layers} "
          f"x {args.hidden}, batch {args.batch} x {args.seq}, median of {args.rounds} rounds")
    entries = build(args)
    x = token_batch(args)
    for e in entries:  # warm-up: allocator, optimizer state, kernels
        step(e, x)()
        check(e)
    ms: list[list[float]] = [[] for _ in entries]
    for r in range(args.rounds):
        shift = r % len(entries)
        for i in [*range(shift, len(entries)), *range(shift)]:
            ms[i].append(timed_ms(step(entries[i], x)))
    head = (f"| {'configuration':<13} | {'library':<10} | {'trainable':>10} | {'step ms':>8} | "
            f"{'adarec / peer':>13} | note |")
    print(head)
    print("|" + "|".join("-" * len(c) for c in head.split("|")[1:-1]) + "|")
    for i in range(0, len(entries), 2):
        ours, theirs = entries[i], entries[i + 1]
        ratio = statistics.median(a / b for a, b in zip(ms[i], ms[i + 1], strict=True))
        for e, t, rt in ((ours, ms[i], f"{ratio:.2f}x"), (theirs, ms[i + 1], "")):
            print(f"| {e.case:<13} | {e.library:<10} | {e.trainable:>10,} | "
                  f"{statistics.median(t):>8.1f} | {rt:>13} | {e.note} |")


if __name__ == "__main__":
    main()
