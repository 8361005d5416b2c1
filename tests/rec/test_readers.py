"""The user's own data: timestamps parsed or refused, CSV / DataFrame / RecBole atomic readers,
item texts (column, template, conflicts, missing), dropped-row counts and given splits."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from adarec.errors import AdarecError, DataError, DataFileNotFoundError
from adarec.rec import InteractionData, TextItemEncoder, TrainCollator, TrainDataset, leave_one_out
from adarec.rec.atomic import load_atomic


def _seq(data: InteractionData, user: object = "u") -> list[object]:
    return [data.item_ids[i] for i in data.sequences[user]]


# ----------------------------------------------------------------------- timestamps (issue 15)
def test_string_timestamps_sort_as_numbers_not_text() -> None:
    """Regression: "9" < "10" < "100" sorted as text gave c, a, b."""
    rows = [("u", "a", "100"), ("u", "b", "9"), ("u", "c", "10")]
    data = InteractionData.from_interactions(rows, min_user_interactions=1)
    assert _seq(data) == ["b", "c", "a"]


def test_iso_dates_sort_chronologically_and_mixed_kinds_are_refused() -> None:
    rows = [("u", "a", "2024-05-01T10:00:00"), ("u", "b", "2023-12-31"), ("u", "c", "2024-01-02")]
    assert _seq(InteractionData.from_interactions(rows, min_user_interactions=1)) == ["b", "c",
                                                                                        "a"]
    with pytest.raises(DataError, match=r"mix numbers .* and dates"):
        InteractionData.from_interactions([("u", "a", "5"), ("u", "b", "2024-01-01")], None, 1)


@pytest.mark.parametrize("bad", [float("nan"), None, "", "  ", "yesterday", True, [1],
                                 "inf", math.inf])
def test_missing_or_unparsable_timestamps_are_refused(bad: object) -> None:
    """Regression: a NaN timestamp silently scrambled the order."""
    rows = [("u", "a", 3.0), ("u", "b", bad), ("u", "c", 1.0)]
    with pytest.raises(DataError, match="row 2"):
        InteractionData.from_interactions(rows, min_user_interactions=1)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=30, unique=True))
def test_numeric_strings_order_like_numbers(times: list[int]) -> None:
    rows = [("u", f"i{t}", str(t)) for t in times]
    data = InteractionData.from_interactions(rows, min_user_interactions=1)
    assert _seq(data) == [f"i{t}" for t in sorted(times)]


def test_pairs_keep_their_order_and_dropped_rows_are_counted() -> None:
    rows = [("u", "b"), ("u", "a"), (None, "x"), ("v", "a"), ("u", float("nan"))]
    data = InteractionData.from_interactions(rows, min_user_interactions=2)
    assert _seq(data) == ["b", "a"]
    assert data.dropped == {"rows without a user or item id": 2,
                            "rows of users with < 2 interactions": 1,
                            "users with < 2 interactions": 1}
    with pytest.raises(DataError, match="mix"):
        InteractionData.from_interactions([("u", "a"), ("u", "b", 1)], None, 1)


def test_items_without_text_are_warned_with_a_count() -> None:
    """Regression: items without text silently got ''."""
    rows = [("u", "a", 1), ("u", "b", 2), ("u", "c", 3)]
    with pytest.warns(UserWarning, match="2 of 3 items have no text"):
        data = InteractionData.from_interactions(rows, {"a": "A", "b": None}, 1)
    assert data.item_texts == ["", "A", "", ""]


def test_text_encoder_refuses_a_table_without_the_padding_row() -> None:
    from tiny_transrec import tiny_bert

    class Tok:
        def __call__(self, texts, **kw):
            n = kw["max_length"]
            ids = torch.arange(1, len(texts) + 1).unsqueeze(1).expand(-1, n)  # distinct items
            return {"input_ids": ids.contiguous(),
                    "attention_mask": torch.ones(len(texts), n, dtype=torch.long)}

    with pytest.raises(DataError, match="from_item_texts"):
        TextItemEncoder.from_texts(tiny_bert(), Tok(), ["Toy Story", "Heat"])
    enc = TextItemEncoder.from_item_texts(tiny_bert(), Tok(), ["Toy Story", "Heat"], max_length=4)
    assert enc.n_items == 2


# ------------------------------------------------------------------------------------ CSV
def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_with_items_file_and_template(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                          ) -> None:
    inter = _write(tmp_path / "ratings.csv",
                   "user,movie,ts\n1,10,100\n1,20,9\n1,30,10\n2,10,5\n2,20,6\n3,30,1\n")
    items = _write(tmp_path / "movies.csv",
                   'id,title,year\n10,Heat,1995\n20,"Toy Story, the",\n30,Up,2009\n10,Heat,1995\n')
    caplog.set_level("INFO", logger="adarec")
    data = InteractionData.from_csv(inter, "user", "movie", "ts", items=items, item_key="id",
                                    text="{title} ({year})", min_user_interactions=2)
    assert data.name == "ratings" and list(data.sequences) == ["1", "2"]
    assert _seq(data, "1") == ["20", "30", "10"]
    assert dict(zip(data.item_ids[1:], data.item_texts[1:], strict=True)) == {
        "10": "Heat (1995)", "20": "Toy Story, the ()", "30": "Up (2009)"}
    assert data.dropped["rows of users with < 2 interactions"] == 1
    assert "dropped 1 rows of users with < 2 interactions" in caplog.text


def test_csv_text_column_in_the_interactions_and_no_time(tmp_path: Path) -> None:
    inter = _write(tmp_path / "log.csv", "u;i;title\na;x;X film\na;y;Y film\na;x;X film\n")
    data = InteractionData.from_csv(inter, "u", "i", None, text="title", delimiter=";",
                                    min_user_interactions=1, name="log")
    assert _seq(data, "a") == ["x", "y", "x"] and data.item_texts == ["", "X film", "Y film"]


def test_csv_errors_name_the_problem(tmp_path: Path) -> None:
    good = "user,item,time\n1,a,1\n"
    with pytest.raises(DataError, match=r"missing column\(s\) \['time'\]; found \['user', 'item'"):
        InteractionData.from_csv(_write(tmp_path / "a.csv", "user,item\n1,a\n"), "user", "item",
                                 "time")
    with pytest.raises(DataError, match=r"b.csv:3: cannot read timestamp 'soon'"):
        InteractionData.from_csv(_write(tmp_path / "b.csv", good + "1,b,soon\n"), "user", "item",
                                 "time", min_user_interactions=1)
    with pytest.raises(DataError, match=r"c.csv:3: missing timestamp"):
        InteractionData.from_csv(_write(tmp_path / "c.csv", good + "1,b,\n"), "user", "item",
                                 "time", min_user_interactions=1)
    with pytest.raises(DataError, match=r"d.csv:3: 4 fields, the header has 3"):
        InteractionData.from_csv(_write(tmp_path / "d.csv", good + "1,b,2,9\n"), "user", "item",
                                 "time", min_user_interactions=1)
    items = _write(tmp_path / "items.csv", "item,title\na,Alpha\nb,Beta\na,Other\n")
    with pytest.raises(DataError, match=r"item 'a': 'Alpha' \(.*items.csv:2\) vs 'Other'"):
        InteractionData.from_csv(_write(tmp_path / "e.csv", good), "user", "item", "time",
                                 items=items, text="title", min_user_interactions=1)
    with pytest.raises(DataError, match=r"missing column\(s\) \['name'\]"):
        InteractionData.from_csv(tmp_path / "e.csv", "user", "item", "time", items=items,
                                 text="{name}", min_user_interactions=1)
    with pytest.raises(DataFileNotFoundError, match=r"nope\.csv not found"):
        InteractionData.from_csv(tmp_path / "nope.csv")
    with pytest.raises(FileNotFoundError):  # still a FileNotFoundError for older callers
        InteractionData.from_csv(tmp_path / "nope.csv")


# ------------------------------------------------------------------------------ DataFrame
def test_dataframe_loader() -> None:
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"user": [1, 1, 1, 2, 2], "item": [7, 8, 9, 7, 9],
                       "when": pd.to_datetime(["2024-03-01", "2024-01-01", "2024-02-01",
                                               "2024-01-05", "2024-01-04"])})
    items = pd.DataFrame({"item": [7, 8, 9], "title": ["Seven", "Eight", None],
                          "genre": ["drama", "comedy", "war"]})
    data = InteractionData.from_dataframe(df, "user", "item", "when", items=items,
                                          text="{title}. {genre}", min_user_interactions=2)
    assert _seq(data, 1) == [8, 9, 7] and _seq(data, 2) == [9, 7]  # ints stay ints
    assert dict(zip(data.item_ids[1:], data.item_texts[1:], strict=True))[9] == ". war"
    df.loc[3, "when"] = pd.NaT
    with pytest.raises(DataError, match="DataFrame row 3: missing timestamp"):
        InteractionData.from_dataframe(df, "user", "item", "when", min_user_interactions=1)
    with pytest.raises(DataError, match=r"missing column\(s\) \['time'\]"):
        InteractionData.from_dataframe(df, "user", "item", "time")
    with pytest.raises(DataError, match="expected a pandas DataFrame"):
        InteractionData.from_dataframe([(1, 2, 3)])
    numeric = pd.DataFrame({"user_id": ["a"] * 3, "item_id": ["x", "y", "z"],
                            "timestamp": [math.nan, 1.0, 2.0]})
    with pytest.raises(DataError, match="row 0: missing timestamp"):
        InteractionData.from_dataframe(numeric, min_user_interactions=1)


# ------------------------------------------------------------------------- RecBole atomic
def test_atomic_inter_and_item(tmp_path: Path) -> None:
    folder = tmp_path / "shop"
    folder.mkdir()
    _write(folder / "shop.inter", "user_id:token\titem_id:token\ttimestamp:float\n"
           "u1\ti1\t30\nu1\ti2\t10\nu1\ti3\t20\nu2\ti1\t1\n")
    _write(folder / "shop.item", 'item_id:token\ttitle:token_seq\tbrand:token\n'
           'i1\tRed "shoe"\tAcme\ni2\tBlue hat\tAcme\n')
    with pytest.warns(UserWarning, match="1 of 3 items have no text"):
        data = load_atomic(folder, min_user_interactions=3)
    assert data.name == "shop" and _seq(data, "u1") == ["i2", "i3", "i1"]
    assert data.item_texts[data.item_ids.index("i1")] == 'Red "shoe"'
    with pytest.warns(UserWarning):
        texts = load_atomic(folder, text="{title} by {brand}", min_user_interactions=3).item_texts
    assert texts == ["", 'Red "shoe" by Acme', "Blue hat by Acme", ""]
    assert leave_one_out(data).test == [([2, 3], 1)]


def test_atomic_presplit_is_kept_as_given(tmp_path: Path) -> None:
    """UniSRec's layout: the given split is used as is, not re-derived from sequences."""
    head = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
    _write(tmp_path / "Sci.train.inter", head + "0\t5 6\t7\n0\t5\t6\n1\t9\t5\n")
    _write(tmp_path / "Sci.valid.inter", head + "0\t5 6 7\t8\n1\t9 5\t6\n")
    _write(tmp_path / "Sci.test.inter", head + "0\t5 6 7 8\t9\n1\t9 5 6\t7\n")
    _write(tmp_path / "Sci.text", "item_id:token\ttext:token_seq\n5\tfive\n6\tsix\n7\tseven\n"
           "8\teight\n9\tnine\n")
    data = load_atomic(tmp_path, item_file="Sci.text")
    split = leave_one_out(data)
    assert split is data.split and split.given
    tok = data.item_ids
    assert [([tok[i] for i in h], tok[t]) for h, t in split.test] == [
        (["5", "6", "7", "8"], "9"), (["9", "5", "6"], "7")]
    assert [([tok[i] for i in h], tok[t]) for h, t in split.train_pairs or []] == [
        (["5", "6"], "7"), (["5"], "6"), (["9"], "5")]
    assert split.valid_users == ["0", "1"] and data.item_texts[tok.index("8")] == "eight"
    # each given training row is one example, its loss at the target only
    ds = TrainDataset.for_split(split, max_len=4)
    batch = TrainCollator(data.n_items, 4, 0)([ds[i] for i in range(len(ds))])
    assert len(ds) == 3 and batch["mask"].sum().item() == 3
    assert batch["target_ids"][0, -1].item() == tok.index("7")
    (tmp_path / "Sci.valid.inter").unlink()
    with pytest.raises(DataFileNotFoundError, match=r"Sci\.valid\.inter"):
        load_atomic(tmp_path, name="Sci")


def test_atomic_errors(tmp_path: Path) -> None:
    with pytest.raises(DataFileNotFoundError, match="data folder not found"):
        load_atomic(tmp_path / "none")
    _write(tmp_path / "a.inter", "user_id:token\titem_id:token\n")
    _write(tmp_path / "b.inter", "user_id:token\titem_id:token\n")
    with pytest.raises(DataError, match="several data sets"):
        load_atomic(tmp_path)
    _write(tmp_path / "a.inter", "user_id:token\titem:token\nu\ti\n")
    with pytest.raises(DataError, match=r"missing column\(s\) \['item_id'\]"):
        load_atomic(tmp_path, name="a")
    _write(tmp_path / "b.inter", "user_id:token\titem_id:token\ttimestamp:float\nu\ti\tx\n")
    with pytest.raises(DataError, match=r"b.inter:2: cannot read timestamp 'x'"):
        load_atomic(tmp_path, name="b", min_user_interactions=1)
    assert issubclass(DataError, AdarecError) and issubclass(DataError, ValueError)
