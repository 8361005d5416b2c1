"""Loading loads what was saved, into what it was saved from (issue 15).

Regression cases (each passed silently, or failed with a raw error, before the fix): another
base with the same architecture but other weights, an edited spec in the JSON, two sets active
after a load, flags re-frozen by a load, a symlinked folder replaced by a plain one, concurrent
saves failing with a raw OSError and leaving ``.old-*`` folders, a reader racing a writer getting
a false "corrupted" error, and a 0600 safetensors file. Then property tests: any single-field
edit of the JSON is refused, and any base weight changed after saving is named.
"""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing
import os
import shutil
import stat
import sys
import threading
from pathlib import Path

import pytest
import tiny_models as tm
import torch
import transformers as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_transrec import text_model

from adarec import (
    AdapterSpec,
    CheckpointError,
    active_adapters,
    adapter_parameters,
    inject_adapters,
)
from adarec.checkpoint import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    checkpoint_info,
    load_adapters,
    load_model_state,
    save_adapters,
    save_model_state,
)

NO_FIXTURE_CHECK = HealthCheck.function_scoped_fixture


def perturb(params: object, seed: int = 0, scale: float = 0.1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:  # type: ignore[attr-defined]
            p.add_(torch.randn(p.shape, generator=g) * scale)


def trained(seed: int = 0, spec: object = "houlsby", name: str = "default") -> torch.nn.Module:
    model = inject_adapters(tm.build("bert"), spec, name)
    perturb(adapter_parameters(model).values(), seed)
    return model


def out(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return tm.output(model, tm.inputs("bert"))


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir()
                  if ".tmp-" in p.name or ".old-" in p.name or p.name.endswith(".lock"))


# ------------------------------------------------------------------- other base weights
def test_same_architecture_other_weights_is_refused(tmp_path: Path) -> None:
    path = save_adapters(trained(), tmp_path / "c")
    other = tf.BertModel(tf.BertConfig(**tm.COMMON, **tm.TEXT)).eval()  # other random init
    before = {n: t.clone() for n, t in other.state_dict().items()}
    with pytest.raises(CheckpointError, match="base weights differ") as err:
        load_adapters(other, path)
    assert "embeddings.word_embeddings.weight" in str(err.value)  # the difference is named
    assert "allow_other_base_weights" in str(err.value)  # and the way out
    assert all(torch.equal(before[n], t) for n, t in other.state_dict().items())
    result = load_adapters(other, path, allow_other_base_weights=True)
    assert result.ok and "embeddings.word_embeddings.weight" in result.other_base_weights


def test_one_changed_base_weight_is_named(tmp_path: Path) -> None:
    path = save_adapters(trained(), tmp_path / "c")
    model = tm.build("bert")
    with torch.no_grad():
        model.encoder.layer[1].intermediate.dense.bias[3] += 1e-6
    with pytest.raises(CheckpointError, match=r"1 of \d+ base tensors") as err:
        load_adapters(model, path)
    assert "encoder.layer.1.intermediate.dense.bias" in str(err.value)
    assert load_adapters(tm.build("bert"), path).ok  # the base it was saved from loads


@settings(max_examples=25, deadline=None, suppress_health_check=[NO_FIXTURE_CHECK])
@given(data=st.data())
def test_any_base_element_changed_by_one_ulp_is_named(tmp_path_factory, data) -> None:
    """Change one element of one base tensor (parameter or persistent buffer) by the
    smallest step its dtype has: the load is refused and names exactly that tensor."""
    path = tmp_path_factory.mktemp("ulp") / "c"
    save_adapters(trained(), path)
    model = tm.build("bert")
    base = {n: t for n, t in model.state_dict(keep_vars=True).items()
            if t.is_floating_point()}
    name = data.draw(st.sampled_from(sorted(base)))
    t = base[name]
    i = data.draw(st.integers(0, t.numel() - 1))
    with torch.no_grad():
        flat = t.view(-1)
        flat[i] = torch.nextafter(flat[i], torch.tensor(float("inf")))
    with pytest.raises(CheckpointError, match=r"1 of \d+ base tensors") as err:
        load_adapters(model, path)
    assert name in str(err.value)


def test_transfer_recipe_without_the_source_state_is_refused(tmp_path: Path) -> None:
    """The issue's case: target-domain adapters trained on a transferred model, loaded into a
    fresh model that never received the source state: same architecture, other weights."""
    source = text_model(seed=0)
    perturb(source.parameters(), seed=1, scale=0.05)  # "pre-trained" source
    state = source.transferable_state_dict()
    target = text_model(seed=0)
    target.load_transferable_state_dict(state)
    target.inject_adapters(item={"method": "houlsby", "bottleneck": 4})
    perturb(adapter_parameters(target).values(), seed=2)
    path = save_adapters(target, tmp_path / "target")
    fresh = text_model(seed=0)
    with pytest.raises(CheckpointError, match="base weights differ"):
        load_adapters(fresh, path)
    fresh.load_transferable_state_dict(state)
    assert load_adapters(fresh, path).ok
    batch = torch.tensor([[0, 1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval().full_sort_scores(batch),
                                   target.eval().full_sort_scores(batch))


def test_other_dtype_is_named_not_compared(tmp_path: Path) -> None:
    path = save_adapters(trained(), tmp_path / "c")
    half = tm.build("bert").to(torch.bfloat16)
    with pytest.raises(CheckpointError, match="dtype"):
        load_adapters(half, path)


# --------------------------------------------------------------------- the whole config
def _edit(path: Path, mutate) -> None:
    config = json.loads((path / ADAPTER_CONFIG).read_text())
    mutate(config)
    (path / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda c: c["adapter_sets"][0]["spec"].__setitem__("activation", "relu"),
        lambda c: c["adapter_sets"][0]["spec"].__setitem__("scaling", 2.0),
        lambda c: c["adapter_sets"][0].__setitem__("active", False),
        lambda c: c["tensors"][next(iter(c["tensors"]))].__setitem__("requires_grad", False),
    ],
    ids=["activation", "scaling", "active", "requires_grad"],
)
def test_edited_config_is_refused(tmp_path: Path, mutate) -> None:
    """Fields no tensor check covers: an edited activation loaded silently with other outputs."""
    path = save_adapters(trained(), tmp_path / "c")
    _edit(path, mutate)
    with pytest.raises(CheckpointError, match="edited"):
        load_adapters(tm.build("bert"), path)
    with pytest.raises(CheckpointError, match="edited"):
        checkpoint_info(path)


@settings(max_examples=30, deadline=None, suppress_health_check=[NO_FIXTURE_CHECK])
@given(data=st.data())
def test_any_single_value_edit_of_the_json_is_refused(tmp_path_factory, data) -> None:
    """Pick any leaf of the JSON and change it: a refusal, never a silent load."""
    path = save_adapters(trained(spec=AdapterSpec.preset("lora", lora_r=2)),
                         tmp_path_factory.mktemp("edit") / "c")
    config = json.loads((path / ADAPTER_CONFIG).read_text())
    leaves: list[tuple[list[object], object]] = []

    def walk(node: object, where: list[object]) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, [*where, k])
        elif isinstance(node, list) and node:
            for i, v in enumerate(node):
                walk(v, [*where, i])
        else:
            leaves.append((where, node))

    walk(config, [])
    where, value = data.draw(st.sampled_from(leaves))
    if isinstance(value, bool) or value is None:
        new: object = not value
    elif isinstance(value, (int, float)):
        new = value + 1
    else:
        new = str(value) + "x"
    node = config
    for key in where[:-1]:
        node = node[key]  # type: ignore[index]
    node[where[-1]] = new  # type: ignore[index]
    edited = tmp_path_factory.mktemp("edited") / "c"
    shutil.copytree(path, edited)
    (edited / ADAPTER_CONFIG).write_text(json.dumps(config))
    with pytest.raises(CheckpointError):
        load_adapters(tm.build("bert"), edited)


# ---------------------------------------------------------------- activation and freezing
def test_after_loading_only_the_loaded_set_is_active(tmp_path: Path) -> None:
    path = save_adapters(trained(name="a"), tmp_path / "a")
    model = inject_adapters(tm.build("bert"), "pfeiffer", "default")  # the user's own set
    load_adapters(model, path)
    assert active_adapters(model) == ["a"]
    assert torch.equal(out(model), out(trained(name="a")))
    load_adapters(model, path, activate="default")
    assert active_adapters(model) == ["default"]


def test_a_set_saved_inactive_is_switched_on(tmp_path: Path) -> None:
    model = trained(name="a")
    inject_adapters(model, "pfeiffer", "b")  # "b" is active, "a" is not
    path = save_adapters(model, tmp_path / "a", name="a")
    fresh = tm.build("bert")
    load_adapters(fresh, path)
    assert active_adapters(fresh) == ["a"]


def test_loading_leaves_the_users_flags_alone(tmp_path: Path) -> None:
    path = save_adapters(trained(), tmp_path / "c")
    model = tm.build("bert")
    for p in model.parameters():
        p.requires_grad_(False)
    model.pooler.dense.weight.requires_grad_(True)  # the user's choice
    load_adapters(model, path)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    assert flags["pooler.dense.weight"]  # not re-frozen
    assert all(v for n, v in flags.items() if ".adarec_adapters." in n)  # as saved
    assert not flags["embeddings.word_embeddings.weight"]
    restored = tm.build("bert")
    load_adapters(restored, path, restore_requires_grad=True)
    assert {n: p.requires_grad for n, p in restored.named_parameters()} == {
        n: p.requires_grad for n, p in trained().named_parameters()}


# ----------------------------------------------------------------------- the file system
def test_saving_through_a_symlink_keeps_the_link(tmp_path: Path) -> None:
    real = tmp_path / "store" / "ckpt"
    save_adapters(trained(seed=0), real)
    link = tmp_path / "latest"
    link.symlink_to(real, target_is_directory=True)
    save_adapters(trained(seed=1), link)
    assert link.is_symlink() and link.resolve() == real.resolve()
    model = tm.build("bert")
    load_adapters(model, real)
    assert torch.equal(out(model), out(trained(seed=1)))  # the target was updated
    assert leftovers(tmp_path) == [] and leftovers(real.parent) == []


def test_both_files_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        path = save_adapters(trained(), tmp_path / "c")
    finally:
        os.umask(old)
    modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in path.iterdir()}
    assert modes == {ADAPTER_CONFIG: 0o640, ADAPTER_WEIGHTS: 0o640}
    assert stat.S_IMODE(path.stat().st_mode) == 0o750


def _save_in_threads(path: Path, models: list[torch.nn.Module], rounds: int) -> list[BaseException]:
    errors: list[BaseException] = []
    start = threading.Barrier(len(models))

    def work(model: torch.nn.Module) -> None:
        try:
            start.wait()
            for _ in range(rounds):
                save_adapters(model, path)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(m,)) for m in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_concurrent_saves_to_one_folder(tmp_path: Path) -> None:
    models = [trained(seed=s) for s in range(4)]
    outputs = [out(m) for m in models]
    errors = _save_in_threads(tmp_path / "c", models, rounds=5)
    assert errors == []
    assert leftovers(tmp_path) == []
    fresh = tm.build("bert")
    load_adapters(fresh, tmp_path / "c")
    assert any(torch.equal(out(fresh), o) for o in outputs)


def test_saves_that_meet_at_the_swap_do_not_collide(tmp_path: Path, monkeypatch) -> None:
    """Force two writers into the swap together: the first moves the checkpoint aside, the
    second then tries the same before the first has moved its new folder in. Before the fix
    the second failed with a raw FileNotFoundError. With a lock the second writer never gets
    there while the first holds it, so each wait below just times out (1 s) and both succeed."""
    path = tmp_path / "c"
    save_adapters(trained(seed=9), path)
    meet = threading.Barrier(2, timeout=1.0)
    first, moved, tried = threading.Lock(), threading.Event(), threading.Event()
    real = os.replace

    def replace(src: object, dst: object) -> None:
        if Path(str(src)) != path:  # only the move of the current checkpoint aside
            real(src, dst)
            return
        with contextlib.suppress(threading.BrokenBarrierError):
            meet.wait()
        if first.acquire(blocking=False):
            real(src, dst)
            moved.set()
            tried.wait(timeout=1.0)  # let the other writer try the same move now
        else:
            moved.wait(timeout=1.0)
            try:
                real(src, dst)
            finally:
                tried.set()

    monkeypatch.setattr(os, "replace", replace)
    errors = _save_in_threads(path, [trained(seed=0), trained(seed=1)], rounds=1)
    monkeypatch.undo()
    assert errors == [] and leftovers(tmp_path) == []
    assert load_adapters(tm.build("bert"), path).ok


def _save_loop(path: str, seed: int, rounds: int, queue: multiprocessing.Queue) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        model = trained(seed=seed)
        for _ in range(rounds):
            save_adapters(model, path)
        queue.put(None)
    except BaseException as exc:
        queue.put(repr(exc))


def test_concurrent_saves_from_two_processes(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    path = str(tmp_path / "c")
    procs = [ctx.Process(target=_save_loop, args=(path, s, 5, queue)) for s in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert results == [None, None]
    assert leftovers(tmp_path) == []
    assert load_adapters(tm.build("bert"), path).ok


def test_a_reader_racing_a_writer_gets_one_whole_checkpoint(tmp_path: Path,
                                                            monkeypatch) -> None:
    """Swap the folder while the reader is between reading the JSON and the weights (forced by
    a hook on opening the weights file): before the fix this read the old JSON with the new
    weights and reported a false "corrupted" error."""
    path = tmp_path / "c"
    first, second = trained(seed=0), trained(seed=1)
    save_adapters(first, path)
    fired = []
    real_os_open, real_io_open = os.open, io.open

    def swap_once(name: object, writing: bool) -> None:
        if not writing and str(name).endswith(ADAPTER_WEIGHTS) and not fired:
            fired.append(True)
            save_adapters(second, path)

    def os_open(name, flags, *args, **kwargs):  # type: ignore[no-untyped-def]
        swap_once(name, bool(flags & (os.O_WRONLY | os.O_RDWR)))
        return real_os_open(name, flags, *args, **kwargs)

    def io_open(file, mode="r", *args, **kwargs):  # type: ignore[no-untyped-def]
        swap_once(file, any(c in mode for c in "wax+"))
        return real_io_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(io, "open", io_open)
    model = tm.build("bert")
    load_adapters(model, path)
    monkeypatch.undo()
    assert fired
    assert torch.equal(out(model), out(first)) or torch.equal(out(model), out(second))
    assert leftovers(tmp_path) == []


def test_readers_and_a_writer_in_threads(tmp_path: Path) -> None:
    path = tmp_path / "c"
    models = [trained(seed=0), trained(seed=1)]
    outputs = [out(m) for m in models]
    save_adapters(models[0], path)
    errors: list[BaseException] = []
    done = threading.Event()

    def writer() -> None:
        try:
            for i in range(12):
                save_adapters(models[i % 2], path)
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    def reader() -> None:
        try:
            while not done.is_set():
                model = tm.build("bert")
                load_adapters(model, path)
                assert any(torch.equal(out(model), o) for o in outputs)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and leftovers(tmp_path) == []


# ------------------------------------------------------------------------ model state
def test_model_state_keeps_the_users_flags_unless_asked(tmp_path: Path) -> None:
    model = trained()
    path = save_model_state(model, tmp_path / "full")
    fresh = tf.BertModel(tf.BertConfig(**tm.COMMON, **tm.TEXT)).eval()
    load_model_state(fresh, path)
    assert all(p.requires_grad for n, p in fresh.named_parameters())  # as the user had them
    again = tf.BertModel(tf.BertConfig(**tm.COMMON, **tm.TEXT)).eval()
    load_model_state(again, path, restore_requires_grad=True)
    assert {n: p.requires_grad for n, p in again.named_parameters()} == {
        n: p.requires_grad for n, p in model.named_parameters()}
