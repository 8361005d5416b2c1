"""RecBole atomic folders, one data set per ``NAME``: ``NAME.inter`` (+ ``NAME.item``), or the
pre-split ``NAME.train/valid/test.inter`` of RecBole's ``benchmark_filename`` and UniSRec (with
``NAME.text``, ``NAME.item2index``, ``NAME.user2index``)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from adarec.errors import DataError, DataFileNotFoundError
from adarec.rec.data import InteractionData, LeaveOneOutSplit, warn_missing_texts
from adarec.rec.readers import (
    Row,
    atomic_rows,
    check_columns,
    interaction_rows,
    item_texts,
    require_file,
    text_builder,
)
from adarec.rec.timestamps import is_missing

logger = logging.getLogger(__name__)


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


__all__ = ["load_atomic"]
