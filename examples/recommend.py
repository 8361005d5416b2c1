"""Recommend: a user's top-10 from a checkpoint written by the quickstart (or save_pretrained).

    python examples/recommend.py                          # the demo's model, user 1 of ml-100k
    python examples/recommend.py --user 42 --k 20
    python examples/recommend.py --history 50,172,181     # any list of raw item ids
    python examples/recommend.py --model runs/mine/model --interactions ratings.csv \\
        --user-col userId --item-col movieId --user 7     # your own data (quickstart options)

The model is rebuilt from its folder alone (`TransRec.from_pretrained`: settings, adapters,
item map and texts); the data options only serve to look up the user's history, which is
excluded from the results as a whole.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

log = logging.getLogger("recommend")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from quickstart import parse_args as quickstart_args  # same data options as the training

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="runs/quickstart/model", help="save_pretrained folder")
    p.add_argument("--user", default=None, help="raw user id (default: the first user)")
    p.add_argument("--history", default=None,
                   help="comma-separated raw item ids, oldest first (instead of --user)")
    p.add_argument("--k", type=int, default=10, help="how many items")
    p.add_argument("--out", default=None, help="log folder (default: the model's parent)")
    args, rest = p.parse_known_args(argv)
    args.data_args = quickstart_args(rest)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    import torch

    import adarec
    from adarec.rec import TransRec

    adarec.setup_logging(Path(args.out or Path(args.model).parent), "recommend.log")
    torch.set_num_threads(args.data_args.threads)
    model = TransRec.from_pretrained(args.model)
    ids, texts = model.item_ids or [], model.item_texts or []
    log.info("model %s: %d items, policy %s, adapters %s (loaded in %.1fs)", args.model,
             model.n_items, model.policy, list(adarec.adapter_sets(model)),
             time.perf_counter() - start)
    if args.history:
        user, history = "(given)", [_as_id(t, ids) for t in args.history.split(",")]
    else:
        from quickstart import load_data

        data, _ = load_data(args.data_args)
        user = args.user if args.user is not None else next(iter(data.sequences))
        key = next((u for u in data.sequences if str(u) == str(user)), None)
        if key is None:
            raise SystemExit(f"user {user!r} is not in {data.name}")
        history = [data.item_ids[i] for i in data.sequences[key]]
    title = dict(zip(ids, texts, strict=False))
    log.info("user %s: %d items in the history; the latest:", user, len(history))
    for item in history[-3:]:
        log.info("    %s", title.get(item, item))
    rec = model.recommend([history], k=args.k)
    log.info("top-%d (history excluded):", args.k)
    for rank, (item, score) in enumerate(zip(rec.items[0], rec.scores[0].tolist(), strict=False),
                                         1):
        log.info("%3d. %7.3f  %s", rank, score, title.get(item, item))
    log.info("(%.1fs in all)", time.perf_counter() - start)


def _as_id(token: str, ids: list[object]) -> object:
    """A raw id as the model knows it: the string, or its int when the model's ids are ints."""
    token = token.strip()
    if token not in ids and token.lstrip("-").isdigit() and int(token) in ids:
        return int(token)
    return token


if __name__ == "__main__":
    main()
