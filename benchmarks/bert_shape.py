"""The workload both encoder benchmarks time: a randomly initialised BERT-shaped encoder (sdpa,
no pooler) and one fixed batch of token ids, with the command-line options that size them."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from transformers import BertConfig, BertModel


def add_shape_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seq", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)


def bert_model(args: argparse.Namespace) -> BertModel:
    """The same weights on every call (seed 0): BERT-base with the defaults."""
    torch.manual_seed(0)
    cfg = BertConfig(
        hidden_size=args.hidden, num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64, intermediate_size=4 * args.hidden,
        attn_implementation="sdpa",
    )
    return BertModel(cfg, add_pooling_layer=False)


def token_batch(args: argparse.Namespace) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (args.batch, args.seq), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def timed_ms(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3
