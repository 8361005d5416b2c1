"""Many adapter sets in one batch: serving requests that each name one of 8 sets.

One TransRec (random small BERT item encoder, SASRec user encoder) holds ``--sets`` adapter sets
(perturbed, so the sets differ): ``--variant lora`` gives each item-encoder LoRA and user-encoder
Houlsby adapters; ``--variant side`` gives each its own side network (over the item encoder's one
hidden-state cache of the frozen backbone), its own DTL and user-encoder Houlsby adapters.
``--requests`` histories, each assigned a set at random, are served three ways:

- switch per request: ``set_active_adapters(model, s); model.recommend([h])`` per request (the
  item table's state key changes at every switch of set, so the table is encoded again);
- grouped: per set, switch once and ``recommend`` that set's requests (one table per set per
  call: the model caches one table);
- grouped, tables cached per set: as grouped, each group through ``set_names`` (the per-set
  table caches), so what remains of mixed's gain is its single user-encoder pass;
- mixed: ``model.recommend(histories, set_names=...)`` once (item tables cached per set; warm
  after the first call, "mixed (cold)" includes building them).

Every way must return the same top-k (checked); the table prints seconds per call of all
requests and the speed-up of mixed over the others.

    python benchmarks/bench_mixed_sets.py                 # ~1-3 min on 2 shared cores
    python benchmarks/bench_mixed_sets.py --variant side  # sets owning side network + DTL
    python benchmarks/bench_mixed_sets.py --items 5000 --requests 512
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import transformers as tf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_line

import adarec
from adarec.rec import TextItemEncoder, TransRec
from adarec.rec.serving import Recommendations


def build(args: argparse.Namespace) -> TransRec:
    torch.manual_seed(0)
    cfg = tf.BertConfig(vocab_size=1000, hidden_size=args.hidden, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=4 * args.hidden,
                        max_position_embeddings=64)
    g = torch.Generator().manual_seed(0)
    rows = args.items + 1
    lengths = torch.randint(4, args.text_len + 1, (rows,), generator=g)
    mask = (torch.arange(args.text_len) < lengths[:, None]).long()
    ids = torch.randint(5, 1000, (rows, args.text_len), generator=g) * mask
    items = TextItemEncoder(tf.BertModel(cfg), ids, mask, chunk_size=256)
    model = TransRec(items, user_dim=args.dim, max_len=args.max_len, dropout=0.0)
    item = ({"method": "lora", "lora_r": 4} if args.variant == "lora"
            else {"method": "side", "bottleneck": 16})
    for s in range(args.sets):
        model.inject_adapters(item=item, user={"method": "houlsby", "bottleneck": 16},
                              name=f"s{s}", policy=None,
                              dtl=True if args.variant == "side" else None)
    with torch.no_grad():
        for p in adarec.adapter_parameters(model).values():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def timed(fn: Callable[[], Recommendations], repeats: int) -> tuple[float, Recommendations]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    assert out is not None
    return best, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sets", type=int, default=8)
    p.add_argument("--variant", choices=("lora", "side"), default="lora",
                   help="what each set owns (see above)")
    p.add_argument("--items", type=int, default=1000)
    p.add_argument("--requests", type=int, default=128)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--text-len", type=int, default=16)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--max-len", type=int, default=20)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = build(args)
    g = torch.Generator().manual_seed(1)
    histories = [torch.randint(1, args.items + 1, (int(n),), generator=g).tolist()
                 for n in torch.randint(3, args.max_len + 1, (args.requests,), generator=g)]
    names: list[str | None] = [f"s{int(i)}" for i in
                               torch.randint(0, args.sets, (args.requests,), generator=g)]

    def per_request() -> Recommendations:
        scores, indices = [], []
        for h, n in zip(histories, names, strict=True):
            adarec.set_active_adapters(model, n)
            r = model.recommend([h], k=args.k)
            scores.append(r.scores)
            indices.append(r.indices)
        return Recommendations([], torch.cat(scores), torch.cat(indices))

    def grouped() -> Recommendations:
        scores = torch.empty(args.requests, args.k)
        indices = torch.empty(args.requests, args.k, dtype=torch.long)
        for n in dict.fromkeys(names):
            rows = [i for i, m in enumerate(names) if m == n]
            adarec.set_active_adapters(model, n)
            r = model.recommend([histories[i] for i in rows], k=args.k)
            scores[rows], indices[rows] = r.scores, r.indices
        return Recommendations([], scores, indices)

    def grouped_cached() -> Recommendations:
        """Grouped, but each group through the per-set table caches: what is left of mixed's
        gain is the one user-encoder pass."""
        scores = torch.empty(args.requests, args.k)
        indices = torch.empty(args.requests, args.k, dtype=torch.long)
        for n in dict.fromkeys(names):
            rows = [i for i, m in enumerate(names) if m == n]
            r = model.recommend([histories[i] for i in rows], k=args.k, set_names=[n] * len(rows))
            scores[rows], indices[rows] = r.scores, r.indices
        return Recommendations([], scores, indices)

    def mixed() -> Recommendations:
        return model.recommend(histories, k=args.k, set_names=names)

    model.invalidate_cache()
    cold, _ = timed(mixed, 1)
    results = {"switch per request": timed(per_request, 1), "grouped by set":
               timed(grouped, args.repeats), "grouped, tables cached per set":
               timed(grouped_cached, args.repeats), "mixed (cold)": (cold, None),
               "mixed": timed(mixed, args.repeats)}
    ref = results["mixed"][1]
    assert ref is not None
    for label, (_, r) in results.items():
        if r is not None:
            assert torch.equal(r.indices, ref.indices), f"{label}: different top-k"
            torch.testing.assert_close(r.scores, ref.scores, rtol=1e-5, atol=1e-5)
    print(f"# {cpu_line()}, torch threads {args.threads}; {args.sets} sets ({args.variant}), "
          f"{args.items} items, "
          f"{args.requests} requests, top-{args.k}; identical top-k in every mode")
    print("| mode | s per call | mixed speed-up |\n|---|---|---|")
    for label, (t, _) in results.items():
        print(f"| {label} | {t:.3f} | {t / results['mixed'][0]:.1f}x |")


if __name__ == "__main__":
    main()
