"""Self-describing TransRec checkpoints as free functions: `save_pretrained(model, folder)` and
`from_pretrained(folder)` are `TransRec.save_pretrained` / `TransRec.from_pretrained`; the
format itself is `adarec.rec.folder_format`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adarec.rec.folder_format import (
    CONFIG,
    FORMAT,
    FORMAT_VERSION,
    WEIGHTS,
    digest,
    read_config,
    save,
)
from adarec.rec.transrec import TransRec


def save_pretrained(model: TransRec, folder: str | Path, include_base: bool = False,
                    tokenizer: Any = None) -> Path:
    """Write ``model`` as a folder `from_pretrained` rebuilds (see `adarec.rec.folder_format`)."""
    return save(model, folder, include_base=include_base, tokenizer=tokenizer)


def from_pretrained(folder: str | Path, base: Any = None, **kwargs: Any) -> TransRec:
    """`TransRec.from_pretrained`."""
    return TransRec.from_pretrained(folder, base=base, **kwargs)


__all__ = ["CONFIG", "FORMAT", "FORMAT_VERSION", "WEIGHTS", "digest", "from_pretrained",
           "read_config", "save_pretrained"]
