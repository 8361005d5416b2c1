"""Readers for the user's own data: CSV files, pandas DataFrames and RecBole atomic files.

Readers return plain rows and texts; `InteractionData.from_csv` / `from_dataframe` and
`adarec.rec.atomic.load_atomic` hand them to `InteractionData.from_interactions`, so one set of
rules (timestamp parsing, ordering, filtering, item numbering) holds for all formats. What a
reader adds: columns
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


Interactions = tuple[Iterator[tuple[Any, ...]], "dict[Any, str] | None"]


def csv_interactions(
    path: Path, user: str, item: str, time: str | None, items: str | Path | None,
    item_key: str | None, text: str | None, delimiter: str,
) -> Interactions:
    """``(user, item, time)`` rows and item texts of a CSV file (`InteractionData.from_csv`)."""
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
    return interaction_rows(rows, user, item, time), texts


# ------------------------------------------------------------------------------ DataFrame
def _frame_rows(df: Any, source: str) -> Iterator[tuple[str, Row]]:
    for i, row in enumerate(df.to_dict("records")):
        yield f"{source} row {i}", row


def dataframe_interactions(
    df: Any, user: str, item: str, time: str | None, items: Any, item_key: str | None,
    text: str | None,
) -> Interactions:
    """Rows and item texts of a pandas DataFrame (`InteractionData.from_dataframe`); pandas is
    never imported here (the frame brings it)."""
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
    return rows, texts


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


__all__ = [
    "atomic_rows",
    "check_columns",
    "csv_interactions",
    "csv_rows",
    "dataframe_interactions",
    "interaction_rows",
    "item_texts",
    "text_builder",
]
