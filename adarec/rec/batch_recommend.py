"""The nightly job: top-k for every user of a data set, sharded by rank, streamed to files.

Users (in their given order) are cut into shards of ``shard_size``; under ``torchrun`` each
rank takes its contiguous run of shards (`adarec.distributed.shard_range`), in one process the
one rank takes all. Each shard is scored with `TransRec.recommend` (the one scoring path) a
batch at a time and streamed to ``part-NNNNN.csv`` (or ``.parquet``), written atomically
(`adarec.folders.atomic_file`): a part that is there is whole, so a job killed mid-run and
started again skips the finished parts and redoes the one it was writing. Rank 0 then
concatenates the parts into ``recommendations.csv``. Shards do not depend on the world size,
so the merged file is byte for byte the one a single process writes.

``job.json`` records what the parts were computed from (the model's fingerprint, the users,
``k`` and the options); a folder holding another job's parts is refused (or cleared with
``overwrite=True``), so no part of yesterday's model is merged into today's results.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
from collections.abc import Hashable, Iterator, Mapping, Sequence
from numbers import Integral
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from adarec import distributed as D
from adarec.errors import ConfigError
from adarec.folders import atomic_file, remove_temporaries
from adarec.rec.data import InteractionData
from adarec.rec.shard_files import state_fingerprint

FORMATS = ("csv", "parquet")
COLUMNS = ("user", "rank", "item", "score")
JOB = "job.json"
_JOB_FORMAT = "adarec-recommend-all/1"


def user_histories(model: Any, data: InteractionData) -> dict[Hashable, list[Hashable]]:
    """Each user's history as `recommend` reads it: raw item ids when the model has an item
    map, else item indices."""
    if model.item_ids is None:
        return {u: list(seq) for u, seq in data.sequences.items()}
    return {u: [data.item_ids[i] for i in seq] for u, seq in data.sequences.items()}


def recommend_all(
    model: Any,
    users: Mapping[Hashable, Sequence[Hashable]] | InteractionData,
    out: str | os.PathLike[str],
    k: int = 10,
    *,
    shard_size: int = 4096,
    format: str = "csv",
    batch_size: int = 256,
    exclude_seen: bool = True,
    unknown: str = "raise",
    progress: bool | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the top-``k`` of every user to ``out/recommendations.{format}`` (columns
    ``user, rank, item, score``, best first) and return its path; see the module docstring.
    ``users`` maps each user to its history (oldest first, as `recommend` takes it) or is an
    `InteractionData`. Every rank must call it (it runs barriers). ``format="parquet"`` needs
    pyarrow (``pip install pyarrow``)."""
    if k < 1 or shard_size < 1 or batch_size < 1:
        raise ConfigError(f"k, shard_size and batch_size must be >= 1, got {k}, {shard_size}, "
                          f"{batch_size}")
    if format not in FORMATS:
        raise ConfigError(f"format={format!r} is not one of {list(FORMATS)}")
    if format == "parquet":
        _pyarrow()
    histories = user_histories(model, users) if isinstance(users, InteractionData) else users
    rows = list(histories.items())
    if not rows:
        raise ConfigError("no users to recommend for")
    root = Path(out)
    job = {"format": _JOB_FORMAT, "model": state_fingerprint(model, modes=False),
           "users": _users_digest(rows), "n_users": len(rows), "k": k,
           "shard_size": shard_size, "file_format": format, "exclude_seen": exclude_seen,
           "unknown": unknown}
    if D.is_main_process():
        _start(root, job, format, overwrite)
    D.barrier()
    if json.loads((root / JOB).read_text()) != job:
        raise ConfigError(f"{root / JOB} differs from this rank's job: every rank must pass the "
                          "same model, users and options")
    n_shards = math.ceil(len(rows) / shard_size)
    own = [j for j in D.shard_range(n_shards) if not _part(root, j, format).is_file()]
    todo = sum(len(rows[j * shard_size:(j + 1) * shard_size]) for j in own)
    rank = D.get_rank()
    ints = (_ints([u for u, _ in rows]),
            model.item_ids is None or _ints(model.item_ids[1:]))  # parquet column types
    with tqdm(total=todo, desc=f"recommending (rank {rank})", unit="user", position=rank,
              leave=False, disable=None if progress is None else not progress) as bar:
        for j in own:
            shard = rows[j * shard_size:(j + 1) * shard_size]
            batches = _recommended(model, shard, k, batch_size, exclude_seen, unknown, bar)
            with atomic_file(_part(root, j, format)) as tmp:
                (_write_csv if format == "csv" else _write_parquet)(tmp, batches, ints)
    D.barrier()
    merged = root / f"recommendations.{format}"
    if D.is_main_process():
        parts = [_part(root, j, format) for j in range(n_shards)]
        with atomic_file(merged) as tmp:
            (_merge_csv if format == "csv" else _merge_parquet)(tmp, parts)
    D.barrier()
    return merged


def _part(root: Path, shard: int, format: str) -> Path:
    return root / f"part-{shard:05d}.{format}"


def _users_digest(rows: list[tuple[Hashable, Sequence[Hashable]]]) -> str:
    h = hashlib.sha256()
    for user, history in rows:
        h.update(f"{user!r}:{[*history]!r}\n".encode())
    return h.hexdigest()


def _start(root: Path, job: dict[str, Any], format: str, overwrite: bool) -> None:
    """Rank 0, before any rank writes: clear killed writers' temporaries, and keep the parts
    only when they belong to this very job."""
    root.mkdir(parents=True, exist_ok=True)
    remove_temporaries(root)
    file = root / JOB
    if file.is_file():
        try:
            old = json.loads(file.read_text())
        except ValueError:
            old = None
        if old != job:
            if not overwrite:
                changed = sorted(k for k in job if not isinstance(old, dict)
                                 or old.get(k) != job[k])
                raise ConfigError(f"{root} holds the results of another job ({changed} differ): "
                                  "pass a new folder, or overwrite=True to clear it")
            for f in [*root.glob("part-*.*"), *root.glob("recommendations.*")]:
                f.unlink()
    with atomic_file(file) as tmp:
        tmp.write_text(json.dumps(job, indent=1))


Batch = tuple[list[Hashable], list[list[Hashable]], list[list[float]]]


def _recommended(model: Any, shard: list[tuple[Hashable, Sequence[Hashable]]], k: int,
                 batch_size: int, exclude_seen: bool, unknown: str, bar: Any) -> Iterator[Batch]:
    """The shard's users, items and scores, one `recommend` batch at a time."""
    for start in range(0, len(shard), batch_size):
        part = shard[start:start + batch_size]
        rec = model.recommend([h for _, h in part], k=k, exclude_seen=exclude_seen,
                              unknown=unknown, batch_size=batch_size)
        scores = [s[: len(items)] for s, items in zip(rec.scores.tolist(), rec.items,
                                                      strict=True)]
        bar.update(len(part))
        yield [u for u, _ in part], rec.items, scores


def _write_csv(file: Path, batches: Iterator[Batch], ints: tuple[bool, bool]) -> None:
    with open(file, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        for users, items, scores in batches:
            for user, row, values in zip(users, items, scores, strict=True):
                writer.writerows((user, r, item, f"{s:.9g}")  # float32 round-trips in 9 digits
                                 for r, (item, s) in enumerate(zip(row, values, strict=True), 1))


def _merge_csv(file: Path, parts: list[Path]) -> None:
    with open(file, "wb") as f:
        f.write((",".join(COLUMNS) + "\n").encode())
        for part in parts:
            with open(part, "rb") as p:
                while block := p.read(1 << 20):
                    f.write(block)


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise ConfigError("format='parquet' needs pyarrow: pip install pyarrow (or use "
                          "format='csv')") from None
    return pyarrow


def _ints(values: Sequence[Any]) -> bool:
    return all(isinstance(v, Integral) and not isinstance(v, bool) for v in values)


def _write_parquet(file: Path, batches: Iterator[Batch], ints: tuple[bool, bool]) -> None:
    """Columns ``user`` and ``item`` as int64 when every id is an int, else as strings."""
    pa = _pyarrow()
    kinds = [pa.int64() if i else pa.string() for i in ints]
    schema = pa.schema([("user", kinds[0]), ("rank", pa.int32()), ("item", kinds[1]),
                        ("score", pa.float32())])
    with pa.parquet.ParquetWriter(str(file), schema) as writer:
        for users, items, scores in batches:
            flat = [(u, r, i, s) for u, row, values in zip(users, items, scores, strict=True)
                    for r, (i, s) in enumerate(zip(row, values, strict=True), 1)]
            cols = [list(c) for c in zip(*flat, strict=True)] if flat else [[], [], [], []]
            for c, is_int in ((0, ints[0]), (2, ints[1])):
                cols[c] = cols[c] if is_int else [str(v) for v in cols[c]]
            writer.write_table(pa.table(dict(zip(COLUMNS, cols, strict=True)), schema=schema))


def _merge_parquet(file: Path, parts: list[Path]) -> None:
    pa = _pyarrow()
    schema = pa.parquet.read_schema(str(parts[0]))
    with pa.parquet.ParquetWriter(str(file), schema) as writer:
        for part in parts:
            for batch in pa.parquet.ParquetFile(str(part)).iter_batches():
                writer.write_batch(batch)


__all__ = ["COLUMNS", "FORMATS", "recommend_all", "user_histories"]
