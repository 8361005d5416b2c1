"""A table built by several processes: one safetensors file per rank, and a JSON manifest.

A table of every item (hidden states, item embeddings) is computed chunk by chunk; under
``torchrun`` each rank computes its contiguous run of those chunks
(`adarec.distributed.shard_range`) and writes it as ``KIND-RRRRR-of-WWWWW.safetensors``: the
rows' ``ids`` and their ``values``. The file is written memory-mapped (its header first, then
the values filled in place, so a rank's memory stays near one chunk), hashed, and renamed into
place (`adarec.folders.atomic_file`): a file that is there is whole. Rank 0 then writes
``KIND.json``, the manifest: the fingerprint of the model state the table was computed from,
the row count and shape, and each shard's chunk range and sha256.

Reading (`load_table`) refuses a shard set whose manifest names another fingerprint (the
model changed since: no table outlives the state it was computed from), one with a shard
missing or a chunk range uncovered, and a shard that was truncated or edited (its size or its
sha256 no longer match); checking costs one read of the files (about 1 GB/s). A rank whose
shard file is already there, for the same state and chunks, keeps it (a build resumes after a
crash).

The fingerprint (`state_fingerprint`) is the persistent twin of `adarec.state_key.StateKey`:
it hashes the same modules, plain attributes and tensors, by value (every tensor's bytes), so it
is equal in another process for a model in the same state.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor, nn
from tqdm.auto import tqdm

from adarec import distributed as D
from adarec.checkpoint.digests import weights_digest
from adarec.errors import CheckpointError, ConfigError
from adarec.folders import atomic_file, remove_temporaries
from adarec.rec.state_cache import allocate_table
from adarec.state_key import plain_attributes, walk

FORMAT = "adarec-shards/1"
_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
           torch.float64: "F64", torch.int64: "I64"}
_BY_NAME = {v: k for k, v in _DTYPES.items()}
_SHA_PLACEHOLDER = "0" * 64
_BLOCK = 1 << 24  # bytes hashed at a time
_COPY_ROWS = 4096  # rows copied at a time when merging
_PROCESS_COUNTERS = ("injection_order",)  # a process-wide count (`adarec.inject`)


def state_fingerprint(*roots: nn.Module, skip: Iterable[nn.Module] = (), modes: bool = True,
                      extra: Any = ()) -> str:
    """sha256 of what `StateKey.of` compares, by value: every module's path, type and plain
    attributes (active adapter sets, pooling, ...) and every parameter's and buffer's bytes
    (`adarec.checkpoint.digests`), plus ``repr(extra)``. Equal across processes and machines
    for the same state; a changed weight, adapter set or item feature changes it. Counters of
    the process (``injection_order``) count by their order within the tree, not their value."""
    modules = list(walk(*roots, skip=skip))
    ranks = {v: i for i, v in enumerate(sorted({
        v for _, m in modules if m is not None for k, v in plain_attributes(m, modes)
        if k in _PROCESS_COUNTERS}))}
    h = hashlib.sha256(f"{FORMAT}|{extra!r}|".encode())
    for name, module in modules:
        if module is None:
            h.update(f"{name}:skipped|".encode())
            continue
        kind = type(module)
        attributes = [(k, ranks[v] if k in _PROCESS_COUNTERS else v)
                      for k, v in plain_attributes(module, modes)]
        h.update(f"{name}:{kind.__module__}.{kind.__qualname__}:{attributes!r}|".encode())
        tensors = {f"{k}.{n}": t for k, group in (("p", module._parameters),
                                                  ("b", module._buffers))
                   for n, t in group.items() if t is not None}
        for n, digest in weights_digest(tensors, workers=1).items():
            h.update(f"{n}:{list(tensors[n].shape)}:{digest}|".encode())
    return h.hexdigest()


def shard_name(kind: str, rank: int, world_size: int) -> str:
    return f"{kind}-{rank:05d}-of-{world_size:05d}.safetensors"


def manifest_path(folder: str | os.PathLike[str], kind: str) -> Path:
    return Path(folder) / f"{kind}.json"


@dataclass(frozen=True)
class Build:
    """One table to build: ``compute(ids) -> [b, (w,) *row]`` over ``chunks`` (the row ids of
    each chunk, in the one-process order), ``tokens`` the full width of a token table (a chunk
    of width ``w`` fills the first ``w``), ``dtype`` the stored dtype (``None``: as computed)."""

    kind: str
    fingerprint: str
    n_rows: int
    chunks: Sequence[Tensor]
    compute: Callable[[Tensor], Tensor]
    dtype: torch.dtype | None = None
    tokens: int | None = None


def build_shards(build: Build, folder: str | os.PathLike[str],
                 progress: bool | None = None) -> dict[str, Any]:
    """Compute this rank's shard of ``build`` into ``folder`` (kept when already there and
    whole), wait for every rank, and return the manifest rank 0 wrote. Every rank must call it
    (it runs barriers); in one process it writes one shard."""
    check_build(build.n_rows, build.chunks)
    root = Path(folder)
    rank, world = D.get_rank(), D.get_world_size()
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        remove_temporaries(root)  # no rank writes before the barrier below
    D.barrier()
    own = D.shard_range(len(build.chunks), rank, world)
    path = root / shard_name(build.kind, rank, world)
    expected = _shard_facts(build, own)
    if not _reusable(path, expected):
        chunks = [build.chunks[i].cpu() for i in own]
        bar = tqdm(chunks, desc=f"{build.kind} shard {rank}/{world}", unit="chunk",
                   leave=False, position=rank, disable=None if progress is None else not progress)
        try:
            _write_shard(path, build, chunks, iter(bar), expected)
        finally:
            bar.close()
    D.barrier()
    if rank == 0:
        _write_manifest(root, build, world)
    D.barrier()
    return read_manifest(root, build.kind, build.fingerprint)


def _shard_facts(build: Build, own: range) -> dict[str, str]:
    return {"format": FORMAT, "kind": build.kind, "fingerprint": build.fingerprint,
            "n_rows": str(build.n_rows), "n_chunks": str(len(build.chunks)),
            "chunks": f"{own.start},{own.stop}", "tokens": str(build.tokens or 0)}


def _reusable(path: Path, expected: dict[str, str]) -> bool:
    """A shard already there for the same state and chunks, whole (its sha256 holds)."""
    if not path.is_file():
        return False
    try:
        meta = _check_shard(path)
    except CheckpointError:
        return False
    return all(meta.get(k) == v for k, v in expected.items())


def _header(entries: dict[str, tuple[torch.dtype, list[int]]],
            metadata: dict[str, str]) -> tuple[bytes, dict[str, int]]:
    """A safetensors header for tensors laid out in order, and each tensor's byte offset from
    the start of the file."""
    spec: dict[str, Any] = {"__metadata__": metadata}
    offsets, start = {}, 0
    for name, (dtype, shape) in entries.items():
        size = torch.empty((), dtype=dtype).element_size() * int(torch.Size(shape).numel())
        spec[name] = {"dtype": _DTYPES[dtype], "shape": shape,
                      "data_offsets": [start, start + size]}
        offsets[name], start = start, start + size
    text = json.dumps(spec, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    head = len(text).to_bytes(8, "little") + text
    return head, {n: len(head) + o for n, o in offsets.items()} | {"": len(head) + start}


def _write_shard(path: Path, build: Build, chunks: list[Tensor], bar: Any,
                 facts: dict[str, str]) -> None:
    ids = torch.cat(chunks) if chunks else torch.zeros(0, dtype=torch.long)
    first = build.compute(next(bar)) if chunks else None
    dtype = build.dtype or (first.dtype if first is not None else torch.float32)
    row: list[int] = []
    if first is not None:
        row = [*((build.tokens,) if build.tokens else ()), *first.shape[2 if build.tokens else 1:]]
    shape = [ids.numel(), *row] if first is not None else [0]
    meta = {**facts, "row_shape": ",".join(map(str, row)), "dtype": _DTYPES[dtype],
            "sha256": _SHA_PLACEHOLDER}
    head, at = _header({"ids": (torch.int64, [ids.numel()]), "values": (dtype, shape)}, meta)
    with atomic_file(path) as tmp, open(tmp, "w+b") as f:
        f.write(head)
        f.write(ids.to(torch.int64).contiguous().numpy().tobytes())
        f.truncate(at[""])  # the values: zeros until filled
        f.flush()
        if first is not None:
            _fill(f, at["values"], dtype, shape, build, first, chunks, bar)
        meta["sha256"] = _data_sha256(f, at["ids"], at[""])
        final = _header({"ids": (torch.int64, [ids.numel()]), "values": (dtype, shape)},
                        meta)[0]
        assert len(final) == len(head)  # the sha256 took the placeholder's 64 characters
        f.seek(0)
        f.write(final)
        f.flush()


def _fill(f: Any, offset: int, dtype: torch.dtype, shape: list[int], build: Build,
          first: Tensor, chunks: list[Tensor], rest: Any) -> None:
    """Write each chunk's values into the memory-mapped file, one chunk in memory at a time."""
    mm = mmap.mmap(f.fileno(), 0)
    try:
        values = torch.frombuffer(mm, dtype=dtype, count=int(torch.Size(shape).numel()),
                                  offset=offset).view(shape)
        pos, out = 0, first
        for i in range(len(chunks)):
            if i:
                out = build.compute(next(rest))
            b = out.size(0)
            if build.tokens:
                values[pos:pos + b, : out.size(1)] = out.to("cpu", dtype)
            else:
                values[pos:pos + b] = out.to("cpu", dtype)
            pos += b
        del values, out
        mm.flush()
    finally:
        mm.close()


def _data_sha256(f: Any, start: int, stop: int) -> str:
    h = hashlib.sha256()
    f.seek(start)
    left = stop - start
    while left > 0:
        block = f.read(min(_BLOCK, left))
        if not block:
            break
        h.update(block)
        left -= len(block)
    return h.hexdigest()


def _check_shard(path: Path) -> dict[str, str]:
    """The shard's metadata, after checking its size and sha256 (a truncated or edited file
    raises `CheckpointError` naming it)."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            spec = json.loads(f.read(n)) if 0 < n < 100_000_000 else None
            if not isinstance(spec, dict) or not isinstance(spec.get("__metadata__"), dict):
                raise CheckpointError(f"{path} is not an adarec shard (no header)")
            meta: dict[str, str] = spec["__metadata__"]
            stop = 8 + n + max(int(v["data_offsets"][1]) for k, v in spec.items()
                               if k != "__metadata__")
            size = os.fstat(f.fileno()).st_size
            if size != stop:
                raise CheckpointError(f"{path} holds {size} bytes, its header describes {stop}: "
                                      "the file was truncated or extended after it was written")
            if _data_sha256(f, 8 + n, stop) != meta.get("sha256"):
                raise CheckpointError(f"{path} was edited after it was written: the sha256 of "
                                      "its data does not match its header")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path} cannot be read as an adarec shard: {e}") from e
    return meta


def _write_manifest(root: Path, build: Build, world: int) -> None:
    shards, row_shape, dtype = [], None, None
    for r in range(world):
        path = root / shard_name(build.kind, r, world)
        meta = _check_shard(path)
        lo, hi = (int(x) for x in meta["chunks"].split(","))
        with safe_open(str(path), framework="pt") as f:
            rows = int(f.get_slice("ids").get_shape()[0])
        if hi > lo:
            row_shape = row_shape or meta["row_shape"]
            dtype = dtype or meta["dtype"]
        shards.append({"file": path.name, "chunks": [lo, hi], "rows": rows,
                       "sha256": meta["sha256"]})
    manifest = {"format": FORMAT, "kind": build.kind, "fingerprint": build.fingerprint,
                "n_rows": build.n_rows, "n_chunks": len(build.chunks), "world_size": world,
                "row_shape": [int(x) for x in (row_shape or "").split(",") if x],
                "dtype": dtype or "F32", "shards": shards}
    with atomic_file(manifest_path(root, build.kind)) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1))
    listed = {s["file"] for s in shards}
    for stale in root.glob(f"{build.kind}-*-of-*.safetensors"):  # another world size's
        if stale.name not in listed:
            stale.unlink(missing_ok=True)


def read_manifest(folder: str | os.PathLike[str], kind: str, fingerprint: str) -> dict[str, Any]:
    """The manifest of ``kind`` in ``folder``, refused (`CheckpointError`) when it is missing,
    of another model state, or does not cover every chunk and row."""
    file = manifest_path(folder, kind)
    if not file.is_file():
        raise CheckpointError(f"no {file.name} in {folder}: the {kind} shards were never "
                              "completed there (build them first)")
    try:
        manifest = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{file} is not valid JSON: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{file} is not an adarec shard manifest ({FORMAT})")
    try:
        _check_manifest(file, manifest, fingerprint)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{file} is not a whole shard manifest: {e!r}") from e
    return manifest


def _check_manifest(file: Path, manifest: dict[str, Any], fingerprint: str) -> None:
    if manifest.get("fingerprint") != fingerprint:
        raise CheckpointError(
            f"{file} was built from another model state (fingerprint "
            f"{str(manifest.get('fingerprint'))[:12]}..., this model's {fingerprint[:12]}...): "
            "the weights, adapter sets or items changed since; build the table again")
    shards = manifest.get("shards") or []
    spans = [tuple(s["chunks"]) for s in shards]
    covered = [s for lo, hi in spans for s in range(lo, hi)]
    if covered != list(range(int(manifest["n_chunks"]))):
        raise CheckpointError(f"{file}: the shards' chunk ranges {spans} do not cover chunks "
                              f"0..{manifest['n_chunks']} once, in order")
    if sum(int(s["rows"]) for s in shards) != int(manifest["n_rows"]):
        raise CheckpointError(f"{file}: the shards hold {sum(int(s['rows']) for s in shards)} "
                              f"rows, the table {manifest['n_rows']}")


def load_table(folder: str | os.PathLike[str], kind: str, fingerprint: str,
               directory: str | os.PathLike[str] | None = None) -> tuple[Tensor, Path | None]:
    """The whole table ``[n_rows, *row_shape]`` merged from the shards of ``folder`` (in
    memory, or memory-mapped in a new file in ``directory``), after `read_manifest` and each
    shard's size and sha256 are checked. Returns the table and its file (``None`` in memory)."""
    manifest = read_manifest(folder, kind, fingerprint)
    dtype = _BY_NAME.get(manifest["dtype"])
    if dtype is None:
        raise CheckpointError(f"{manifest_path(folder, kind)}: dtype {manifest['dtype']!r}")
    shape = (int(manifest["n_rows"]), *manifest["row_shape"])
    table, file = allocate_table(shape, dtype, directory)
    seen = torch.zeros(table.size(0), dtype=torch.bool)
    for shard in manifest["shards"]:
        path = Path(folder) / shard["file"]
        if not path.is_file():
            raise CheckpointError(f"{path} is missing: the shard set is partial")
        meta = _check_shard(path)
        if meta["sha256"] != shard["sha256"] or meta["fingerprint"] != fingerprint:
            raise CheckpointError(f"{path} is not the shard {manifest_path(folder, kind).name} "
                                  "lists (another build replaced it): build the table again")
        with safe_open(str(path), framework="pt") as f:
            ids = f.get_tensor("ids")
            if ids.numel() == 0:
                continue
            values = f.get_slice("values")
            if list(values.get_shape()[1:]) != manifest["row_shape"]:
                raise CheckpointError(f"{path}: rows of shape {values.get_shape()[1:]}, the "
                                      f"manifest says {manifest['row_shape']}")
            for a in range(0, ids.numel(), _COPY_ROWS):
                rows = ids[a:a + _COPY_ROWS]
                table[rows] = values[a:a + _COPY_ROWS]
                seen[rows] = True
    if not bool(seen.all()):
        raise CheckpointError(f"{folder}: rows {(~seen).nonzero().flatten()[:5].tolist()} of "
                              f"the {kind} table are in no shard")
    return table, file


def check_build(n_rows: int, chunks: Sequence[Tensor]) -> None:
    """Every row in exactly one chunk: what makes the merged table whole."""
    if n_rows < 1:
        raise ConfigError("cannot build a table of 0 rows")
    ids = torch.cat([c.cpu() for c in chunks]) if chunks else torch.zeros(0, dtype=torch.long)
    if ids.numel() != n_rows or not torch.equal(ids.sort().values, torch.arange(n_rows)):
        raise ConfigError(f"the chunks hold {ids.numel()} ids, not each of the {n_rows} rows once")


__all__ = ["Build", "build_shards", "check_build", "load_table", "manifest_path",
           "read_manifest", "shard_name", "state_fingerprint"]
