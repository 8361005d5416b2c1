"""Choose the main job's defaults across data sets, not on one: every configuration below is
trained by the quickstart (the same command a user runs) on each shared data set, and ranked by
its validation NDCG@10 (masked) within each data set; the mean rank across data sets decides.
Test numbers are reported beside, never used to choose.

    python examples/paper/defaults.py --out runs/defaults --jobs 2 --threads 1
    python examples/paper/defaults.py --out runs/defaults --report        # tables + plot only
    python examples/paper/defaults.py --datasets lastfm --configs id-dot-full side-dot-sampled
    python examples/paper/defaults.py --setting cold --out runs/defaults   # items never trained on

Every (data set, configuration, seed) is one quickstart run in its own folder
(``--out/DATASET/CONFIG/seedN``), skipped when its results.json exists, so a killed sweep
continues where it stopped; a run that fails leaves failed.txt (its error) and is reported as
failed, not retried unless ``--retry``. Arguments after ``--`` go to every quickstart run.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

QUICKSTART = Path(__file__).resolve().parents[1] / "quickstart.py"
DATASETS = ("ml-100k", "lastfm", "ml-latest-small", "ml-1m-subset", "amazon-games")
FULL = ("--loss", "full_softmax", "--negatives", "1")
SAMPLED = ("--loss", "sampled_softmax", "--negatives", "0")
COSINE = ("--similarity", "cosine", "--temperature", "0.07")
ID, NO_ID = ("--id-fusion", "add"), ("--id-fusion", "none")
ID_DROP = (*ID, "--id-dropout", "0.5")  # DropoutNet's rate: half the items score by text alone
# slug -> (label, quickstart options); ID rows first: the best of them is each table's baseline.
# Every option a configuration differs in is spelled out, so that the table stays the same
# when the quickstart's defaults move (they are chosen from this table).
CONFIGS: dict[str, tuple[str, tuple[str, ...]]] = {
    "id-dot-sampled": ("ID-SASRec, dot, sampled softmax", ("--method", "id", *SAMPLED)),
    "id-dot-full": ("ID-SASRec, dot, full softmax", ("--method", "id", *FULL)),
    "id-cos-full": ("ID-SASRec, cosine / 0.07, full softmax", ("--method", "id", *FULL, *COSINE)),
    "side-dot-sampled": ("side network, dot, sampled softmax",
                         ("--method", "side", *NO_ID, *SAMPLED)),
    "side-cos-full": ("side network, cosine / 0.07, full softmax",
                      ("--method", "side", *NO_ID, *FULL, *COSINE)),
    "side-id-dot-full": ("side network + ID, dot, full softmax",
                         ("--method", "side", *ID, *FULL)),
    "side-id-cos-full": ("side network + ID, cosine / 0.07, full softmax",
                         ("--method", "side", *ID, *FULL, *COSINE)),
    "side-iddrop-dot-full": ("side network + ID (dropout 0.5), dot, full softmax",
                             ("--method", "side", *ID_DROP, *FULL)),
    "frozen-id-dot-full": ("frozen + ID, dot, full softmax", ("--method", "frozen", *ID, *FULL)),
    "frozen-iddrop-dot-full": ("frozen + ID (dropout 0.5), dot, full softmax",
                               ("--method", "frozen", *ID_DROP, *FULL)),
    "frozen-dot-sampled": ("frozen, dot, sampled softmax",
                           ("--method", "frozen", *NO_ID, *SAMPLED)),
    "frozen-dot-full": ("frozen, dot, full softmax", ("--method", "frozen", *NO_ID, *FULL)),
    "frozen-cos-full": ("frozen, cosine / 0.07, full softmax",
                        ("--method", "frozen", *NO_ID, *FULL, *COSINE)),
    "frozen-moe-cos-full": ("frozen + MoE, cosine / 0.07, full softmax",
                            ("--method", "frozen", "--dtl", "moe", *NO_ID, *FULL, *COSINE)),
    "frozen-moe-id-cos-full": ("frozen + MoE + ID, cosine / 0.07, full softmax",
                               ("--method", "frozen", "--dtl", "moe", *ID, *FULL, *COSINE)),
}

SETTINGS: dict[str, tuple[list[str], tuple[str, ...]]] = {
    "warm": (["id-dot-sampled", "id-dot-full", "id-cos-full", "side-dot-sampled", "side-cos-full",
              "side-id-dot-full", "side-id-cos-full", "frozen-id-dot-full",
              "frozen-moe-id-cos-full"], ()),
    # 20 % of the items never seen in training; validation and test on the queries whose target
    # is one of them. ID rows would score 0 by construction; ID fusion is off for those items.
    "cold": (["side-id-dot-full", "side-iddrop-dot-full", "side-dot-sampled", "frozen-dot-full",
              "frozen-cos-full", "frozen-id-dot-full", "frozen-iddrop-dot-full"],
             ("--cold-items", "0.2")),
}
"""setting -> (its configurations, the quickstart options every run of it gets)."""


def run_folder(out: Path, dataset: str, config: str, seed: int) -> Path:
    return out / dataset / config / f"seed{seed}"


def run_one(out: Path, dataset: str, config: str, seed: int, args: argparse.Namespace,
            extra: list[str]) -> str:
    """One quickstart run in a subprocess (its own threads, memory and log)."""
    folder = run_folder(out, dataset, config, seed)
    if (folder / "results.json").is_file():
        return f"{dataset}/{config}/seed{seed}: done before"
    if (folder / "failed.txt").is_file() and not args.retry:
        return f"{dataset}/{config}/seed{seed}: failed before (--retry to run again)"
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(QUICKSTART), "--dataset", dataset, "--seed", str(seed),
           "--threads", str(args.threads), "--out", str(folder), *CONFIGS[config][1], *extra]
    if args.data_root:
        cmd += ["--data-root", args.data_root]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TQDM_DISABLE="1")
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        (folder / "failed.txt").write_text(" ".join(cmd) + "\n\n" + done.stderr[-4000:])
        return f"{dataset}/{config}/seed{seed}: FAILED (see {folder / 'failed.txt'})"
    (folder / "failed.txt").unlink(missing_ok=True)
    return f"{dataset}/{config}/seed{seed}: {time.perf_counter() - t0:.0f} s"


def load(out: Path, dataset: str, config: str,
         seeds: list[int] | None = None) -> tuple[list[dict[str, Any]], int]:
    """The finished seeds' results and the count of failed ones; ``seeds``: only those (so that
    a table of seed 0 stays the same when more seeds of some configurations have run)."""
    results, failed = [], 0
    folders = (sorted((out / dataset / config).glob("seed*")) if seeds is None
               else [run_folder(out, dataset, config, s) for s in seeds])
    for folder in folders:
        if (folder / "results.json").is_file():
            results.append(json.loads((folder / "results.json").read_text()))
        elif (folder / "failed.txt").is_file():
            failed += 1
    return results, failed


def mean_se(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return statistics.fmean(values), se


def _cell(values: list[float]) -> str:
    m, se = mean_se(values)
    if math.isnan(m):
        return "–"
    return f"{m:.4f}" if len(values) == 1 else f"{m:.4f} ± {se:.4f}"


def summarise(out: Path, datasets: list[str], configs: list[str],
              seeds: list[int] | None = None) -> dict[str, Any]:
    """Per data set and configuration: seeds' validation / test numbers, and the ranks."""
    table: dict[str, dict[str, Any]] = {}
    for d in datasets:
        rows = {}
        for c in configs:
            results, failed = load(out, d, c, seeds)
            rows[c] = dict(
                results=results, failed=failed,
                valid=[r["valid"]["ndcg@10"] for r in results],
                test=[r["test"]["ndcg@10"] for r in results],
                test_hr=[r["test"]["hr@10"] for r in results],
                test_unmasked=[r["test_unmasked"]["ndcg@10"] for r in results],
                epochs=[f"{r['best_epoch']}/{r['epochs_run']}" for r in results],
                seconds=[statistics.median(r["train_seconds_per_epoch"]) for r in results
                         if r["train_seconds_per_epoch"]])
        done = [c for c in configs if rows[c]["valid"]]
        order = sorted(done, key=lambda c: -statistics.fmean(rows[c]["valid"]))
        for rank, c in enumerate(order, 1):
            rows[c]["rank"] = rank
        ids = [c for c in order if c.startswith("id-")]
        table[d] = dict(rows=rows, id_best=ids[0] if ids else None, order=order)
    complete = [d for d in datasets if all("rank" in table[d]["rows"][c] for c in configs)]
    mean_rank = {c: statistics.fmean(table[d]["rows"][c]["rank"] for d in complete)
                 for c in configs} if complete else {}
    return dict(table=table, complete=complete, mean_rank=mean_rank)


def report(out: Path, datasets: list[str], configs: list[str], cold: bool = False,
           seeds: list[int] | None = None, summary: dict[str, Any] | None = None) -> str:
    """Markdown: a table per data set, then the mean validation rank. ``cold``: the test is
    on held-out items, compared with chance (10 / items) instead of the ID model. ``summary``:
    `summarise`'s answer when the caller has it already (read once for report and plot)."""
    s = summary or summarise(out, datasets, configs, seeds)
    lines = []
    for d in datasets:
        t = s["table"][d]
        pop = next((r["popularity"]["ndcg@10"] for c in configs for r in t["rows"][c]["results"]),
                   None)
        meta = next((r for c in configs for r in t["rows"][c]["results"]), None)
        lines += [f"### {d}", ""]
        if meta is not None and "n_users" in meta:
            lines += [f"{meta['n_users']:,} users, {meta['n_items']:,} items, "
                      f"{meta['n_interactions']:,} interactions.", ""]
        ref = t["rows"][t["id_best"]]["test"] if t["id_best"] else []
        versus = "HR@10 / chance" if cold else "vs ID best"
        lines += [f"| configuration | valid NDCG@10 | rank | HR@10 | NDCG@10 | {versus} "
                  "| NDCG@10 unmasked | best / run epochs | s / epoch |",
                  "|---|---|---|---|---|---|---|---|---|"]
        if pop is not None:
            lines.append(f"| popularity | – | – | – | {pop:.4f} | – | – | – | – |")
        for c in configs:
            r = t["rows"][c]
            if not r["valid"]:
                lines.append(f"| {CONFIGS[c][0]} | {'failed' if r['failed'] else 'not run'} "
                             "| | | | | | | |")
                continue
            gain = (f"{statistics.fmean(r['test']) / statistics.fmean(ref) - 1:+.1%}"
                    if ref and c != t["id_best"] else "(baseline)" if ref else "–")
            if cold:
                gain = f"{statistics.fmean(r['test_hr']) * meta['n_items'] / 10:.1f}x"
            label = CONFIGS[c][0] + (" **(ID best)**" if c == t["id_best"] else "")
            secs = f"{statistics.fmean(r['seconds']):.1f}" if r["seconds"] else "–"
            lines.append(
                f"| {label} | {_cell(r['valid'])} | {r['rank']} | {_cell(r['test_hr'])} | "
                f"{_cell(r['test'])} | {gain} | {_cell(r['test_unmasked'])} | "
                f"{' '.join(r['epochs'])} | {secs} |")
        lines.append("")
    if s["mean_rank"]:
        lines += [f"### Mean validation rank over {', '.join(s['complete'])}", "",
                  "| configuration | " + " | ".join(s["complete"]) + " | mean rank |",
                  "|---|" + "---|" * (len(s["complete"]) + 1)]
        for c in sorted(configs, key=lambda c: s["mean_rank"][c]):
            ranks = " | ".join(str(s["table"][d]["rows"][c]["rank"]) for d in s["complete"])
            lines.append(f"| {CONFIGS[c][0]} | {ranks} | {s['mean_rank'][c]:.1f} |")
        lines.append("")
    return "\n".join(lines)


def plot(out: Path, datasets: list[str], configs: list[str], file: Path,
         seeds: list[int] | None = None, summary: dict[str, Any] | None = None) -> None:
    """Test NDCG@10 (masked) per data set and configuration, relative to the ID best."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = summary or summarise(out, datasets, configs, seeds)
    shown = [d for d in datasets if s["table"][d]["id_best"]]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(configs)
    for i, c in enumerate(configs):
        xs, ys = [], []
        for j, d in enumerate(shown):
            t = s["table"][d]
            if t["rows"][c]["test"]:
                xs.append(j + (i - len(configs) / 2 + 0.5) * width)
                ys.append(statistics.fmean(t["rows"][c]["test"])
                          / statistics.fmean(t["rows"][t["id_best"]]["test"]))
        ax.bar(xs, ys, width, label=CONFIGS[c][0])
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xticks(range(len(shown)), shown)
    ax.set_ylabel("test NDCG@10 (masked) / ID-SASRec best")
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.1))
    fig.tight_layout()
    file.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(file, dpi=120)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/defaults")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    p.add_argument("--setting", default="warm", choices=list(SETTINGS),
                   help="warm: leave-one-out; cold: 20 %% of the items held out of training")
    p.add_argument("--configs", nargs="+", default=None, choices=list(CONFIGS),
                   help="default: the setting's")
    p.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="seeds to run, and the only ones the report reads")
    p.add_argument("--jobs", type=int, default=1, help="quickstart runs side by side")
    p.add_argument("--threads", type=int, default=2, help="torch threads per run")
    p.add_argument("--data-root", default=None, help="folder of the shared data sets")
    p.add_argument("--retry", action="store_true", help="run failed runs again")
    p.add_argument("--report", action="store_true", help="tables + plot from finished runs only")
    p.add_argument("--plot", default=None, help="PNG of the test scores (with --report)")
    args = p.parse_args(argv)
    configs, options = SETTINGS[args.setting]
    configs = args.configs or configs
    extra = [*options, *extra]
    out = Path(args.out) / ("" if args.setting == "warm" else args.setting)
    if not args.report:
        jobs = [(d, c, s) for d in args.datasets for s in args.seeds for c in configs]
        with ThreadPoolExecutor(args.jobs) as pool:
            for line in pool.map(lambda j: run_one(out, *j, args, extra), jobs):
                print(line, flush=True)
    summary = summarise(out, args.datasets, configs, args.seeds)
    text = report(out, args.datasets, configs, cold=args.setting == "cold", summary=summary)
    out.mkdir(parents=True, exist_ok=True)
    (out / "defaults.md").write_text(text)
    print(text)
    if args.plot:
        plot(out, args.datasets, configs, Path(args.plot), summary=summary)


if __name__ == "__main__":
    main()
