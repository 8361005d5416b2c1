"""Readers for the user's own data: CSV files, pandas DataFrames and RecBole atomic files.

Every reader ends in `InteractionData.from_interactions`, so one set of rules (timestamp
parsing, ordering, filtering, item numbering) holds for all formats. What a reader adds: columns
checked up front (a `DataError` lists the ones found), item text from a column or a template,
items listed twice with different texts refused, and the file and line named in every error.

RecBole atomic files (https://recbole.io/docs/user_guide/data/atomic_files.html) are
tab-separated with a ``name:type`` header; a ``token_seq`` field holds space-separated tokens.
"""

from __future__ import annotations

import csv
import logging
import string
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from adarec.errors import DataError, DataFileNotFoundError
from adarec.rec.data import InteractionData, LeaveOneOutSplit, warn_missing_texts
from adarec.rec.timestamps import TimestampParser, is_missing

logger = logging.getLogger(__name__)
Row = Mapping[str, Any]


# ----------------------------------------------------------------------------- small pieces
def require_file(path: Path, what: str = "file") -> Path:
    if not path.is_file():
        where = path.parent if path.parent.is_dir() else f"{path.parent} (no such folder)"
        raise DataFileNotFoundError(f"{what} {path.name} not found in {where}")
    return path


def check_columns(source: str, found: Sequence[str], needed: Iterable[str | None]) -> None:
    missing = [c for c in needed if c is not None and c not in found]
    if missing:
        raise DataError(f"{source}: missing column(s) {missing}; found {list(found)}")


def text_builder(text: str) -> tuple[Callable[[Row], str], list[str]]:
    """``text`` is a column name, or a template over columns such as ``"{title} ({year})"``.

    Returns the function building one row's text and the columns it reads. Missing values
    (empty, ``None``, NaN) become ``""`` inside a template; a template whose every field is
    empty gives ``""`` (an item without text) rather than just its punctuation.
    """
    if "{" not in text:
        return (lambda row: "" if is_missing(row.get(text)) else str(row[text]).strip()), [text]
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]
    except ValueError as exc:
        raise DataError(f"text template {text!r} is malformed: {exc}") from None
    if any(not f or not f.isidentifier() for f in fields):
        raise DataError(f"text template {text!r}: every {{field}} must name a column")

    def build(row: Row) -> str:
        values = {f: "" if is_missing(row.get(f)) else str(row[f]).strip() for f in fields}
        if not any(values.values()):
            return ""
        return text.format_map(values).strip()

    return build, fields


def item_texts(
    rows: Iterable[tuple[str, Row]], key: str, text: str
) -> dict[Any, str]:
    """``{item id: text}`` from ``(where, row)`` pairs; an item listed twice must have the same
    text both times (else `DataError` naming both places)."""
    build, _ = text_builder(text)
    out: dict[Any, str] = {}
    seen: dict[Any, str] = {}
    conflicts: list[str] = []
    for where, row in rows:
        item = row.get(key)
        if is_missing(item):
            continue
        value = build(row)
        if item in out and out[item] != value:
            if value and not out[item]:
                out[item], seen[item] = value, where  # a later row fills in a missing text
            elif value:
                conflicts.append(f"item {item!r}: {out[item]!r} ({seen[item]}) vs {value!r} "
                                 f"({where})")
            continue
        out.setdefault(item, value)
        seen.setdefault(item, where)
    if conflicts:
        raise DataError(f"{len(conflicts)} item(s) have conflicting texts:\n  "
                        + "\n  ".join(conflicts[:5]))
    return out


# ----------------------------------------------------------------------------------- CSV
def csv_rows(file: Path, delimiter: str = ",",
             needed: Iterable[str | None] = ()) -> tuple[list[str], Iterator[tuple[str, Row]]]:
    """The header and ``(file:line, row)`` pairs of a CSV file; a row with another number of
    fields than the header is a `DataError`."""
    require_file(file)
    handle = file.open(newline="", encoding="utf-8-sig")
    reader = csv.DictReader(handle, delimiter=delimiter, restkey="\0extra")
    header = list(reader.fieldnames or [])
    if not header:
        handle.close()
        raise DataError(f"{file}: empty file, expected a header row")
    try:
        check_columns(str(file), header, needed)
    except DataError:
        handle.close()
        raise

    def rows() -> Iterator[tuple[str, Row]]:
        with handle:
            for row in reader:
                where = f"{file}:{reader.line_num}"
                if "\0extra" in row or any(v is None for v in row.values()):
                    n = len(header) + len(row.get("\0extra") or []) - sum(
                        v is None for v in row.values())
                    raise DataError(f"{where}: {n} fields, the header has {len(header)}")
                yield where, row

    return header, rows()


def interaction_rows(
    rows: Iterable[tuple[str, Row]], user: str, item: str, time: str | None
) -> Iterator[tuple[Any, ...]]:
    """``(user, item, timestamp)`` tuples (``(user, item)`` without ``time``) for
    `InteractionData.from_interactions`, timestamps parsed here so an error names the file and
    line; rows without a user or item pass through, to be dropped and counted there."""
    parser = TimestampParser()
    for where, row in rows:
        if time is None:
            yield row[user], row[item]
        elif is_missing(row[user]) or is_missing(row[item]):
            yield row[user], row[item], 0.0  # dropped (and counted) by from_interactions
        else:
            yield row[user], row[item], parser.parse(row[time], where)
    parser.check()


def read_csv_interactions(
    cls: type[InteractionData], path: Path, user: str, item: str, time: str | None,
    items: str | Path | None, item_key: str | None, text: str | None, delimiter: str,
    min_user_interactions: int, name: str | None,
) -> InteractionData:
    """`InteractionData.from_csv`."""
    texts: dict[Any, str] | None = None
    text_cols = text_builder(text)[1] if text else []
    if items is not None:
        if text is None:
            raise DataError("items= was given without text=: name the text column or template")
        key = item_key or item
        _, item_rows = csv_rows(Path(items), delimiter, [key, *text_cols])
        texts = item_texts(item_rows, key, text)
        needed: list[str | None] = [user, item, time]
    else:
        needed = [user, item, time, *text_cols]
    _, rows = csv_rows(path, delimiter, needed)
    if items is None and text is not None:
        kept = list(rows)  # read once, used twice
        texts = item_texts(kept, item, text)
        rows = iter(kept)
    data = cls.from_interactions(
        interaction_rows(rows, user, item, time), texts, min_user_interactions,
        name=name if name is not None else path.stem,
    )
    return data


# ------------------------------------------------------------------------------ DataFrame
def _frame_rows(df: Any, source: str) -> Iterator[tuple[str, Row]]:
    for i, row in enumerate(df.to_dict("records")):
        yield f"{source} row {i}", row


def read_dataframe_interactions(
    cls: type[InteractionData], df: Any, user: str, item: str, time: str | None, items: Any,
    item_key: str | None, text: str | None, min_user_interactions: int, name: str,
) -> InteractionData:
    """`InteractionData.from_dataframe`; pandas is never imported here (the frame brings it)."""
    if not hasattr(df, "columns") or not hasattr(df, "to_dict"):
        raise DataError(f"expected a pandas DataFrame, got {type(df).__name__}")
    text_cols = text_builder(text)[1] if text else []
    texts: dict[Any, str] | None = None
    if items is not None:
        if text is None:
            raise DataError("items= was given without text=: name the text column or template")
        key = item_key or item
        if isinstance(items, (str, Path)):
            _, item_rows = csv_rows(Path(items), ",", [key, *text_cols])
        else:
            check_columns("items DataFrame", list(items.columns), [key, *text_cols])
            item_rows = _frame_rows(items, "items DataFrame")
        texts = item_texts(item_rows, key, text)
        check_columns("DataFrame", list(df.columns), [user, item, time])
    else:
        check_columns("DataFrame", list(df.columns), [user, item, time, *text_cols])
        if text is not None:
            texts = item_texts(_frame_rows(df[[item, *text_cols]], "DataFrame"), item, text)
    columns = [df[user].tolist(), df[item].tolist()]
    if time is not None:
        columns.append(df[time].tolist())  # datetime64 -> pandas Timestamps (datetimes), NaT kept
    rows: Iterator[tuple[Any, ...]] = zip(*columns, strict=True)
    if time is not None:
        parser = TimestampParser()
        rows = ((u, i, t if is_missing(u) or is_missing(i)
                 else parser.parse(t, f"DataFrame row {n}")) for n, (u, i, t) in enumerate(rows))
        rows = _then(rows, parser.check)
    return cls.from_interactions(rows, texts, min_user_interactions, name=name)


def _then(rows: Iterator[tuple[Any, ...]], done: Callable[[], None]) -> Iterator[tuple[Any, ...]]:
    yield from rows
    done()


# ------------------------------------------------------------------------- RecBole atomic
def atomic_rows(file: Path, needed: Iterable[str | None] = ()) -> tuple[list[str],
                                                                        Iterator[tuple[str, Row]]]:
    """Header field names (types stripped) and ``(file:line, row)`` pairs of an atomic file.

    Quoting is off (titles contain literal quote characters); a row with another number of
    fields than the header is a `DataError`.
    """
    require_file(file)
    handle = file.open(newline="", encoding="utf-8")
    reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
    header = next(reader, None)
    if header is None:
        handle.close()
        raise DataError(f"{file}: empty file, expected a `name:type` header")
    names = [field.split(":", 1)[0] for field in header]
    try:
        check_columns(str(file), names, needed)
    except DataError:
        handle.close()
        raise

    def rows() -> Iterator[tuple[str, Row]]:
        with handle:
            for row in reader:
                where = f"{file}:{reader.line_num}"
                if not row:
                    continue
                if len(row) != len(names):
                    raise DataError(f"{where}: {len(row)} fields, expected {len(names)}")
                yield where, dict(zip(names, row, strict=True))

    return names, rows()


def _dataset_name(folder: Path, name: str | None) -> str:
    if name is not None:
        return name
    stems = sorted({p.name.split(".", 1)[0] for p in folder.glob("*.inter")})
    if len(stems) == 1:
        return stems[0]
    if not stems:
        raise DataFileNotFoundError(f"no .inter file in {folder}")
    raise DataError(f"{folder} holds several data sets {stems}; pass name=")


def load_atomic(
    folder: str | Path,
    name: str | None = None,
    text: str | None = None,
    min_user_interactions: int = 5,
    item_file: str | None = None,
) -> InteractionData:
    """A data set in RecBole's atomic files, read where it lies.

    Two layouts:

    - ``{name}.inter`` with ``user_id``, ``item_id`` and (optionally) ``timestamp``: one row per
      interaction, ordered by timestamp (file order without one), filtered and numbered by
      `InteractionData.from_interactions`; split it with `leave_one_out`.
    - pre-split ``{name}.train.inter``, ``{name}.valid.inter``, ``{name}.test.inter`` with
      ``user_id``, ``item_id_list`` (``token_seq``: the history) and ``item_id`` (the target),
      the layout UniSRec and RecBole's ``benchmark_filename`` use. The split is kept **as
      given**: ``data.split`` holds the files' rows unchanged (no re-derivation, no filtering,
      ``min_user_interactions`` is ignored) and `leave_one_out` returns it.

    Item text comes from ``{name}.item`` (or ``item_file``, e.g. UniSRec's ``{name}.text``):
    ``text`` is a column or a template over columns (``"{movie_title} ({release_year})"``);
    without ``text`` a ``text`` or ``title`` column is used when there is one. Items are
    numbered 1..n in order of first appearance; ``data.item_ids`` maps back to the tokens.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DataFileNotFoundError(f"data folder not found: {root}")
    name = _dataset_name(root, name)
    parts = [root / f"{name}.{part}.inter" for part in ("train", "valid", "test")]
    presplit = any(p.is_file() for p in parts)
    if (presplit and item_file is None and not (root / f"{name}.item").is_file()
            and (root / f"{name}.text").is_file()):
        item_file = f"{name}.text"  # UniSRec's layout: text keyed by the original token
    texts = _atomic_texts(root, name, text, item_file)
    if presplit:
        items = _index_tokens(root / f"{name}.item2index", name)
        users = _index_tokens(root / f"{name}.user2index", name)
        return _presplit(parts, texts, name, items, users)
    header, rows = atomic_rows(root / f"{name}.inter", ["user_id", "item_id"])
    time = "timestamp" if "timestamp" in header else None
    return _from_rows(rows, time, texts, min_user_interactions, name)


def _from_rows(rows: Iterator[tuple[str, Row]], time: str | None, texts: dict[Any, str] | None,
               min_user_interactions: int, name: str) -> InteractionData:
    return InteractionData.from_interactions(
        interaction_rows(rows, "user_id", "item_id", time), texts, min_user_interactions, name
    )


def _atomic_texts(root: Path, name: str, text: str | None,
                  item_file: str | None) -> dict[Any, str] | None:
    file = root / (item_file or f"{name}.item")
    if not file.is_file():
        if item_file is not None or text is not None:
            require_file(file, "item file")
        return None
    header, rows = atomic_rows(file, ["item_id"])
    if text is None:
        text = next((c for c in ("text", "title", "movie_title") if c in header), None)
        if text is None:
            logger.info("%s: no text column in %s (columns %s); pass text=", name, file.name,
                        header)
            return None
    check_columns(str(file), header, text_builder(text)[1])
    return item_texts(rows, "item_id", text)


def _index_tokens(mapping: Path, name: str) -> dict[str, str]:
    """Index -> original token from UniSRec's ``NAME.item2index`` / ``NAME.user2index``
    (``token<TAB>index`` lines; empty when the file is absent). The pre-split files speak
    indices; with the map, raw ids (``data.item_ids``, user ids) are the original tokens and
    item texts keyed by token are matched through it: without it a numeric token would take
    the text of the item whose *index* it equals."""
    out: dict[str, str] = {}
    if not mapping.is_file():
        return out
    with mapping.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            fields = line.rstrip("\n").split("\t")
            if not line.strip():
                continue
            if len(fields) != 2 or not fields[1].strip().isdigit():
                if n == 1:
                    continue  # a header line
                raise DataError(f"{mapping}:{n}: expected 'token<TAB>index', got {line!r}")
            token, index = fields[0].strip(), fields[1].strip()
            if out.setdefault(index, token) != token:
                raise DataError(f"{mapping}:{n}: index {index} maps to {out[index]!r} and "
                                f"{token!r}")
    logger.info("%s: %s maps %d indices to original tokens", name, mapping.name, len(out))
    return out


def _presplit(parts: list[Path], texts: dict[Any, str] | None, name: str,
              item_tokens: dict[str, str], user_tokens: dict[str, str]) -> InteractionData:
    missing = [p.name for p in parts if not p.is_file()]
    if missing:
        raise DataFileNotFoundError(f"pre-split data set {name}: {missing} not found beside "
                                    f"{[p.name for p in parts if p.is_file()]}")
    index: dict[Any, int] = {}

    def idx(token: str) -> int:
        return index.setdefault(token, len(index) + 1)

    read: list[list[tuple[Any, list[int], int]]] = []
    for part in parts:
        rows = []
        for where, row in atomic_rows(part, ["user_id", "item_id_list", "item_id"])[1]:
            if is_missing(row["user_id"]) or is_missing(row["item_id"]):
                raise DataError(f"{where}: empty user_id or item_id")
            history = [idx(t) for t in row["item_id_list"].split()]
            user = row["user_id"].strip()
            rows.append((user_tokens.get(user, user), history, idx(row["item_id"].strip())))
        read.append(rows)
    train, valid, test = read
    longest: dict[Any, list[int]] = {}
    for user, history, target in train:
        seq = [*history, target]
        if len(seq) > len(longest.get(user, [])):
            longest[user] = seq
    sequences: dict[Any, list[int]] = {}
    for user, history, target in (*train, *valid, *test):
        seq = [*history, target]
        if len(seq) >= len(sequences.get(user, [])):
            sequences[user] = seq
    split = LeaveOneOutSplit(
        users=list(longest), train=list(longest.values()),
        valid=[(h, t) for _, h, t in valid], test=[(h, t) for _, h, t in test], given=True,
        train_pairs=[(h, t) for _, h, t in train], train_pair_users=[u for u, _, _ in train],
        valid_users=[u for u, _, _ in valid],
        test_users=[u for u, _, _ in test],
    )
    unmapped = [t for t in index if item_tokens and t not in item_tokens]
    if unmapped:
        raise DataError(f"{name}: item indices {unmapped[:5]} of the .inter files are not in "
                        f"{name}.item2index")
    tokens = [item_tokens.get(t, t) for t in index]
    item_texts_list = [""] * (len(tokens) + 1)
    if texts is not None:
        item_texts_list[1:] = [texts.get(t, "") for t in tokens]
        matched = sum(t in texts for t in tokens)
        if matched == 0:
            raise DataError(f"{name}: no item of the .inter files has a text ({len(texts)} texts"
                            f" read, keys e.g. {next(iter(texts), None)!r}, items e.g. "
                            f"{tokens[0] if tokens else None!r}); check the item file and "
                            f"{name}.item2index")
        logger.info("%s: %d of %d items got a text, %d did not", name, matched, len(tokens),
                    len(tokens) - matched)
        warn_missing_texts(item_texts_list, tokens, name)
    data = InteractionData(
        sequences=sequences, n_items=len(tokens), item_ids=[None, *tokens],
        item_texts=item_texts_list, name=name, split=split,
    )
    logger.info("%s: given split with %d train, %d valid, %d test rows", name, len(train),
                len(valid), len(test))
    return data


__all__ = [
    "atomic_rows",
    "check_columns",
    "csv_rows",
    "interaction_rows",
    "item_texts",
    "load_atomic",
    "text_builder",
]
