"""Checkpoint folders on disk: atomic, locked replacement and consistent reads.

A checkpoint is a folder of files that belong together (a JSON file and the tensors it describes),
so the folder, not a file, is the unit that is replaced and read:

- **Writers** build the new folder as a hidden sibling, then swap it in with two renames (the old
  folder aside, the new one in) and delete the old one. A lock file next to the folder
  (``.<name>.lock``, ``flock``-ed, removed afterwards) serialises writers, within a process and
  across processes: concurrent saves to one path all succeed, the last one wins, and no
  ``.old-*``/``.tmp-*`` sibling is left behind (ones left by a writer that was killed are cleared
  by the next successful save). A path that is a symbolic link is followed: the link stays and
  its target is replaced. Files and folders are created with the process umask.
- **Readers** take no lock (read-only media work): they open the folder once and both files
  through it, so they read one folder's files even if a writer swaps the path meanwhile (a folder
  is never changed after it is swapped in). When the path is briefly missing (between the two
  renames) or the folder they opened was deleted under them, they wait for the writer and retry.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import CheckpointError

try:
    import fcntl
except ImportError:  # Windows: an exclusive-create lock file instead
    fcntl = None  # type: ignore[assignment]

PathLike = str | os.PathLike[str]
_DIR_FD = os.open in os.supports_dir_fd and hasattr(os, "O_DIRECTORY")
_READ_ATTEMPTS = 50
_POLL_S = 0.01
"""Only without ``fcntl`` (Windows): how often to look at another writer's lock file."""


def _fsync(path: Path) -> None:
    """Flush a file or folder to disk; folders cannot be fsynced on some platforms."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def target_of(path: PathLike) -> Path:
    """The folder a save to ``path`` writes: ``path`` itself, or the target of the symbolic
    link ``path`` is (so the link survives and its target is updated)."""
    dest = Path(path).absolute()
    return dest.resolve() if dest.is_symlink() else dest


def _lock_file(dest: Path) -> Path:
    return dest.parent / f".{dest.name}.lock"


@contextmanager
def folder_lock(dest: Path) -> Iterator[None]:
    """Hold the writers' lock of folder ``dest`` (blocking until other writers are done)."""
    lock = _lock_file(dest)
    if fcntl is None:
        with _exclusive_file_lock(lock):
            yield
        return
    while True:  # lock the file that is still at the path (a releasing writer unlinks it)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            held = os.fstat(fd)
            try:
                now = os.stat(lock)
            except FileNotFoundError:
                now = None
        except BaseException:
            os.close(fd)
            raise
        if now is not None and (now.st_ino, now.st_dev) == (held.st_ino, held.st_dev):
            break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)  # while still holding it: waiters then see another file and retry
        os.close(fd)


_STALE_S = 600.0
"""Only without ``fcntl``: a lock file older than this is taken for a killed writer's."""


@contextmanager
def _exclusive_file_lock(lock: Path) -> Iterator[None]:
    start = time.monotonic()
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            if time.monotonic() - start > _STALE_S:
                raise CheckpointError(
                    f"{lock} has been held for {_STALE_S:.0f} s: if no save to that folder is "
                    "running, a killed writer left it; delete it"
                ) from None
            time.sleep(_POLL_S)
    try:
        yield
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(lock)


def wait_for_writer(dest: Path) -> bool:
    """Wait until no writer holds ``dest``'s lock; True when one did (so retrying may help)."""
    lock = _lock_file(dest)
    if fcntl is None:
        waited = False
        while lock.exists():
            waited = True
            time.sleep(_POLL_S)
        return waited
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False  # nobody writing: the lock file is a leftover of a killed writer
        except BlockingIOError:
            fcntl.flock(fd, fcntl.LOCK_SH)
            return True
    finally:
        os.close(fd)


@contextmanager
def atomic_folder(path: PathLike, marker: str) -> Iterator[Path]:
    """Yield an empty temporary sibling of ``path``; when the block succeeds it replaces ``path``.

    The previous folder is renamed aside, the new one renamed in, and only then is the old one
    deleted, so an error (full disk, a crash, Ctrl-C) never leaves a half-written folder where a
    good one was. An existing folder is replaced only if it holds ``marker`` (or is empty), so a
    mistyped path cannot wipe unrelated files. The whole save holds the folder's lock, so
    concurrent saves to one path take turns; a symbolic link at ``path`` is followed.
    """
    dest = target_of(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with folder_lock(dest):
        if dest.exists():
            if not dest.is_dir():
                raise CheckpointError(f"{dest} exists and is not a folder")
            if any(dest.iterdir()) and not (dest / marker).is_file():
                raise CheckpointError(
                    f"refusing to replace {dest}: it is not empty and holds no {marker}, so it "
                    "is not a checkpoint this function wrote"
                )
        tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:12]}"
        tmp.mkdir()
        try:
            yield tmp
            for f in tmp.iterdir():
                _fsync(f)
            _fsync(tmp)
            old = None
            if dest.exists():
                old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:12]}"
                os.replace(dest, old)
            try:
                os.replace(tmp, dest)
            except BaseException:
                if old is not None:
                    os.replace(old, dest)
                raise
            _fsync(dest.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        for stale in [old, *_siblings(dest)]:  # ours, and any a killed writer left
            if stale is not None:
                shutil.rmtree(stale, ignore_errors=True)


def atomic_write(path: PathLike, data: str | bytes) -> Path:
    """Write one file so that readers see the old content or the new, never a part
    (`atomic_file`), under the path's writers' lock, so concurrent writes take turns.
    Returns the path written."""
    dest = target_of(path)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    dest.parent.mkdir(parents=True, exist_ok=True)
    with folder_lock(dest):
        if dest.is_dir():
            raise CheckpointError(f"{dest} is a folder, not a file")
        with atomic_file(dest) as tmp, open(tmp, "xb") as f:
            f.write(raw)
    return dest


def _siblings(dest: Path) -> list[Path]:
    """``.tmp-*``/``.old-*`` siblings: under the lock, none belongs to a live writer."""
    return [p for kind in ("tmp", "old") for p in dest.parent.glob(f".{dest.name}.{kind}-*")]


class _Swapped(Exception):
    """The folder being read was replaced and deleted under the reader: read again."""


Pick = Callable[[dict[str, bytes]], Iterable[tuple[str, bool]]]


def read_folder(folder: PathLike, names: tuple[str, ...],
                pick: Pick | None = None) -> dict[str, bytes]:
    """Read files of one checkpoint folder as a consistent set (see the module docstring).

    ``names`` are read whole when present (absent ones are left out of the result);
    ``pick(first_files) -> tuple[(name, head_only)]`` may name more files after seeing the first
    ones (e.g. the weights file a JSON names), with ``head_only`` reading only a safetensors
    header. A folder that is missing when no writer is busy raises ``FileNotFoundError``; a
    file named by ``pick`` that is missing raises `MissingFile`.
    """
    path = Path(folder)
    for attempt in range(_READ_ATTEMPTS):
        try:
            return _read_once(path, names, pick)
        except _Swapped:
            continue
        except FileNotFoundError:
            if attempt == 0 or wait_for_writer(target_of(path)):
                continue  # between a writer's two renames, or it finished just now
            raise
    raise CheckpointError(f"{path} kept being replaced while it was read "
                          f"({_READ_ATTEMPTS} attempts): is something rewriting it in a loop?")


def _read_once(path: Path, names: tuple[str, ...], pick: Pick | None) -> dict[str, bytes]:
    if not _DIR_FD:
        return _read_by_path(path, names, pick)
    dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)  # FileNotFoundError: no folder now
    try:
        out: dict[str, bytes] = {}
        for name in names:
            data = _read_at(dfd, path, name, head_only=False, required=False)
            if data is not None:
                out[name] = data
        for name, head_only in (pick(out) if pick is not None else ()):
            data = _read_at(dfd, path, name, head_only, required=True)
            assert data is not None
            out[name] = data
        return out
    finally:
        os.close(dfd)


def _read_at(dfd: int, path: Path, name: str, head_only: bool, required: bool) -> bytes | None:
    try:
        fd = os.open(name, os.O_RDONLY, dir_fd=dfd)
    except FileNotFoundError:
        if _same_folder(dfd, path):
            if required:
                raise MissingFile(path / name) from None
            return None
        raise _Swapped from None
    with os.fdopen(fd, "rb") as f:
        return safetensors_head(f) if head_only else f.read()


class MissingFile(CheckpointError):
    """A file a checkpoint folder needs is not in it (the folder itself is there)."""

    def __init__(self, file: Path) -> None:
        super().__init__(f"no {file.name} in {file.parent}")
        self.file = file


def _same_folder(dfd: int, path: Path) -> bool:
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(dfd)
    return (now.st_ino, now.st_dev) == (held.st_ino, held.st_dev)


def _read_by_path(path: Path, names: tuple[str, ...], pick: Pick | None) -> dict[str, bytes]:
    """Without ``dir_fd`` (Windows): read by path and retry if the folder changed meanwhile."""
    before = os.stat(path)
    out = {n: (path / n).read_bytes() for n in names if (path / n).is_file()}
    for name, head_only in (pick(out) if pick is not None else ()):
        if not (path / name).is_file():
            raise MissingFile(path / name)
        with open(path / name, "rb") as f:
            out[name] = safetensors_head(f) if head_only else f.read()
    after = os.stat(path)
    if (before.st_ino, before.st_mtime_ns) != (after.st_ino, after.st_mtime_ns):
        raise _Swapped
    return out


_MAX_HEADER = 100_000_000
"""safetensors' own limit on the JSON header size."""


def safetensors_head(f: object) -> bytes:
    """The first bytes of a safetensors file up to the end of its JSON header (8-byte
    little-endian length, then the header): enough to read its metadata."""
    size = f.read(8)  # type: ignore[attr-defined]
    if len(size) < 8:
        return bytes(size)
    n = int.from_bytes(size, "little")
    return bytes(size) + f.read(min(n, _MAX_HEADER))  # type: ignore[attr-defined]


@contextmanager
def atomic_file(path: PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of file ``path`` (``.NAME.tmp-*``); when the block succeeds it
    is flushed to disk and renamed to ``path``, so a reader (or a resumed job) sees the old
    file or the whole new one, never a half-written one. On an error it is deleted; one left
    by a killed process is removed by `remove_temporaries`."""
    dest = Path(path).absolute()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, dest)
        _fsync(dest.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def remove_temporaries(folder: PathLike) -> list[Path]:
    """Delete the `atomic_file` temporaries in ``folder`` (left by killed writers); call it
    only when no writer is running there. Returns what was removed."""
    gone = sorted(Path(folder).glob(".*.tmp-*"))
    for f in gone:
        with contextlib.suppress(OSError):
            os.remove(f)
    return gone


__all__ = [
    "MissingFile",
    "atomic_file",
    "atomic_folder",
    "atomic_write",
    "folder_lock",
    "read_folder",
    "remove_temporaries",
    "safetensors_head",
    "target_of",
    "wait_for_writer",
]
