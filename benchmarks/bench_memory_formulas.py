"""Every table and cache a TransRec trains and evaluates with, by its formula and as allocated.

Builds the epoch benchmark's models (MovieLens-100k, all-MiniLM-L6-v2, the quickstart's
settings) and prints, per table, the formula, its bytes and the bytes of the tensor the library
actually holds: the item table, the side network's hidden-state cache, the frozen-prefix cache
(Houlsby in the top 2 blocks), gradients and AdamW state (side network, full fine-tuning),
and the evaluation's score buffers (formula; the measured part is the resident high-water mark
an evaluation adds).

    python benchmarks/bench_memory_formulas.py          # ~2 min on 2 quiet cores
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common

from adarec.machine import peak_rss_bytes, reset_peak_rss, rss_bytes
from adarec.rec.data import TrainCollator, TrainDataset
from adarec.rec.param_groups import param_groups
from adarec.rec.scoring import ITEM_TILE, USER_TILE
from adarec.rec.state_cache import state_cache_bytes
from adarec.rec.training import batches, epoch_order, train_step

MB = 2**20
EVAL_BATCH = 256  # evaluate_ranking's default batch_size


def row(name: str, formula: str, expected: int, measured: int | None) -> None:
    got = "" if measured is None else f"{measured / MB:.2f}"
    print(f"| {name} | `{formula}` | {expected / MB:.2f} | {got} |", flush=True)


def nbytes(tensors: list[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def one_step(model: torch.nn.Module, split: object, args: argparse.Namespace
             ) -> torch.optim.Optimizer:
    """One training step, so gradients and the optimizer state exist."""
    optimizer = torch.optim.AdamW(param_groups(model, lr=args.lr, base_lr=args.encoder_lr))
    dataset = TrainDataset.for_split(split, args.max_len, sampling=args.sampling)  # type: ignore[arg-type]
    collator = TrainCollator(model.n_items, args.max_len, args.negatives, args.seed)  # type: ignore[arg-type]
    order = epoch_order(len(dataset), torch.Generator().manual_seed(args.seed))
    model.train()
    batch = next(iter(batches(dataset, collator, order, args.batch_size)))
    optimizer.zero_grad(set_to_none=True)
    train_step(model, batch, optimizer, args.precision)
    return optimizer


def training_rows(label: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    trainable = [p for p in model.parameters() if p.requires_grad]
    p = sum(t.numel() for t in trainable)
    state = [v for s in optimizer.state.values() for v in s.values()
             if isinstance(v, torch.Tensor) and v.dim() > 0]
    grads = [t.grad for t in trainable if t.grad is not None]
    row(f"{label}: gradients", f"P x 4 (P = {p:,})", p * 4, nbytes(grads) if grads else None)
    row(f"{label}: AdamW state", "2 x P x 4", 2 * p * 4, nbytes(state))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    opts = p.parse_args()
    torch.set_num_threads(opts.threads)
    print(_common.cpu_line())
    args = _common.parse_quickstart_args(["--method", "side"])
    random.seed(0)
    torch.manual_seed(0)
    data, split = _common.load_data(args)
    n, d, T = data.n_items + 1, args.dim, args.text_len
    print(f"\nMovieLens-100k: N + 1 = {n} item rows, d = {d}, text length T = {T}\n")
    print("| table | formula | formula MB | allocated MB |")
    print("|---|---|---|---|")

    model, _ = _common.build_model(args, data)
    encoder = model.item_encoder
    table = model.item_table()
    row("item table (fp32)", f"(N + 1) x d x 4 = {n} x {d} x 4", n * d * 4,
        table.numel() * table.element_size())
    cache = encoder._state_cache
    sides = encoder.side_networks()
    slots = encoder._slots(sides)
    hidden = int(encoder.dim)
    stored = cache.table.size(1) if cache is not None else len(slots) + 1
    row("hidden-state cache, pooled (fp32)",
        f"(N + 1) x S x H x 4 = {n} x {stored} x {hidden} x 4 (S: {len(slots)} tapped blocks"
        f"{' + the final state' if stored > len(slots) else ''})",
        state_cache_bytes(n, stored, hidden), cache.nbytes if cache is not None else None)
    row("hidden-state cache, token states (fp32)", f"(N + 1) x T x S x H x 4 = {n} x {T} x "
        f"{stored} x {hidden} x 4", state_cache_bytes(n, stored, hidden, tokens=T), None)
    row("hidden-state cache, pooled (bf16)", "(N + 1) x S x H x 2",
        state_cache_bytes(n, stored, hidden, torch.bfloat16), None)
    buffer = EVAL_BATCH * n * 4
    row("evaluation score buffer", f"batch x (N + 1) x 4 = {EVAL_BATCH} x {n} x 4", buffer, None)
    tiles = (USER_TILE * ITEM_TILE + (USER_TILE + ITEM_TILE) * d) * 4
    row("score tiles", f"(U_t x I_t + (U_t + I_t) x d) x 4, U_t = {USER_TILE}, I_t = "
        f"{ITEM_TILE}", tiles, None)
    base = rss_bytes()
    reset_peak_rss()
    _common.evaluate(model, split.valid, args)
    row("evaluation (score buffer + tiles + user vectors), high-water mark", "as above",
        buffer + tiles + len(split.valid) * d * 4, max(peak_rss_bytes() - base, 0))
    training_rows("side network", model, one_step(model, split, args))

    args = _common.parse_quickstart_args(["--method", "houlsby", "--adapter-layers", "2"])
    model, _ = _common.build_model(args, data)
    model.item_table()
    prefix = model.item_encoder._prefix
    width = int(model.item_encoder.input_ids.size(1))
    row("frozen-prefix cache (Houlsby top 2, fp32)",
        f"(N + 1) x T x H x 4 = {n} x {width} x {hidden} x 4", n * width * hidden * 4,
        prefix.numel() * prefix.element_size() if prefix is not None else None)

    args = _common.parse_quickstart_args(["--method", "full"])
    model, _ = _common.build_model(args, data)
    weights = [p for p in model.parameters()]
    row("full fine-tuning: weights", "P_all x 4", sum(w.numel() for w in weights) * 4,
        nbytes([w.detach() for w in weights]))
    training_rows("full fine-tuning", model, one_step(model, split, args))


if __name__ == "__main__":
    main()
