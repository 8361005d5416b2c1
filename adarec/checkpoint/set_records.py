"""Adapter sets as a checkpoint records them (root, spec, sites, stack order) and their
re-injection on load."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

from torch import nn

from ..errors import AdapterStateError, CheckpointError, SpecError
from ..inject import (
    ADAPTERS_ATTR,
    adapter_sets,
    inject_adapters,
    iter_adapters,
)
from ..spec import AdapterSpec


def _injection_root(mname: str, target: str) -> str:
    """The module a set was injected into, from a hooked module's name and its site target.

    The hooked module is the target itself, or for an ``nn.MultiheadAttention``'s out_proj the
    MHA holding it (then ``target`` names a child of the hooked module).
    """
    for full in (mname, f"{mname}.{target.rsplit('.', 1)[-1]}"):
        if full == target:
            return ""
        if full.endswith("." + target):
            return full[: -len(target) - 1]
    raise AdapterStateError(f"cannot tell where the set at {mname} (target {target}) was injected")


def _groups(model: nn.Module, names: set[str] | None) -> dict[tuple[str, str], dict[str, Any]]:
    """Adapter sets keyed by (injection root, set name): one set name may live in several roots."""
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    per_module: dict[str, list[tuple[str, str]]] = {}
    for mname, _, adapter in iter_adapters(model):
        if names is not None and adapter.set_name not in names:
            continue
        if not isinstance(adapter.spec, AdapterSpec):  # attached by its owner (attach_layer)
            raise AdapterStateError(
                f"adapter set {adapter.set_name!r} holds a {type(adapter).__name__} at "
                f"{mname!r}, which its owner saves (a TransRec: save_pretrained), not an "
                "adapter checkpoint")
        root = _injection_root(mname, adapter.site.target)
        key = (root, adapter.set_name)
        g = groups.setdefault(key, {
            "name": adapter.set_name, "root": root, "spec": adapter.spec,
            "active": adapter.active, "merged": False, "sites": [], "adapters": [],
        })
        g["merged"] |= bool(getattr(adapter, "merged", False))
        g["sites"].append({**asdict(adapter.site), "module": mname})
        g["adapters"].append(adapter)
        per_module.setdefault(mname, []).append(key)
    return {k: groups[k] for k in _injection_order(list(groups), per_module.values())}


def _injection_order(
    keys: list[tuple[str, str]], stacks: Iterable[list[tuple[str, str]]]
) -> list[tuple[str, str]]:
    """Order sets so that re-injecting them rebuilds every module's adapter stack in the same
    order (adapters on one module run in sequence, so their order changes the output)."""
    after: dict[tuple[str, str], set[tuple[str, str]]] = {k: set() for k in keys}
    for stack in stacks:
        for earlier, later in itertools.pairwise(stack):
            after[later].add(earlier)
    order: list[tuple[str, str]] = []
    while len(order) < len(keys):
        left = [k for k in keys if k not in order]
        ready = [k for k in left if after[k] <= set(order)]
        order.append((ready or left)[0])  # no order fits every stack: keep first-seen order
    return order


def _set_records(groups: dict[tuple[str, str], dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**{k: v for k, v in g.items() if k != "adapters"}, "spec": g["spec"].to_dict()}
            for g in groups.values()]


def follow_training_mode(model: nn.Module, name: str) -> None:
    """New adapter modules start in training mode; put set ``name`` in its host module's mode so
    a model loaded for evaluation does not run adapter dropout."""
    for _, module, adapter in iter_adapters(model):
        if adapter.set_name == name:
            getattr(module, ADAPTERS_ATTR).train(module.training)


def _canonical(model: nn.Module) -> dict[int, str]:
    """id(parameter) -> its first name, the one a shared parameter is stored under."""
    return {id(p): n for n, p in model.named_parameters()}  # named_parameters() dedupes


def _restore_sets(
    model: nn.Module, records: list[dict[str, Any]], conflicts: list[str]
) -> list[tuple[nn.Module, str]]:
    """Inject the recorded sets that are absent; note spec/site differences in ``conflicts``.

    Returns the (root module, name) pairs injected, so a refused load can take them out again.
    """
    specs = []
    for rec in records:
        try:
            specs.append(AdapterSpec.from_dict(rec["spec"]))
        except SpecError as exc:
            label = f"adapter set {rec['name']!r}"
            raise CheckpointError(f"{label} has an invalid spec: {exc}") from None
    injected: list[tuple[nn.Module, str]] = []
    for rec, spec in zip(records, specs, strict=True):
        name, root = rec["name"], rec["root"]
        label = f"adapter set {name!r}" + (f" at {root!r}" if root else "")
        try:
            root_module = model.get_submodule(root)
        except AttributeError:
            conflicts.append(f"{label}: the model has no module {root!r}")
            continue
        present = adapter_sets(root_module)
        if name in present:
            if present[name] != spec:
                conflicts.append(f"{label}: the model's set has another spec: {present[name]}")
                continue
        else:
            try:  # freeze=False: the user's requires_grad flags are theirs
                inject_adapters(root_module, spec, name, freeze=False, activate=False)
            except Exception as exc:  # the spec does not fit this model
                conflicts.append(f"{label}: cannot inject it into this model: {exc}")
                continue
            injected.append((root_module, name))
            follow_training_mode(root_module, name)
        ours = {a.site.target for _, _, a in iter_adapters(root_module) if a.set_name == name}
        theirs = {s.get("target") for s in rec["sites"]}
        if ours != theirs:
            conflicts.append(
                f"{label}: sites differ: only in checkpoint {sorted(map(str, theirs - ours))}, "
                f"only in model {sorted(ours - theirs)}"
            )
    return injected


def _join(root: str, rel: str) -> str:
    return f"{root}.{rel}" if root and rel else root or rel
