"""Loaders for the public data sets used in the examples, read in place (never copied).

Every rating counts as one implicit interaction (no rating threshold), as in the paper's
sequential setting. Item texts feed the pre-trained text encoder. Both go through the same
readers as the user's own data (`adarec.rec.readers`), so the same checks apply.
"""

from __future__ import annotations

import importlib.util
import os
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


# The shared data sets by name, each read through the CSV options a user's own data goes
# through (`InteractionData.from_csv`), with paths relative to a data root. ml-100k is RecBole's
# bundled copy (no folder needed).
SHARED_DATASETS: dict[str, dict[str, str]] = {
    "ml-100k": {},
    "ml-latest-small": dict(interactions="ml-latest-small/ratings.csv",
                            items="ml-latest-small/movies.csv", user_col="userId",
                            item_col="movieId", item_key="movieId",
                            text="{title}. Genres: {genres}"),
    "ml-1m-subset": dict(interactions="ml-1m-subset/interactions.csv",
                         items="ml-1m-subset/items.csv", user_col="user", item_col="item",
                         text="{title}. Genres: {genres}"),
    "amazon-games": dict(interactions="amazon-games/interactions.csv",
                         items="amazon-games/items.csv", user_col="user", item_col="item",
                         text="text"),
    "lastfm": dict(interactions="lastfm/interactions.csv", items="lastfm/items.csv",
                   user_col="user", item_col="item", text="text"),
}
DATA_ROOT_ENV = "ADAREC_DATA"
DEFAULT_DATA_ROOT = "../shared/data"


def data_root(given: str | Path | None = None) -> Path:
    """``given``, else ``$ADAREC_DATA``, else ``../shared/data`` (relative to the working
    folder): where the shared data sets' folders are looked for."""
    return Path(given or os.environ.get(DATA_ROOT_ENV) or DEFAULT_DATA_ROOT)


def shared_dataset_options(name: str, root: str | Path | None = None) -> dict[str, str]:
    """The CSV options that read the shared data set ``name`` (files resolved under
    `data_root`); a missing file is named with the folder it was looked for in."""
    if name not in SHARED_DATASETS:
        raise DataError(f"unknown data set {name!r}; known: {sorted(SHARED_DATASETS)}")
    options, folder = dict(SHARED_DATASETS[name]), data_root(root)
    for key in ("interactions", "items"):
        if key in options:
            path = folder / options[key]
            if not path.is_file():
                raise DataFileNotFoundError(
                    f"data set {name}: {path} not found; pass the data root (--data-root) or set "
                    f"{DATA_ROOT_ENV} to the folder that holds {options[key].split('/')[0]}/")
            options[key] = str(path)
    return options


def load_shared(name: str, root: str | Path | None = None,
                min_user_interactions: int = 5) -> InteractionData:
    """A shared data set by name, read as `examples/quickstart.py --dataset NAME` reads it."""
    options = shared_dataset_options(name, root)
    if "interactions" not in options:
        return load_movielens_100k(None, min_user_interactions)
    return InteractionData.from_csv(
        options["interactions"], options["user_col"], options["item_col"], "timestamp",
        items=options["items"], item_key=options.get("item_key"), text=options["text"],
        min_user_interactions=min_user_interactions, name=name)


__all__ = ["DATA_ROOT_ENV", "SHARED_DATASETS", "data_root", "load_atomic", "load_movielens_100k",
           "load_movielens_latest_small", "load_shared", "shared_dataset_options"]
