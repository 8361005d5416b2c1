"""Caches follow the model (issue 15): TransRec's item table and TextItemEncoder's frozen-prefix
cache never serve what a model that no longer exists computed.

Regression cases first (each served a stale cache before the fix: the keys tracked tensor
versions only), then a stateful property test: random sequences of every operation that changes
what the model computes, and after each one the cached scores equal freshly computed ones.
"""

from __future__ import annotations

import contextlib
import copy
import pickle
import shutil
import tempfile
from pathlib import Path

import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from tiny_transrec import N_ITEMS, SEQS, text_model

import adarec
from adarec import (
    AdapterSpec,
    adapter_parameters,
    adapter_sets,
    adapters_disabled,
    eject_adapters,
    inject_adapters,
    set_active_adapters,
)
from adarec.merge import merge_adapters, unmerge_adapters
from adarec.rec.transrec import TransRec

HIST = torch.tensor([[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [0, 0, 10, 11, 12]])
PAIRS = [(seq[:-1], seq[-1]) for seq in SEQS]
ALL = torch.arange(N_ITEMS + 1)


def perturb(params: object, seed: int, scale: float = 0.3) -> None:
    """Give tensors new values with one in-place copy each (adapters start near identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:  # type: ignore[attr-defined]
            p.copy_(torch.randn(p.shape, generator=g) * scale)


def reference(model: TransRec) -> tuple[torch.Tensor, torch.Tensor]:
    """Item table and full scores computed from scratch: plain forward, no cache consulted."""
    with model._inference():
        table = model.dtl(model.item_encoder._encode(ALL))  # one chunk, no prefix cache
        user = model.user_encoder(table[HIST], HIST != 0)[:, -1]
        return table, user @ table.T


def assert_coherent(model: TransRec) -> None:
    table, scores = reference(model)
    torch.testing.assert_close(model.item_table(), table, atol=2e-5, rtol=1e-4)
    got = model.full_sort_scores(HIST, exclude_history=False)
    torch.testing.assert_close(got[:, 1:], scores[:, 1:], atol=2e-5, rtol=1e-4)


def assert_prefix_coherent(model: TransRec) -> None:
    enc = model.item_encoder
    with torch.no_grad():
        torch.testing.assert_close(enc(ALL), enc._encode(ALL), atol=2e-5, rtol=1e-4)


def two_sets(model: TransRec, layers: tuple[int, ...] | None = None) -> torch.nn.Module:
    hf = model.item_encoder.model
    for i, name in enumerate("ab"):
        spec = AdapterSpec(method="houlsby", bottleneck=4, layers=layers)
        inject_adapters(hf, spec, name, freeze=False)
        perturb(adapter_parameters(hf, name).values(), seed=i)
    return hf


# ------------------------------------------------------------------ the item table (TransRec)
def test_switching_sets_rescores_with_the_active_set() -> None:
    """The issue's case: evaluation of set "b" reported set "a"'s MRR."""
    model = text_model().eval()
    hf = two_sets(model)
    set_active_adapters(hf, "a")
    mrr_a = model.evaluate_ranking(PAIRS, ks=(10,), metrics=("mrr",))
    set_active_adapters(hf, "b")
    assert_coherent(model)
    mrr_b = model.evaluate_ranking(PAIRS, ks=(10,), metrics=("mrr",))
    fresh = copy.deepcopy(model)
    fresh.invalidate_cache()
    assert mrr_b == fresh.evaluate_ranking(PAIRS, ks=(10,), metrics=("mrr",))
    assert mrr_a != mrr_b


def test_adapters_disabled_rescores_without_adapters() -> None:
    model = text_model().eval()
    hf = two_sets(model)
    set_active_adapters(hf, "a")
    assert_coherent(model)
    with adapters_disabled(hf):
        assert_coherent(model)
    assert_coherent(model)


def test_eject_then_inject_a_same_shaped_set_is_not_the_old_one() -> None:
    """New tensors restart their version counters at 0 (and may reuse the old ones' ids), so
    a key of versions alone matched the old set's table."""
    model = text_model().eval()
    hf = model.item_encoder.model
    for seed in range(3):
        inject_adapters(hf, AdapterSpec(method="houlsby", bottleneck=4), "a", freeze=False)
        perturb(adapter_parameters(hf, "a").values(), seed=seed)
        assert_coherent(model)
        eject_adapters(hf, "a")  # no check in between: the next one must not hit the old table
    assert_coherent(model)


def test_table_built_under_autocast_is_not_served_in_float32() -> None:
    model = text_model().eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model.item_table()
    assert_coherent(model)


def test_id_fusion_changes_rescore() -> None:
    """The table holds the fused embeddings: excluding items (cold items) or loading other ID
    weights must not leave the old ones in the cached table."""
    model = text_model(id_fusion="add").eval()
    assert model.id_fusion is not None
    perturb([model.id_fusion.embedding.weight], seed=0)
    before = model.item_table().clone()
    model.id_fusion.exclude([1, 2])
    content = model.dtl(model.item_encoder(torch.tensor([1, 2])))
    with torch.no_grad():
        torch.testing.assert_close(model.item_table()[1:3], content)
    assert not torch.allclose(model.item_table()[1:3], before[1:3])
    state = {k: v.clone() for k, v in model.id_fusion.state_dict().items()}
    state["embedding.weight"].mul_(2.0)
    model.id_fusion.load_state_dict(state)
    torch.testing.assert_close(model.item_table()[3:], model._encode(ALL)[3:])


def test_policy_and_training_mode_changes() -> None:
    model = text_model()
    model.inject_adapters(item={"method": "houlsby", "bottleneck": 4})
    perturb(adapter_parameters(model).values(), seed=0)
    model.eval()
    assert_coherent(model)
    model.item_encoder.model.train()  # a submodule in training mode: dropout would run
    with torch.no_grad():
        fresh = model.item_embeddings(ALL)
    assert fresh.shape == (N_ITEMS + 1, model.dim)
    model.item_encoder.model.eval()
    model.set_policy("frozen")
    assert_coherent(model)


def test_copies_and_pickles_never_trust_the_originals_cache(tmp_path: Path) -> None:
    model = text_model().eval()
    hf = two_sets(model)
    set_active_adapters(hf, "a")
    model.item_table()
    clone = copy.deepcopy(model)
    set_active_adapters(clone.item_encoder.model, "b")
    assert_coherent(clone)
    restored = pickle.loads(pickle.dumps(model))
    perturb(adapter_parameters(restored.item_encoder.model, "a").values(), seed=9)
    assert_coherent(restored)
    assert_coherent(model)


# --------------------------------------------------------- the frozen-prefix cache (encoder)
def prefix_model() -> tuple[TransRec, torch.nn.Module]:
    """Two frozen sets in block 0 (below the cache boundary) and a trainable set in block 1."""
    model = text_model()
    model.item_encoder.cache_frozen_layers = True
    hf = two_sets(model, layers=(0,))
    inject_adapters(hf, AdapterSpec(method="houlsby", bottleneck=4, layers=(1,)), "top",
                    freeze=False)
    for n, p in hf.named_parameters():
        p.requires_grad_(".top." in n)
    perturb(adapter_parameters(hf, "top").values(), seed=5)
    return model, hf


def test_prefix_follows_the_active_sets_below_it() -> None:
    model, hf = prefix_model()
    set_active_adapters(hf, ["a", "top"])
    assert_prefix_coherent(model)
    assert model.item_encoder._prefix is not None  # the cache is in use
    set_active_adapters(hf, ["b", "top"])
    assert_prefix_coherent(model)
    with adapters_disabled(hf):
        assert_prefix_coherent(model)


def test_prefix_follows_eject_and_inject_below_it() -> None:
    model, hf = prefix_model()
    set_active_adapters(hf, ["a", "top"])
    assert_prefix_coherent(model)
    eject_adapters(hf, "a")
    inject_adapters(hf, AdapterSpec(method="houlsby", bottleneck=4, layers=(0,)), "a",
                    freeze=False, activate=False)
    perturb(adapter_parameters(hf, "a").values(), seed=7)
    for p in adapter_parameters(hf, "a").values():
        p.requires_grad_(False)
    set_active_adapters(hf, ["a", "top"])
    assert_prefix_coherent(model)


def test_prefix_follows_the_item_features() -> None:
    model, _ = prefix_model()
    enc = model.item_encoder
    assert_prefix_coherent(model)
    order = torch.cat([torch.zeros(1, dtype=torch.long), torch.arange(N_ITEMS, 0, -1)])
    enc.input_ids = enc.input_ids[order]
    enc.attention_mask = enc.attention_mask[order]
    enc.lengths = enc.lengths[order]
    assert_prefix_coherent(model)


def test_invalidate_cache_drops_both_caches() -> None:
    """The escape hatch for writes no version counter sees (``p.data.copy_``)."""
    model, hf = prefix_model()
    model.eval()
    set_active_adapters(hf, ["a", "top"])
    assert_coherent(model)
    with torch.no_grad():
        hf.embeddings.word_embeddings.weight.data.mul_(2.0)  # invisible to _version
    model.invalidate_cache()
    assert model._items.table is None and model.item_encoder._prefix is None
    assert_coherent(model)
    assert_prefix_coherent(model)


# --------------------------------------------------------------------- the property test
SPECS = {
    "houlsby": lambda layers: AdapterSpec(method="houlsby", bottleneck=4, layers=layers),
    "lora": lambda layers: AdapterSpec(method="lora", lora_r=2, layers=layers),
    "ia3": lambda layers: AdapterSpec(method="ia3", layers=layers),
}
NAMES = ("a", "b", "c")


class CacheCoherence(RuleBasedStateMachine):
    """A tiny TransRec (2-block BERT item encoder with the frozen-prefix cache on) driven by
    random operations, none of which tells the caches anything; after each, the cached item
    table, full scores and encoder output equal freshly computed ones."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.model = text_model()
        self.model.item_encoder.cache_frozen_layers = True
        self.hf = self.model.item_encoder.model
        self.model.eval()
        self.seed = 0
        self.tmp = Path(tempfile.mkdtemp())

    def teardown(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    @initialize(methods=st.lists(st.sampled_from(sorted(SPECS)), min_size=2, max_size=2),
                active=st.sampled_from([["a"], ["b"], ["a", "b"], []]))
    def two_sets_and_a_frozen_bottom(self, methods: list[str], active: list[str]) -> None:
        """Start where the caches matter: sets below and above the prefix boundary."""
        for name, method, layers in zip("ab", methods, [(0,), (1,)], strict=True):
            inject_adapters(self.hf, SPECS[method](layers), name, freeze=False, activate=False)
            perturb(adapter_parameters(self.hf, name).values(), self._next_seed(), scale=0.2)
        set_active_adapters(self.hf, active or None)
        self.freeze_block(0, False)

    def _next_seed(self) -> int:
        self.seed += 1
        return self.seed

    def _sets(self) -> list[str]:
        return list(adapter_sets(self.hf))

    def _merged(self) -> list[str]:
        return sorted({a.set_name for _, _, a in adarec.iter_adapters(self.hf)
                       if getattr(a, "merged", False)})

    @rule(name=st.sampled_from(NAMES), method=st.sampled_from(sorted(SPECS)),
          layers=st.sampled_from([(0,), (1,), None]), activate=st.booleans())
    def inject(self, name: str, method: str, layers: tuple[int, ...] | None,
               activate: bool) -> None:
        if name in self._sets() or self._merged():
            return
        inject_adapters(self.hf, SPECS[method](layers), name, freeze=False, activate=False)
        perturb(adapter_parameters(self.hf, name).values(), self._next_seed(), scale=0.2)
        if activate:
            set_active_adapters(self.hf, [*adarec.active_adapters(self.hf), name])

    @precondition(lambda self: bool(self._sets()))
    @rule(data=st.data())
    def eject(self, data: st.DataObject) -> None:
        eject_adapters(self.hf, data.draw(st.sampled_from(self._sets())))

    @precondition(lambda self: not self._merged())
    @rule(data=st.data())
    def switch(self, data: st.DataObject) -> None:
        names = data.draw(st.lists(st.sampled_from(self._sets() or ["_"]), unique=True))
        set_active_adapters(self.hf, [n for n in names if n != "_"] or None)

    @precondition(lambda self: not self._merged())
    @rule()
    def disabled(self) -> None:
        with adapters_disabled(self.hf):
            self.check()

    @rule(data=st.data())
    def merge_or_unmerge(self, data: st.DataObject) -> None:
        """Fold a LoRA or (IA)^3 set into the base weights (activating it first), or unfold."""
        if self._merged():
            # a weight_update may have stepped a merged base weight: unmerging refuses to drop
            # that change unless told to (merge's own promise, tested elsewhere)
            unmerge_adapters(self.hf, discard_changes=True)
            return
        sets = adapter_sets(self.hf)
        mergeable = [n for n, spec in sets.items() if spec.method in ("lora", "ia3")]
        if not mergeable:
            return
        name = data.draw(st.sampled_from(mergeable))
        active = adarec.active_adapters(self.hf)
        if name not in active:
            set_active_adapters(self.hf, [*active, name])
        # a refusal (e.g. another active set runs before it) changes nothing
        with contextlib.suppress(adarec.AdarecError):
            merge_adapters(self.hf, name)

    @rule(policy=st.sampled_from(["full", "adapters", "frozen", "item_adapters"]))
    def policy(self, policy: str) -> None:
        has = bool(adapter_parameters(self.model.item_encoder))
        if policy in ("adapters", "item_adapters") and not has:
            return
        self.model.set_policy(policy)

    @rule(block=st.sampled_from([0, 1]), flag=st.booleans())
    def freeze_block(self, block: int, flag: bool) -> None:
        """(Un)freeze a block; freezing block 0 freezes the embeddings too (a cacheable
        bottom), unfreezing block 1 keeps something above the boundary trainable."""
        parts = [self.hf.encoder.layer[block]]
        if block == 0:
            parts.append(self.hf.embeddings)
        for part in parts:
            for p in part.parameters():
                p.requires_grad_(flag)
        for p in self.hf.encoder.layer[1].parameters():
            p.requires_grad_(p.requires_grad or block == 0)

    @rule(training=st.booleans())
    def mode(self, training: bool) -> None:
        self.model.train(training)
        self.model.eval()  # checks run in eval mode; the switch itself must not confuse them

    @rule(data=st.data())
    def weight_update(self, data: st.DataObject) -> None:
        """An optimizer-like in-place step on one tensor (base weight or adapter)."""
        names = [n for n, _ in self.model.named_parameters()]
        name = data.draw(st.sampled_from(names))
        p = dict(self.model.named_parameters())[name]
        g = torch.Generator().manual_seed(self._next_seed())
        with torch.no_grad():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)

    @precondition(lambda self: bool(self._sets()) and not self._merged())
    @rule()
    def save_then_load(self) -> None:
        """Save the sets, change their weights, load them back (in-place copies)."""
        folder = self.tmp / f"ckpt{self._next_seed()}"
        adarec.save_adapters(self.hf, folder)
        perturb(adapter_parameters(self.hf).values(), self._next_seed(), scale=0.2)
        self.check()
        adarec.load_adapters(self.hf, folder)

    @rule(bf16=st.booleans())
    def autocast_check(self, bf16: bool) -> None:
        if bf16:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                self.model.item_table()
                self.model.item_encoder(ALL[:4])

    def check(self) -> None:
        assert_coherent(self.model)
        assert_prefix_coherent(self.model)

    @invariant()
    def caches_match_fresh_computation(self) -> None:
        self.check()


TestCacheCoherence = CacheCoherence.TestCase
TestCacheCoherence.settings = settings(
    max_examples=25, stateful_step_count=12, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

