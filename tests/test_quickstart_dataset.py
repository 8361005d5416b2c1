"""The quickstart's --dataset shortcut and --text-len option (parsing and data loading only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_runs import tiny_encoder

import adarec.rec.text_length as text_length
from adarec.errors import DataError, DataFileNotFoundError
from adarec.rec.datasets import SHARED_DATASETS, load_shared

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def quickstart(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    import quickstart

    return quickstart


def _tiny_lastfm(root: Path) -> None:
    folder = root / "lastfm"
    folder.mkdir(parents=True)
    (folder / "interactions.csv").write_text("user,item,timestamp\n" + "".join(
        f"{u},{(u + i) % 9},{i}\n" for u in range(4) for i in range(6)))
    (folder / "items.csv").write_text("item,text\n" + "".join(f"{i},Artist {i}\n"
                                                              for i in range(9)))


def test_every_shared_data_set_is_in_the_table(quickstart) -> None:  # type: ignore[no-untyped-def]
    assert set(quickstart.DATASETS) == {"ml-100k", "ml-latest-small", "ml-1m-subset",
                                        "amazon-games", "lastfm"} == set(SHARED_DATASETS)


def test_load_shared_reads_what_the_quickstart_reads(  # type: ignore[no-untyped-def]
        quickstart, tmp_path: Path) -> None:
    _tiny_lastfm(tmp_path)
    ours = load_shared("lastfm", tmp_path, min_user_interactions=3)
    theirs, _ = quickstart.load_data(quickstart.parse_args(
        ["--dataset", "lastfm", "--data-root", str(tmp_path), "--min-user-interactions", "3"]))
    assert (ours.name, ours.item_ids, ours.item_texts) == (
        theirs.name, theirs.item_ids, theirs.item_texts)
    assert ours.sequences == theirs.sequences
    with pytest.raises(DataError, match="unknown data set 'lastfm2'"):
        load_shared("lastfm2", tmp_path)
    with pytest.raises(DataFileNotFoundError, match="ADAREC_DATA"):
        load_shared("amazon-games", tmp_path)


def test_dataset_reads_through_the_csv_options(quickstart, tmp_path: Path,  # type: ignore[no-untyped-def]
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    _tiny_lastfm(tmp_path)
    monkeypatch.setenv("ADAREC_DATA", str(tmp_path))
    args = quickstart.parse_args(["--dataset", "lastfm", "--min-user-interactions", "3"])
    assert args.interactions == str(tmp_path / "lastfm" / "interactions.csv")
    assert (args.user_col, args.item_col, args.text) == ("user", "item", "text")
    data, split = quickstart.load_data(args)
    assert len(split.users) == 4
    assert (data.name, data.n_users, data.n_items) == ("lastfm", 4, 9)
    assert data.item_texts[1].startswith("Artist ")
    # an option given on the command line wins over the table
    args = quickstart.parse_args(["--dataset", "lastfm", "--text", "Artist: {text}"])
    assert (args.text, args.item_col) == ("Artist: {text}", "item")
    # --data-root wins over the environment
    other = tmp_path / "other"
    _tiny_lastfm(other)
    args = quickstart.parse_args(["--dataset", "lastfm", "--data-root", str(other)])
    assert args.items == str(other / "lastfm" / "items.csv")


def test_absent_dataset_names_the_path_and_how_to_point_there(  # type: ignore[no-untyped-def]
        quickstart, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        quickstart.parse_args(["--dataset", "amazon-games", "--data-root", str(tmp_path)])
    err = capsys.readouterr().err
    assert str(tmp_path / "amazon-games" / "interactions.csv") in err
    assert "--data-root" in err and "ADAREC_DATA" in err


@pytest.mark.parametrize("argv", [["--dataset", "lastfm", "--atomic", "x"],
                                  ["--data-root", "x"], ["--text-len", "0"],
                                  ["--text-len", "long"]])
def test_conflicting_or_bad_options_are_refused(quickstart, argv: list[str]) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit):
        quickstart.parse_args(argv)


def test_text_len_takes_auto_or_a_number(quickstart) -> None:  # type: ignore[no-untyped-def]
    assert quickstart.parse_args(["--text-len", "auto"]).text_len == "auto"
    assert quickstart.parse_args(["--text-len", "12"]).text_len == 12
    assert quickstart.parse_args([]).text_len == 30


def test_text_len_auto_trains_with_the_chosen_length(  # type: ignore[no-untyped-def]
        quickstart, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    encoder = tiny_encoder(tmp_path)
    _tiny_lastfm(tmp_path)
    items = tmp_path / "lastfm" / "items.csv"  # two artists named alike: identical at any length
    items.write_text(items.read_text().replace("Artist 8", "Artist 7"))
    out = tmp_path / "run"
    warned: list[text_length.TextLength] = []  # Python shows a warning once per place: record
    monkeypatch.setattr(text_length, "warn_identical", lambda found, name="": warned.append(found))
    quickstart.main(["--dataset", "lastfm", "--data-root", str(tmp_path), "--encoder",
                     str(encoder), "--text-len", "auto", "--method", "frozen",
                     "--id-fusion", "none", "--min-user-interactions", "3", "--epochs", "1",
                     "--threads", "1",
                     "--dim", "16", "--max-len", "4", "--precision", "fp32", "--out", str(out)])
    assert [(f.length, f.identical, f.largest_group) for f in warned] == [(8, 2, 2)]
    results = json.loads((out / "results.json").read_text())
    # "Artist 7" is [CLS] artist 7 [SEP]: 4 tokens, below the search's minimum of 8
    assert results["text_len"] == 8 and results["args"]["text_len"] == "auto"


def test_cold_items_train_without_them_and_report_against_chance(  # type: ignore[no-untyped-def]
        quickstart, tmp_path: Path) -> None:
    encoder = tiny_encoder(tmp_path)
    folder = tmp_path / "lastfm"
    folder.mkdir()
    (folder / "interactions.csv").write_text("user,item,timestamp\n" + "".join(
        f"{u},{(u * 3 + i) % 20},{i}\n" for u in range(30) for i in range(7)))
    (folder / "items.csv").write_text("item,text\n" + "".join(f"{i},Artist number {i}\n"
                                                              for i in range(20)))
    out = tmp_path / "run"
    quickstart.main(["--dataset", "lastfm", "--data-root", str(tmp_path), "--encoder",
                     str(encoder), "--cold-items", "0.2", "--min-user-interactions", "3",
                     "--epochs", "1", "--threads", "1", "--dim", "16", "--max-len", "4",
                     "--precision", "fp32", "--out", str(out)])
    results = json.loads((out / "results.json").read_text())
    cold = results["cold"]
    assert cold["items"] == 4 and cold["chance_hr@10"] == pytest.approx(10 / 20)
    assert cold["test_queries"] > 0 and "hr@10" in cold["warm_test"]
    # the shipped default keeps its ID fusion; held-out items are scored by their text alone
    assert results["args"]["id_fusion"] == "add"
    with pytest.raises(SystemExit):
        quickstart.parse_args(["--cold-items", "0.2", "--method", "auto"])
    with pytest.raises(SystemExit):
        quickstart.parse_args(["--cold-items", "1.5"])
