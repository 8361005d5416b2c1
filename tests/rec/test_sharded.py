"""Sharded builds: the hidden-state cache and the item table built by two gloo ranks are bitwise
the tables one process builds, a later process loads them, and a stale, partial, truncated or
edited shard set is refused.

The file is also the worker script (started twice, ``RANK`` 0 and 1, as torchrun would).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from ddp_launch import launch_ranks
from tiny_transrec import text_model

import adarec
from adarec.errors import CheckpointError, ConfigError
from adarec.rec import shard_files
from adarec.rec.sharded import (
    build_item_table,
    build_state_cache,
    load_item_table,
    load_state_cache,
)
from adarec.rec.transrec import TransRec

WORLD, TIMEOUT_S, BATCH = 2, 120, 4  # 13 rows: item-table chunks of 4 (4 chunks), states of 5


def side_model(tokens: bool = False) -> TransRec:
    """Pooled states ``[13, S, H]``, or token states ``[13, 8, S, H]`` (items of 2..8 tokens, so
    chunks of different widths leave different tails zero)."""
    model = text_model(seed=3)
    extra = {"side_states": "tokens", "side_heads": 2} if tokens else {}
    model.inject_adapters(item=adarec.AdapterSpec.preset("side", bottleneck=8, **extra))
    model.eval()
    return model


def worker(out: Path) -> None:
    from adarec import distributed as D

    torch.set_num_threads(1)
    D.setup(timeout_s=60)
    saved = {}
    for tokens in (False, True):
        model = side_model(tokens)
        folder = out / ("tables-tokens" if tokens else "tables")
        items = build_item_table(model, folder, batch_size=BATCH, progress=False)
        states = model.item_encoder._state_cache
        assert states is not None
        saved[tokens] = {"items": items.clone(), "states": states.table.clone(),
                         "served": model.item_table(BATCH).data_ptr() == items.data_ptr()}
    torch.save(saved, out / f"rank{D.get_rank()}.pt")
    D.cleanup()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    out = tmp_path_factory.mktemp("sharded")
    return out, launch_ranks(__file__, out, WORLD, TIMEOUT_S)


def one_process(tokens: bool) -> dict[str, torch.Tensor]:
    """The one-process build: `item_table` (which builds the hidden-state cache first)."""
    model = side_model(tokens)
    items = model.item_table(BATCH).clone()
    cache = model.item_encoder._state_cache
    assert cache is not None
    return {"items": items, "states": cache.table.clone()}


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    return one_process(tokens=False)


def test_two_ranks_build_bitwise_what_one_process_builds(
        ranks: tuple[Path, list[dict[str, Any]]], reference: dict[str, torch.Tensor]) -> None:
    out, results = ranks
    manifest = json.loads((out / "tables" / "item_table.json").read_text())
    assert [s["chunks"] for s in manifest["shards"]] == [[0, 2], [2, 4]]
    states = json.loads((out / "tables" / "hidden_states.json").read_text())
    assert [s["chunks"] for s in states["shards"]] == [[0, 1], [1, 3]]  # 13 rows in chunks of 5
    tokens = one_process(tokens=True)
    assert tokens["states"].dim() == 4 and reference["states"].dim() == 3
    for res in results:
        for ref, got in ((reference, res[False]), (tokens, res[True])):
            assert got["served"]  # recommend serves from the merged table
            assert got["states"].dtype == torch.float32 and got["items"].dtype == torch.float32
            assert torch.equal(got["states"], ref["states"])
            assert torch.equal(got["items"], ref["items"])


def test_a_later_process_loads_the_shards_of_the_same_state(
        ranks: tuple[Path, list[dict[str, Any]]], reference: dict[str, torch.Tensor]) -> None:
    out, _ = ranks
    model = side_model()  # a new process's model, same weights: the same fingerprint
    cache = load_state_cache(model.item_encoder, out / "tables")
    assert cache is not None and torch.equal(cache.table, reference["states"])
    assert torch.equal(load_item_table(model, out / "tables"), reference["items"])
    assert model.item_encoder._state_cache is cache
    assert torch.equal(model.item_table(BATCH), reference["items"])


def test_shards_of_another_model_state_are_refused(
        ranks: tuple[Path, list[dict[str, Any]]]) -> None:
    out, _ = ranks
    model = side_model()
    with torch.no_grad():
        model.dtl[0].weight[0, 0] += 1.0  # the item tower changed: its table is stale
    with pytest.raises(CheckpointError, match="another model state"):
        load_item_table(model, out / "tables")
    assert load_state_cache(model.item_encoder, out / "tables") is not None  # states: unchanged
    encoder = model.item_encoder
    with torch.no_grad():
        next(encoder.model.parameters())[0, 0] += 1.0  # the backbone changed: states stale too
    with pytest.raises(CheckpointError, match="another model state"):
        load_state_cache(encoder, out / "tables")


@pytest.fixture
def copy(ranks: tuple[Path, list[dict[str, Any]]], tmp_path: Path) -> Path:
    return Path(shutil.copytree(ranks[0] / "tables", tmp_path / "tables"))


def test_a_truncated_shard_is_refused(copy: Path) -> None:
    shard = copy / shard_files.shard_name("item_table", 1, WORLD)
    data = shard.read_bytes()
    shard.write_bytes(data[:-4])
    with pytest.raises(CheckpointError, match="truncated"):
        load_item_table(side_model(), copy)


def test_an_edited_shard_is_refused(copy: Path) -> None:
    shard = copy / shard_files.shard_name("hidden_states", 0, WORLD)
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0x40  # one bit of one state
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="edited"):
        load_state_cache(side_model().item_encoder, copy)


def test_a_missing_shard_or_manifest_is_refused(copy: Path) -> None:
    (copy / shard_files.shard_name("item_table", 0, WORLD)).unlink()
    with pytest.raises(CheckpointError, match="partial"):
        load_item_table(side_model(), copy)
    (copy / "hidden_states.json").unlink()
    with pytest.raises(CheckpointError, match="never"):
        load_state_cache(side_model().item_encoder, copy)


def test_a_manifest_that_skips_chunks_is_refused(copy: Path) -> None:
    file = copy / "item_table.json"
    manifest = json.loads(file.read_text())
    manifest["shards"] = manifest["shards"][1:]
    file.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="do not cover"):
        load_item_table(side_model(), copy)


def test_one_process_build_resumes_and_redoes_a_damaged_shard(
        tmp_path: Path, reference: dict[str, torch.Tensor]) -> None:
    model = side_model()
    table = build_item_table(model, tmp_path, batch_size=BATCH, progress=False)
    assert torch.equal(table, reference["items"])  # world size 1: one shard, same table
    shard = tmp_path / shard_files.shard_name("item_table", 0, 1)
    first = shard.stat().st_mtime_ns
    calls: list[int] = []
    fresh = side_model()
    real = fresh.dtl.forward

    def counted(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.size(0))
        return real(x)

    fresh.dtl.forward = counted  # type: ignore[method-assign]
    assert torch.equal(build_item_table(fresh, tmp_path, batch_size=BATCH), table)
    assert shard.stat().st_mtime_ns == first and not calls  # kept, nothing recomputed
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1
    shard.write_bytes(bytes(data))
    assert torch.equal(build_item_table(fresh, tmp_path, batch_size=BATCH), table)
    assert len(calls) == 4  # the damaged shard was computed again, all 4 chunks


def test_more_ranks_than_chunks_leave_empty_shards(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """5 ranks, 4 chunks: one rank writes an empty shard and the table is still whole (the ranks
    are played one after another in this process, rank 0 last: it writes the manifest)."""
    from adarec import distributed as D

    model = text_model()
    reference = model.item_table(BATCH).clone()
    monkeypatch.setattr(D, "get_world_size", lambda: 5)
    for rank in (1, 2, 3, 4, 0):
        monkeypatch.setattr(D, "get_rank", lambda rank=rank: rank)
        if rank:
            with pytest.raises(CheckpointError, match="never"):  # no manifest before rank 0's
                build_item_table(model, tmp_path, batch_size=BATCH)
        else:
            assert torch.equal(build_item_table(model, tmp_path, batch_size=BATCH), reference)
    manifest = json.loads((tmp_path / "item_table.json").read_text())
    assert [s["rows"] for s in manifest["shards"]] == [0, 4, 4, 4, 1]


def test_a_state_cache_needs_a_side_network(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no hidden-state cache"):
        build_state_cache(object(), tmp_path)
    model = text_model()
    table = build_item_table(model, tmp_path, batch_size=BATCH)  # no side network: items only
    assert torch.equal(table, model.item_table(BATCH))
    assert not (tmp_path / "hidden_states.json").exists()


def test_fingerprint_follows_the_state() -> None:
    a, b = side_model(), side_model()
    fa = shard_files.state_fingerprint(a)
    assert fa == shard_files.state_fingerprint(b)  # same values, other objects
    with torch.no_grad():
        next(b.parameters()).view(-1)[0] += 1
    assert shard_files.state_fingerprint(b) != fa


def test_shard_range_tiles_the_units_in_order() -> None:
    from adarec.distributed import shard_range

    for n in range(9):
        for world in range(1, 5):
            parts = [shard_range(n, r, world) for r in range(world)]
            assert [i for p in parts for i in p] == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert shard_range(5) == range(5)  # no process group: the one rank takes all
    with pytest.raises(ValueError, match="rank 2 is not in a world of 2"):
        shard_range(5, 2, 2)


def test_atomic_file_leaves_the_old_file_or_the_new_one(tmp_path: Path) -> None:
    from adarec.folders import atomic_file, remove_temporaries

    target = tmp_path / "part.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old" and not list(tmp_path.glob(".*"))
    with atomic_file(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
    left = tmp_path / ".part.csv.tmp-0123456789ab"  # what a SIGKILL leaves
    left.write_text("half")
    assert remove_temporaries(tmp_path) == [left] and not left.exists()


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
