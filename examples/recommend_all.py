"""Recommend for every user: the nightly batch job, on one machine or many with torchrun.

    python examples/recommend_all.py --model runs/quickstart/model --out runs/nightly
    torchrun --nproc-per-node 4 examples/recommend_all.py --model runs/quickstart/model \\
        --out runs/nightly --tables runs/nightly/tables       # 4 ranks, item table sharded too
    python examples/recommend_all.py --model runs/mine/model --interactions ratings.csv \\
        --user-col userId --item-col movieId --format parquet  # your own data (quickstart options)

Each rank takes its share of the users (and, with ``--tables``, of the item table's build),
streams its parts to ``--out`` and rank 0 merges them into ``recommendations.csv`` (or
``.parquet``: ``pip install pyarrow``), the same file a single process writes. Started again
after a crash, the job keeps the finished parts and redoes the rest.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

log = logging.getLogger("recommend_all")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from quickstart import parse_args as quickstart_args  # same data options as the training

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="runs/quickstart/model", help="save_pretrained folder")
    p.add_argument("--out", default="runs/nightly", help="results folder (parts, merged file)")
    p.add_argument("--k", type=int, default=10, help="items per user")
    p.add_argument("--format", default="csv", choices=("csv", "parquet"), help="file format")
    p.add_argument("--shard-size", type=int, default=4096, help="users per part file")
    p.add_argument("--batch-size", type=int, default=256, help="users per recommend call")
    p.add_argument("--tables", default=None,
                   help="build the item table over the ranks into this folder first (kept: a "
                        "later run of the same model loads it)")
    p.add_argument("--overwrite", action="store_true",
                   help="clear --out when it holds another job's results")
    args, rest = p.parse_known_args(argv)
    args.data_args = quickstart_args(rest)
    return args


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    start = time.perf_counter()
    import torch
    from quickstart import load_data

    import adarec
    from adarec import distributed as D
    from adarec.rec import TransRec, build_item_table, recommend_all

    device = D.setup()
    if D.is_main_process():
        adarec.setup_logging(Path(args.out), "recommend_all.log")
    torch.set_num_threads(args.data_args.threads)
    model = TransRec.from_pretrained(args.model, map_location=device)
    data, _ = load_data(args.data_args)
    log.info("model %s: %d items; %s: %d users; %d rank(s)", args.model, model.n_items,
             data.name, data.n_users, D.get_world_size())
    if args.tables:
        build_item_table(model, args.tables)
    path = recommend_all(model, data, args.out, k=args.k, shard_size=args.shard_size,
                         format=args.format, batch_size=args.batch_size,
                         overwrite=args.overwrite)
    log.info("top-%d of %d users in %s (%.1fs)", args.k, data.n_users, path,
             time.perf_counter() - start)
    D.cleanup()
    return path


if __name__ == "__main__":
    main()
