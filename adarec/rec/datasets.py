"""Loaders for the MovieLens data sets used in the examples, read in place (never copied).

Every rating counts as one implicit interaction (no rating threshold), as in the paper's
sequential setting. Item texts feed the pre-trained text encoder. Both go through the same
readers as the user's own data (`adarec.rec.readers`), so the same checks apply.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Sequence
from pathlib import Path

from adarec.errors import DataError, DataFileNotFoundError
from adarec.rec.atomic import load_atomic
from adarec.rec.data import InteractionData
from adarec.rec.readers import Row, atomic_rows, csv_rows, interaction_rows

_ML100K_HINT = (
    "install the data files with `pip install --no-deps recbole==1.2.1` "
    "or pass the folder that holds ml-100k.inter and ml-100k.item as `path`"
)


def _require_folder(folder: Path, hint: str = "") -> Path:
    if not folder.is_dir():
        raise DataFileNotFoundError(f"data folder not found: {folder}" + (f"; {hint}" if hint
                                                                          else ""))
    return folder


def _item_text(title: str, year: str, genres: Sequence[str]) -> str:
    """``"Title (year). Genres: a, b"``; the year or genre part is left out when unknown."""
    text = title.strip()
    if year.isdigit():
        text += f" ({year})"
    if genres:
        text += ". Genres: " + ", ".join(genres)
    return text


def load_movielens_latest_small(
    path: str | Path, min_user_interactions: int = 5
) -> InteractionData:
    """MovieLens ``ml-latest-small`` from ``ratings.csv`` and ``movies.csv``.

    Raw user and item ids are ints. Item text is the title, which already ends with the year,
    then ``". Genres: "`` and the ``|``-separated genres joined by ``", "``, e.g.
    ``"Toy Story (1995). Genres: Adventure, Animation, Children, Comedy, Fantasy"``; movies
    with ``(no genres listed)`` get the title only. Movies never rated are not indexed.
    """
    folder = _require_folder(Path(path))
    texts: dict[int, str] = {}
    for where, row in csv_rows(folder / "movies.csv", needed=("movieId", "title", "genres"))[1]:
        try:
            movie = int(row["movieId"])
        except (TypeError, ValueError):
            raise DataError(f"{where}: bad movieId {row['movieId']!r}") from None
        genres = [g for g in (row["genres"] or "").split("|") if g and g != "(no genres listed)"]
        texts[movie] = _item_text(row["title"] or "", "", genres)

    rows = csv_rows(folder / "ratings.csv", needed=("userId", "movieId", "timestamp"))[1]
    interactions = interaction_rows(_as_int_ids(rows), "userId", "movieId", "timestamp")
    return InteractionData.from_interactions(
        interactions, texts, min_user_interactions, name="ml-latest-small"
    )


def _as_int_ids(rows: Iterator[tuple[str, Row]]) -> Iterator[tuple[str, Row]]:
    for where, row in rows:
        try:
            yield where, {**row, "userId": int(row["userId"]), "movieId": int(row["movieId"])}
        except (TypeError, ValueError):
            raise DataError(f"{where}: bad row {row}") from None


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
    raise DataFileNotFoundError(f"RecBole's ml-100k example data was not found: {_ML100K_HINT}")


def load_movielens_100k(
    path: str | Path | None = None, min_user_interactions: int = 5
) -> InteractionData:
    """MovieLens-100K in RecBole's atomic format (``ml-100k.inter`` and ``ml-100k.item``).

    With ``path=None`` the copy bundled with the ``recbole`` package is used. Raw ids are the
    files' tokens (strings). Item text: ``"Title (year). Genres: a, b"``; the year is left
    out when it is not a number and the genre part when the class is ``unknown``.
    """
    folder = _recbole_ml100k() if path is None else _require_folder(Path(path), _ML100K_HINT)
    texts: dict[str, str] = {}
    needed = ("item_id", "movie_title", "release_year", "class")
    for _, row in atomic_rows(folder / "ml-100k.item", needed)[1]:
        genres = [g for g in row["class"].split() if g != "unknown"]
        texts[row["item_id"]] = _item_text(row["movie_title"], row["release_year"], genres)
    rows = atomic_rows(folder / "ml-100k.inter", ("user_id", "item_id", "timestamp"))[1]
    return InteractionData.from_interactions(
        interaction_rows(rows, "user_id", "item_id", "timestamp"), texts,
        min_user_interactions, name="ml-100k",
    )


__all__ = ["load_atomic", "load_movielens_100k", "load_movielens_latest_small"]
