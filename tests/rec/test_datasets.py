"""Tests for the MovieLens loaders on the real files (skipped when absent) and broken copies."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest

from adarec.rec.datasets import load_movielens_100k, load_movielens_latest_small

ROOT = Path(__file__).resolve().parents[2]
ML_LATEST_SMALL = ROOT.parent / "shared" / "data" / "ml-latest-small"
_spec = importlib.util.find_spec("recbole")
ML_100K = (
    Path(next(iter(_spec.submodule_search_locations))) / "dataset_example" / "ml-100k"
    if _spec and _spec.submodule_search_locations
    else None
)

needs_latest_small = pytest.mark.skipif(
    not ML_LATEST_SMALL.is_dir(), reason=f"ml-latest-small not found at {ML_LATEST_SMALL}"
)
needs_100k = pytest.mark.skipif(
    ML_100K is None or not ML_100K.is_dir(),
    reason="RecBole's ml-100k data not installed (pip install --no-deps recbole==1.2.1)",
)


@needs_latest_small
def test_ml_latest_small() -> None:
    data = load_movielens_latest_small(ML_LATEST_SMALL)
    assert data.name == "ml-latest-small"
    assert data.n_users == 610
    assert data.n_items == 9724  # 9,742 movies, 18 of them never rated
    assert data.n_interactions == 100_836
    toy_story = data.item_ids.index(1)
    assert data.item_texts[toy_story] == (
        "Toy Story (1995). Genres: Adventure, Animation, Children, Comedy, Fantasy"
    )
    assert all(text for text in data.item_texts[1:])
    stamps: dict[tuple[int, int], float] = {}
    with (ML_LATEST_SMALL / "ratings.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            stamps[int(row["userId"]), int(row["movieId"])] = float(row["timestamp"])
    for user, seq in data.sequences.items():
        times = [stamps[user, data.item_ids[i]] for i in seq]
        assert times == sorted(times)


@needs_100k
def test_ml_100k_default_location_without_importing_recbole() -> None:
    import sys

    data = load_movielens_100k()
    assert "recbole" not in sys.modules
    assert data.name == "ml-100k"
    assert (data.n_users, data.n_items, data.n_interactions) == (943, 1682, 100_000)
    assert data.item_texts[data.item_ids.index("1")] == (
        "Toy Story (1995). Genres: Animation, Children's, Comedy"
    )
    assert data.item_texts[data.item_ids.index("267")] == "unkonwn"  # RecBole's own typo
    stamps = {}
    with (ML_100K / "ml-100k.inter").open() as handle:
        next(handle)
        for line in handle:
            user, item, _, stamp = line.rstrip("\n").split("\t")
            stamps[user, item] = float(stamp)
    for user, seq in data.sequences.items():
        times = [stamps[user, data.item_ids[i]] for i in seq]
        assert times == sorted(times)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_latest_small_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="data folder not found"):
        load_movielens_latest_small(tmp_path / "nope")
    _write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,5\n")
    with pytest.raises(FileNotFoundError, match=r"movies\.csv"):
        load_movielens_latest_small(tmp_path)
    _write(tmp_path / "movies.csv", "movieId,name,genres\n1,Toy Story (1995),Comedy\n")
    with pytest.raises(ValueError, match=r"movies\.csv: missing column\(s\) \['title'\]"):
        load_movielens_latest_small(tmp_path)
    _write(tmp_path / "movies.csv", 'movieId,title,genres\n1,"Heat, The (1995)",A|B\n')
    _write(tmp_path / "ratings.csv", "userId,movieId,rating\n1,1,4.0\n")
    with pytest.raises(ValueError, match=r"ratings\.csv: missing column\(s\) \['timestamp'\]"):
        load_movielens_latest_small(tmp_path)
    _write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,x\n")
    with pytest.raises(ValueError, match=r"ratings\.csv:2"):
        load_movielens_latest_small(tmp_path)
    _write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,5\n")
    data = load_movielens_latest_small(tmp_path, min_user_interactions=1)
    assert data.item_texts == ["", "Heat, The (1995). Genres: A, B"]


def test_ml_100k_errors_and_header_by_name(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="pip install --no-deps recbole"):
        load_movielens_100k(tmp_path / "nope")
    _write(tmp_path / "ml-100k.inter", "item_id:token\tuser_id:token\ttimestamp:float\n")
    with pytest.raises(FileNotFoundError, match=r"ml-100k\.item"):
        load_movielens_100k(tmp_path)
    _write(tmp_path / "ml-100k.item", "item_id:token\tmovie_title:token_seq\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['release_year', 'class'\]"):
        load_movielens_100k(tmp_path)
    # columns in another order than RecBole's, a quote in a title, unknown year/genre
    _write(
        tmp_path / "ml-100k.item",
        "class:token_seq\titem_id:token\trelease_year:token\tmovie_title:token_seq\n"
        'Drama Sci-Fi\tm1\t1999\t"Quoted" Film\nunknown\tm2\t\tNo Info\n',
    )
    _write(
        tmp_path / "ml-100k.inter",
        "item_id:token\tuser_id:token\ttimestamp:float\nm2\tu\t20\nm1\tu\t10\n",
    )
    data = load_movielens_100k(tmp_path, min_user_interactions=2)
    assert data.sequences == {"u": [2, 1]}
    assert data.item_ids == [None, "m2", "m1"]
    assert data.item_texts == ["", "No Info", '"Quoted" Film (1999). Genres: Drama, Sci-Fi']
