"""The batch job (`recommend_all`): the merged file of 2 gloo ranks is byte for byte one
process's, its rows are `recommend`'s, a run killed with SIGKILL resumes to the same file
without recomputing finished parts, and a folder of another job is refused.

The file is also the worker script: ``script OUT`` runs the job into ``OUT/recs`` (as rank
``RANK`` under a process group when ``WORLD_SIZE`` is set); with ``ADAREC_SLOW`` every
`recommend` batch sleeps that many seconds and logs its first user to ``OUT/calls.txt``.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from ddp_launch import TESTS, launch_ranks
from tiny_transrec import N_ITEMS, text_model

from adarec.errors import ConfigError
from adarec.rec import recommend_all
from adarec.rec.transrec import TransRec

WORLD, TIMEOUT_S, K, SHARD, BATCH, N_USERS = 2, 120, 3, 4, 3, 30


def model_and_users() -> tuple[TransRec, dict[str, list[str]]]:
    model = text_model(seed=5)
    model.eval()
    model.set_item_map([None, *[f"i{n}" for n in range(1, N_ITEMS + 1)]])
    g = torch.Generator().manual_seed(7)
    users = {}
    for u in range(N_USERS):
        length = int(torch.randint(1, 7, (1,), generator=g))
        seq = torch.randint(1, N_ITEMS + 1, (length,), generator=g).tolist()
        users[f"u{u:02d}"] = [f"i{i}" for i in seq]
    return model, users


def worker(out: Path) -> None:
    from adarec import distributed as D

    torch.set_num_threads(1)
    D.setup(timeout_s=60)
    model, users = model_and_users()
    slow = float(os.environ.get("ADAREC_SLOW", 0))
    real = model.recommend

    def logged(histories: Any, **kw: Any) -> Any:
        with open(out / "calls.txt", "a") as f:
            f.write(f"{histories[0]}\n")
        time.sleep(slow)
        return real(histories, **kw)

    model.recommend = logged  # type: ignore[method-assign]
    path = recommend_all(model, users, out / "recs", k=K, shard_size=SHARD, batch_size=BATCH,
                         progress=False)
    torch.save({"path": str(path)}, out / f"rank{D.get_rank()}.pt")
    D.cleanup()


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, users = model_and_users()
    out = tmp_path_factory.mktemp("one") / "recs"
    return recommend_all(model, users, out, k=K, shard_size=SHARD, batch_size=BATCH)


def test_rows_are_recommends_for_every_user(one_process: Path) -> None:
    model, users = model_and_users()
    rec = model.recommend(list(users.values()), k=K)
    with open(one_process, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["user", "rank", "item", "score"]
    expected = [[u, str(r), item, f"{s:.9g}"] for u, items, scores in zip(
        users, rec.items, rec.scores.tolist(), strict=True)
        for r, (item, s) in enumerate(zip(items, scores, strict=False), 1)]
    assert rows[1:] == expected and len(expected) == N_USERS * K
    assert sorted(p.name for p in one_process.parent.glob("part-*")) == [
        f"part-{j:05d}.csv" for j in range(8)]  # 30 users in shards of 4


def test_two_ranks_write_the_same_file(one_process: Path, tmp_path: Path) -> None:
    results = launch_ranks(__file__, tmp_path, WORLD, TIMEOUT_S)
    assert results[0]["path"] == results[1]["path"]
    assert Path(results[0]["path"]).read_bytes() == one_process.read_bytes()


def _start(out: Path, slow: float) -> subprocess.Popen[bytes]:
    path = os.pathsep.join([str(TESTS.parent), str(TESTS), os.environ.get("PYTHONPATH", "")])
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK")}
    return subprocess.Popen([sys.executable, __file__, str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT,
                            env={**env, "ADAREC_SLOW": str(slow), "OMP_NUM_THREADS": "1",
                                 "PYTHONPATH": path})


def test_killed_mid_run_resumes_to_the_same_file(one_process: Path, tmp_path: Path) -> None:
    proc = _start(tmp_path, slow=0.4)
    recs = tmp_path / "recs"
    deadline = time.monotonic() + TIMEOUT_S
    while not (recs / "part-00002.csv").is_file():  # 3 parts done, the 4th being written
        assert proc.poll() is None and time.monotonic() < deadline, "the job ended early"
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (recs / "recommendations.csv").exists()
    done = sorted(p.name for p in recs.glob("part-*.csv"))
    assert 3 <= len(done) < 8
    first = (tmp_path / "calls.txt").read_text().splitlines()
    proc = _start(tmp_path, slow=0.0)
    assert proc.wait(timeout=TIMEOUT_S) == 0
    assert (recs / "recommendations.csv").read_bytes() == one_process.read_bytes()
    assert not list(recs.glob(".*.tmp-*"))
    calls = (tmp_path / "calls.txt").read_text().splitlines()[len(first):]
    redone = 8 - len(done)  # each unfinished part: 2 batches (4 users, batches of 3)
    assert len(calls) == 2 * redone - (1 if "part-00007.csv" not in done else 0)


def test_a_folder_of_another_job_is_refused(one_process: Path, tmp_path: Path) -> None:
    model, users = model_and_users()
    out = tmp_path / "recs"
    recommend_all(model, users, out, k=K, shard_size=SHARD)
    with pytest.raises(ConfigError, match=r"another job \(\['k'\] differ\)"):
        recommend_all(model, users, out, k=K + 1, shard_size=SHARD)
    with torch.no_grad():
        model.dtl[0].bias += 0.1  # retrained: yesterday's parts must not be merged
    with pytest.raises(ConfigError, match=r"\['model'\] differ"):
        recommend_all(model, users, out, k=K, shard_size=SHARD)
    path = recommend_all(model, users, out, k=K, shard_size=SHARD, overwrite=True)
    assert path.read_bytes() != one_process.read_bytes()


def test_bad_arguments_are_named(tmp_path: Path) -> None:
    model, users = model_and_users()
    with pytest.raises(ConfigError, match="k, shard_size and batch_size"):
        recommend_all(model, users, tmp_path, k=0)
    with pytest.raises(ConfigError, match="format='json'"):
        recommend_all(model, users, tmp_path, format="json")
    with pytest.raises(ConfigError, match="no users"):
        recommend_all(model, {}, tmp_path)


def test_the_example_job_on_a_csv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """examples/recommend_all.py on a saved model and a ratings CSV, with the item table built
    through the sharded path (one rank), gives `recommend`'s rows."""
    from adarec.rec import InteractionData

    ratings = tmp_path / "ratings.csv"
    ratings.write_text("userId,movieId,timestamp\n" + "".join(
        f"{u},{(u * 5 + i) % N_ITEMS + 1},{100 + i}\n" for u in range(1, 9) for i in range(6)))
    data = InteractionData.from_csv(ratings, "userId", "movieId", "timestamp")
    assert data.n_items == N_ITEMS
    model = text_model(seed=5)
    model.set_item_map(data.item_ids)
    model.save_pretrained(tmp_path / "model", include_base=True)
    monkeypatch.syspath_prepend(str(TESTS.parent / "examples"))
    import recommend_all as example

    path = example.main(["--model", str(tmp_path / "model"), "--out", str(tmp_path / "job"),
                         "--k", "2", "--tables", str(tmp_path / "tables"), "--interactions",
                         str(ratings), "--user-col", "userId", "--item-col", "movieId",
                         "--threads", "1"])
    assert (tmp_path / "tables" / "item_table.json").is_file()
    rec = model.recommend([[data.item_ids[i] for i in s] for s in data.sequences.values()], k=2)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))[1:]
    assert rows == [[str(u), str(r), str(item), f"{s:.9g}"] for u, items, scores in zip(
        data.sequences, rec.items, rec.scores.tolist(), strict=True)
        for r, (item, s) in enumerate(zip(items, scores, strict=False), 1)]


def test_parquet_holds_the_csv_rows(one_process: Path, tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    model, users = model_and_users()
    path = recommend_all(model, users, tmp_path, k=K, shard_size=SHARD, format="parquet")
    table = pq.read_table(path).to_pylist()
    with open(one_process, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["user"], r["rank"], r["item"]) for r in table] == [
        (r["user"], int(r["rank"]), r["item"]) for r in rows]
    assert [r["score"] for r in table] == pytest.approx([float(r["score"]) for r in rows])


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
