"""A table of frozen-backbone hidden states for every item, built once in bounded memory.

A side network reads the hidden states of a frozen encoder, so those states are a fixed function
of the item: computing them once per item means training and evaluation never run the backbone
again. The table holds, per item row (row 0 = padding item), ``S`` stored states (the tapped
blocks plus the final hidden state) of width ``H``:

* pooled states: ``[n_rows, S, H]``, i.e. ``n_rows * S * H * b`` bytes;
* token states: ``[n_rows, T, S, H]``, i.e. ``n_rows * T * S * H * b`` bytes,

with ``b`` = 4 (float32) or 2 (bfloat16) (`state_cache_bytes`). The build runs the backbone on
``chunk_size`` items at a time and writes each chunk into the preallocated table, so its peak
memory is the table plus one chunk's forward pass, never the whole catalogue's activations.
With ``directory`` the table is a memory-mapped file there (``torch.from_file``): resident memory
then stays near one chunk, and the operating system pages the table in and out. The file is new
for every build and deleted with the cache: a file is never read back by a later process, so no
stale states can be served from disk. The shards of a sharded build (`adarec.rec.sharded`),
which do outlive the process, carry a fingerprint of the model state and are refused for any
other.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from adarec.errors import ConfigError


def state_cache_bytes(n_rows: int, n_slots: int, hidden: int, dtype: torch.dtype = torch.float32,
                      tokens: int | None = None) -> int:
    """The table's size in bytes: ``n_rows * [tokens *] n_slots * hidden * itemsize``."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return n_rows * (tokens or 1) * n_slots * hidden * itemsize


class HiddenStateCache:
    """The states of every item for one backbone state (``key``); see the module docstring."""

    def __init__(self, table: Tensor, key: Any, file: Path | None = None) -> None:
        self.table, self.key, self.file = table, key, file
        if file is not None:  # delete the file when the cache goes
            weakref.finalize(self, _remove, str(file))

    @property
    def tokens(self) -> bool:
        return self.table.dim() == 4

    @property
    def nbytes(self) -> int:
        return self.table.numel() * self.table.element_size()

    def gather(self, ids: Tensor, width: int | None = None) -> Tensor:
        """Rows ``ids`` as ``[B, S, H]`` (pooled) or ``[B, width, S, H]`` (tokens), on ``ids``'s
        device."""
        rows = ids.to(self.table.device)
        out = self.table[rows] if not self.tokens else self.table[rows, :width]
        return out.to(ids.device, non_blocking=True)

    @classmethod
    @torch.no_grad()
    def build(
        cls,
        n_rows: int,
        compute: Callable[[Tensor], Tensor],
        key: Any,
        dtype: torch.dtype = torch.float32,
        chunk_size: int = 256,
        order: Tensor | None = None,
        tokens: int | None = None,
        directory: str | os.PathLike[str] | None = None,
        progress: bool | None = None,
        desc: str = "caching hidden states",
    ) -> HiddenStateCache:
        """Run ``compute(ids) -> [B, (w,) S, H]`` over all rows in chunks (in ``order``, e.g. by
        length, so chunks pad little) and store the results; ``tokens`` is the full token
        length of the token-state table (a chunk of width ``w`` fills the first ``w``).
        ``progress=None`` shows a tqdm bar on terminals."""
        from tqdm.auto import tqdm

        table: Tensor | None = None
        file: Path | None = None
        chunks = build_chunks(n_rows, chunk_size, order)
        bar = tqdm(chunks, desc=desc, unit="chunk", leave=False,
                   disable=None if progress is None else not progress)
        try:
            for ids in bar:
                states = compute(ids)
                if table is None:
                    shape = (n_rows, *((tokens,) if tokens else ()), *states.shape[-2:])
                    table, file = allocate_table(shape, dtype, directory)
                if tokens:
                    table[ids, : states.size(1)] = states.to(table.device, dtype)
                else:
                    table[ids] = states.to(table.device, dtype)
        except BaseException:
            if file is not None:
                _remove(str(file))
            raise
        finally:
            bar.close()
        if table is None:
            raise ConfigError("cannot build a hidden-state cache of 0 rows")
        return cls(table, key, file)


def build_chunks(n_rows: int, chunk_size: int, order: Tensor | None = None) -> list[Tensor]:
    """The row ids of each chunk a build computes: ``order`` (default ``0..n_rows-1``) cut
    into runs of ``chunk_size``. A sharded build (`adarec.rec.sharded`) hands each rank a
    contiguous run of these same chunks, so every row is computed in the same batch as in one
    process and the table is bitwise the same."""
    order = torch.arange(n_rows) if order is None else order.cpu()
    return list(order.split(chunk_size))


def allocate_table(shape: tuple[int, ...], dtype: torch.dtype,
                   directory: str | os.PathLike[str] | None) -> tuple[Tensor, Path | None]:
    """A zero table of ``shape``: in memory, or memory-mapped in a new file in ``directory``
    (deleted with the `HiddenStateCache` that holds it)."""
    if directory is None:
        return torch.zeros(shape, dtype=dtype), None
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="adarec-states-", suffix=".bin", dir=folder)
    numel = math.prod(shape)
    try:
        os.ftruncate(fd, numel * torch.empty((), dtype=dtype).element_size())
    finally:
        os.close(fd)
    table = torch.from_file(name, shared=True, size=numel, dtype=dtype).view(shape)
    return table, Path(name)


def _remove(name: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(name)


__all__ = ["HiddenStateCache", "allocate_table", "build_chunks", "state_cache_bytes"]
