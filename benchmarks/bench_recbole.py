"""RecBole 1.2.1's SASRec beside adarec's ID-SASRec on MovieLens-100k or another shared data set
(``--dataset``, read as the quickstart's ``--dataset`` reads it): the same leave-one-out split
(checked user by user), the same model size, and both evaluation protocols scored by the
same metric code (adarec's `target_ranks` on each model's full score table).

Settings shared by both sides: 20 most recent items, width 64 (FFN 256), 2 layers, 2 heads,
dropout 0.2, full-softmax cross-entropy, Adam(W) at lr 1e-3 without weight decay, early stopping
on validation NDCG@10 (history unmasked, as RecBole scores it), fp32. RecBole keeps its own training
recipe (every prefix a training example, batch 2048, post-LN blocks); adarec uses its
quickstart's recipe (`examples/quickstart.py --method id`, given `--adarec-args`).

RecBole reads the interactions adarec loaded (`adarec.rec.datasets.load_shared`, as the
quickstart reads them, so both sides train on one split), written to ``--out/data`` with each
timestamp replaced by the item's position in its user's sequence: reading ML-100k itself,
RecBole keeps timestamps as float32 (64-second steps at these values), which ties interactions
a few seconds apart, and its split then differs from adarec's in 9 of the 1,886 validation and
test targets.

RecBole pins old numpy/pandas, so its side runs in the venv of `benchmarks/recbole_env.sh`:

    bash benchmarks/recbole_env.sh
    .venv-recbole/bin/python benchmarks/bench_recbole.py recbole --seeds 0 1 2
    python benchmarks/bench_recbole.py adarec --seeds 0 1 2
    python benchmarks/bench_recbole.py report

Each side saves one JSON per seed under ``--out`` and skips seeds already done. A RecBole seed
resumes from its last finished epoch (``--max-minutes`` bounds one call), because its runs are
long on a CPU. RecBole's trainer is driven epoch by epoch here (its ``fit`` loop would reload
its pickled checkpoint with ``torch.load``, which torch >= 2.6 refuses by default); the state
between calls is saved as plain tensors.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = {"max_len": 20, "dim": 64, "layers": 2, "heads": 2, "dropout": 0.2, "lr": 1e-3}
PROTOCOLS = ("masked", "unmasked")
KS = (10, 20)


# ------------------------------------------------------------------------------ RecBole side
def recbole_config(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "user_inter_num_interval": "[5,inf)",  # adarec's min_user_interactions
        "MAX_ITEM_LIST_LENGTH": SHARED["max_len"],
        "hidden_size": SHARED["dim"], "inner_size": 4 * SHARED["dim"],
        "n_layers": SHARED["layers"], "n_heads": SHARED["heads"],
        "hidden_dropout_prob": SHARED["dropout"], "attn_dropout_prob": SHARED["dropout"],
        "loss_type": "CE", "train_neg_sample_args": None,
        "learning_rate": SHARED["lr"], "train_batch_size": args.batch_size,
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user",
                      "mode": "full"},
        "metrics": ["Hit", "NDCG", "MRR"], "topk": list(KS), "valid_metric": "NDCG@10",
        "eval_batch_size": 4096, "seed": seed, "reproducibility": True, "use_gpu": False,
        "device": "cpu", "show_progress": False, "worker": 0, "state": "WARNING",
        "checkpoint_dir": str(Path(args.out).resolve() / "recbole-saved"),
    }


def run_recbole(seed: int, args: argparse.Namespace) -> None:
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    from adarec.rec.data import leave_one_out
    from adarec.rec.datasets import load_shared

    out = Path(args.out).resolve()  # RecBole's trainer runs inside it (see below)
    result_file = out / f"recbole-seed{seed}.json"
    if result_file.exists():
        print(f"recbole seed {seed}: done already ({result_file})")
        return
    torch.set_num_threads(args.threads)
    data = load_shared(args.dataset)  # what `quickstart.py --dataset` reads
    split = leave_one_out(data, skip_short=True)  # and how it splits it
    name = f"{args.dataset}-adarec"
    folder = _write_atomic(out / "data", data, name)
    os.chdir(out)  # RecBole's trainer writes ./log_tensorboard wherever it runs
    config = Config(model="SASRec", dataset=name,
                    config_dict={**recbole_config(seed, args), "data_path": str(folder.parent)})
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = SASRec(config, train_data.dataset).to(config["device"])
    trainer = Trainer(config, model)

    state_file = out / f"recbole-seed{seed}.state.pt"
    best_file = out / f"recbole-seed{seed}.best.pt"
    log: dict[str, Any] = {"epochs": [], "best_epoch": 0, "best_valid": -math.inf, "bad": 0}
    if state_file.exists():  # tensors and numbers only: loads with weights_only=True
        state = torch.load(state_file, weights_only=True)
        model.load_state_dict(state["model"])
        trainer.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        log = json.loads(state["log"])
    trainer.eval_collector.data_collect(train_data)
    deadline = time.monotonic() + 60 * args.max_minutes
    while log["bad"] < args.patience and len(log["epochs"]) < args.epochs:
        if time.monotonic() > deadline:
            print(f"recbole seed {seed}: stopping for now after epoch {len(log['epochs'])}; "
                  "run again to continue", flush=True)
            return
        epoch = len(log["epochs"])
        start = time.perf_counter()
        loss = trainer._train_epoch(train_data, epoch)
        seconds = time.perf_counter() - start
        valid = dict(trainer.evaluate(valid_data, load_best_model=False))
        log["epochs"].append({"loss": float(loss), "seconds": seconds, "valid": valid})
        if valid["ndcg@10"] > log["best_valid"]:
            log.update(best_valid=valid["ndcg@10"], best_epoch=epoch + 1, bad=0)
            torch.save(model.state_dict(), best_file)
        else:
            log["bad"] += 1
        print(f"recbole seed {seed} epoch {epoch + 1}: {seconds:.0f}s, loss {loss:.2f}, valid "
              f"NDCG@10 {valid['ndcg@10']:.4f} (unmasked)", flush=True)
        torch.save({"model": model.state_dict(), "optimizer": trainer.optimizer.state_dict(),
                    "rng": torch.get_rng_state(), "log": json.dumps(log)}, state_file)

    model.load_state_dict(torch.load(best_file, weights_only=True))
    recbole_test = dict(trainer.evaluate(test_data, load_best_model=False))
    ours = _queries(split, data, "test")
    scores, targets, users = _recbole_scores(model, test_data, dataset)
    histories, mismatches = [], 0
    for user, target in zip(users, targets.tolist(), strict=True):
        history, raw_target = ours[user]
        mismatches += dataset.id2token("item_id", target) != raw_target
        histories.append(dataset.token2id("item_id", history).tolist())
    valid_users = {dataset.id2token("user_id", int(u)): dataset.id2token("item_id", int(i))
                   for u, i in zip(valid_data.dataset.inter_feat["user_id"],
                                   valid_data.dataset.inter_feat["item_id"], strict=True)}
    valid_ours = _queries(split, data, "valid")
    mismatches += sum(valid_ours[u][1] != t for u, t in valid_users.items())
    mismatches += len(set(valid_ours) ^ set(valid_users)) + len(set(ours) ^ set(users))
    result = {
        "side": "recbole", "dataset": args.dataset, "seed": seed, "best_epoch": log["best_epoch"],
        "epochs_run": len(log["epochs"]),
        "train_seconds_per_epoch": [e["seconds"] for e in log["epochs"]],
        "recbole_own_test": recbole_test, "test": _both(scores, targets, histories),
        "split_mismatches": int(mismatches), "n_test_users": len(users),
        "settings": {**SHARED, "batch_size": args.batch_size, "patience": args.patience},
        "threads": args.threads, "cpu": _cpu(),
        "versions": _versions(),
    }
    result_file.write_text(json.dumps(result, indent=1))
    state_file.unlink()
    print(f"recbole seed {seed}: test NDCG@10 {result['test']['unmasked']['ndcg@10']:.4f} "
          f"unmasked (RecBole's own evaluator: {recbole_test['ndcg@10']:.4f}), "
          f"{result['test']['masked']['ndcg@10']:.4f} masked; split mismatches {mismatches}")


def _write_atomic(root: Path, data: Any, name: str) -> Path:
    """The data as adarec orders it, for RecBole: one row per interaction with the timestamp
    replaced by its position in the user's sequence (exact in float32), so both libraries
    order every user's items identically."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for user, seq in data.sequences.items():
        lines += [f"{user}\t{data.item_ids[i]}\t{pos}" for pos, i in enumerate(seq)]
    tmp = folder / f"{name}.inter.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, folder / f"{name}.inter")
    return folder


def _queries(split: Any, data: Any, which: str) -> dict[str, tuple[list[str], str]]:
    """adarec's (raw history, raw target) per raw user id."""
    pairs = getattr(split, which)
    return {str(u): ([str(data.item_ids[i]) for i in h], str(data.item_ids[t]))
            for u, (h, t) in zip(split.users, pairs, strict=True)}


def _recbole_scores(model: Any, test_data: Any, dataset: Any) -> tuple[Any, Any, list[str]]:
    import torch

    rows, targets, users = [], [], []
    model.eval()
    with torch.no_grad():
        for interaction, _, _, positive_i in test_data:
            rows.append(model.full_sort_predict(interaction).view(len(positive_i), -1))
            targets.append(positive_i)
            users += [str(dataset.id2token("user_id", int(u))) for u in interaction["user_id"]]
    return torch.cat(rows), torch.cat(targets), users


def _both(scores: Any, targets: Any, histories: list[list[int]]) -> dict[str, dict[str, float]]:
    from adarec.rec.metrics import ranking_metrics, target_ranks

    out = {}
    for protocol in PROTOCOLS:
        exclude = histories if protocol == "masked" else None
        ranks = target_ranks(scores.clone(), targets, exclude, ties="pessimistic")
        out[protocol] = ranking_metrics(ranks, KS)
    return out


# ------------------------------------------------------------------------------ adarec side
def run_adarec(seed: int, args: argparse.Namespace) -> None:
    folder = Path(args.out) / f"adarec-seed{seed}"
    if (folder / "results.json").exists():
        print(f"adarec seed {seed}: done already ({folder})")
        return
    cmd = [sys.executable, str(ROOT / "examples" / "quickstart.py"), "--method", "id",
           "--dataset", args.dataset, "--seed", str(seed), "--out", str(folder),
           "--threads", str(args.threads),
           "--max-len", str(SHARED["max_len"]), "--dim", str(SHARED["dim"]),
           "--dropout", str(SHARED["dropout"]), "--loss", "full_softmax", "--negatives", "1",
           "--lr", str(SHARED["lr"]), "--select", "unmasked", "--patience", str(args.patience),
           "--epochs", str(args.epochs), "--precision", "fp32", *args.adarec_args]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


# ------------------------------------------------------------------------------ report
def report(args: argparse.Namespace) -> str:
    out = Path(args.out)
    rows = []
    recbole = [json.loads(f.read_text()) for f in sorted(out.glob("recbole-seed*.json"))]
    adarec = [json.loads(f.read_text()) for f in sorted(out.glob("adarec-seed*/results.json"))]
    found = {r.get("dataset", "ml-100k") for r in recbole + adarec}
    if found - {args.dataset}:
        raise SystemExit(f"{out} holds runs on {sorted(found)}, not only --dataset "
                         f"{args.dataset}: one folder per data set")
    if recbole:
        rows.append(("RecBole 1.2.1 SASRec", recbole,
                     lambda r, p: r["test"][p], lambda r: r["train_seconds_per_epoch"]))
    if adarec:
        rows.append(("adarec ID-SASRec (quickstart --method id)", adarec,
                     lambda r, p: r["test"] if p == "masked" else r["test_unmasked"],
                     lambda r: r["train_seconds_per_epoch"]))
    lines = ["| model | seeds | " + " | ".join(
        f"{m}@10 {p}" for p in PROTOCOLS for m in ("HR", "NDCG", "MRR")) +
        " | s / epoch | epochs (best) |", "|---" * 10 + "|"]
    for name, runs, metric, secs in rows:
        cells = []
        for p in PROTOCOLS:
            for m in ("hr@10", "ndcg@10", "mrr@10"):
                values = [metric(r, p)[m] for r in runs]
                se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0
                cells.append(f"{statistics.fmean(values):.4f} ± {se:.4f}")
        sec = statistics.median(statistics.median(secs(r)) for r in runs)
        epochs = " ".join(f"{r.get('epochs_run', '?')} ({r['best_epoch']})" for r in runs)
        lines.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + f" | {sec:.1f} | "
                     f"{epochs} |")
    notes = []
    for r in recbole:
        own, ours = r["recbole_own_test"]["ndcg@10"], r["test"]["unmasked"]["ndcg@10"]
        notes.append(f"seed {r['seed']}: split mismatches {r['split_mismatches']} over "
                     f"{r['n_test_users']} users; RecBole's own NDCG@10 {own:.4f} vs adarec's "
                     f"metric on its scores {ours:.4f}")
    cpus = {r.get("cpu", "?") for r in recbole} | {r.get("cpu", "?") for r in adarec}
    notes.append(f"data set: {args.dataset}")
    text = "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + \
        f"\n\nCPU: {'; '.join(sorted(map(str, cpus)))}\n"
    (out / "recbole.md").write_text(text)
    return text


def _cpu() -> str:
    from adarec.machine import describe_cpu

    return describe_cpu()


def _versions() -> dict[str, str]:
    import numpy
    import recbole
    import torch

    return {"torch": torch.__version__, "recbole": recbole.__version__,
            "numpy": numpy.__version__}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("side", choices=("recbole", "adarec", "report"))
    p.add_argument("--dataset", default="ml-100k", help="a shared data set (quickstart's "
                   "--dataset names; files under $ADAREC_DATA, else ../shared/data)")
    p.add_argument("--out", default="runs/recbole")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--epochs", type=int, default=200, help="at most this many epochs")
    p.add_argument("--patience", type=int, default=10,
                   help="epochs without a better validation NDCG@10 before stopping")
    p.add_argument("--batch-size", type=int, default=2048, help="RecBole's training batch")
    p.add_argument("--max-minutes", type=float, default=18.0,
                   help="RecBole: stop (resumable) after the epoch that passes this")
    p.add_argument("--adarec-args", nargs=argparse.REMAINDER, default=[],
                   help="more quickstart options for the adarec side (last on the line)")
    args = p.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.side == "report":
        print(report(args))
        return
    for seed in args.seeds:
        (run_recbole if args.side == "recbole" else run_adarec)(seed, args)


if __name__ == "__main__":
    main()
