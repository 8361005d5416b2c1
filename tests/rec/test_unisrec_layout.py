"""UniSRec's published layout: pre-split .inter files over remapped indices, NAME.text keyed by
the original token, NAME.item2index between them, no NAME.item."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adarec.errors import DataError
from adarec.rec import load_atomic


def _write(root: Path, tokens: list[str], with_map: bool = True) -> None:
    """Item index i (1-based, as the .inter files use) is original token tokens[i-1]."""
    root.mkdir(parents=True, exist_ok=True)
    n = len(tokens)
    head = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
    for part, (h, t) in {"train": ([1], 2), "valid": ([1, 2], 3 % n + 1),
                         "test": ([1, 2, 3 % n + 1], n)}.items():
        rows = [f"u{u}\t{' '.join(str((x + u) % n + 1) for x in h)}\t{(t + u) % n + 1}\n"
                for u in range(3)]
        (root / f"S.{part}.inter").write_text(head + "".join(rows[::-1] if part == "test"
                                                               else rows))
    (root / "S.text").write_text("item_id:token\ttext:token_seq\n"
                                 + "".join(f"{t}\ttext of {t}\n" for t in reversed(tokens)))
    if with_map:
        (root / "S.item2index").write_text("".join(f"{t}\t{i}\n"
                                                   for i, t in enumerate(tokens, 1)))


def _check(data, tokens: list[str]) -> None:  # type: ignore[no-untyped-def]
    """Raw ids are the original tokens, each with its own text."""
    assert set(data.item_ids[1:]) <= set(tokens)
    for j, token in enumerate(data.item_ids[1:], 1):
        assert data.item_texts[j] == f"text of {token}"


def test_numeric_tokens_take_their_own_text(tmp_path: Path) -> None:
    tokens = ["3", "1", "2", "4"]  # index 1 is the item whose original token is "3"
    _write(tmp_path, tokens)
    _check(load_atomic(tmp_path), tokens)
    _check(load_atomic(tmp_path, item_file="S.text"), tokens)


def test_no_text_matched_refused(tmp_path: Path) -> None:
    _write(tmp_path, ["a", "b", "c", "d"], with_map=False)
    with pytest.raises(DataError, match=r"no item of the \.inter files has a text"):
        load_atomic(tmp_path)


TOKEN = st.one_of(st.integers(1, 99).map(str), st.from_regex(r"[A-Z][0-9]{3}", fullmatch=True))


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(TOKEN, min_size=4, max_size=8, unique=True))
def test_any_tokens_any_order(tmp_path_factory: pytest.TempPathFactory, tokens: list[str]) -> None:
    root = tmp_path_factory.mktemp("u")
    _write(root, tokens)
    _check(load_atomic(root), tokens)


def test_user2index_gives_users_their_original_tokens(tmp_path: Path) -> None:
    tokens = ["3", "1", "2", "4"]
    _write(tmp_path, tokens)
    (tmp_path / "S.user2index").write_text("".join(f"alice{u}\tu{u}\n" for u in range(3))
                                           .replace("\tu", "\t"))
    for part in ("train", "valid", "test"):  # user columns as indices, as UniSRec writes them
        file = tmp_path / f"S.{part}.inter"
        file.write_text(file.read_text().replace("\nu", "\n"))
    data = load_atomic(tmp_path)
    assert sorted(data.split.users) == ["alice0", "alice1", "alice2"]
    assert sorted(data.split.test_users) == ["alice0", "alice1", "alice2"]
    _check(data, tokens)


def test_an_index_missing_from_item2index_is_refused(tmp_path: Path) -> None:
    _write(tmp_path, ["a", "b", "c", "d"])
    (tmp_path / "S.item2index").write_text("a\t1\nb\t2\n")
    with pytest.raises(DataError, match=r"not in S\.item2index"):
        load_atomic(tmp_path)
