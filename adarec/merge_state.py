"""The merge state of a model's adapters, and how merged sets leave its weights.

Why a module of its own: `adarec.inject` must check the merge rules (`check_merge_state`) when it
switches sets on or off, and take merged sets out of the weights (`release`) when it ejects them;
`adarec.merge` builds on inject. These pieces need neither, so they sit below both (the rules and
promises are described in `adarec.merge`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

import torch
from torch import nn

from .adapters.base import AdapterLayer, Mergeable, is_adapter
from .errors import AdapterStateError
from .planning import ADAPTERS_ATTR

ORIGINAL_PREFIX = "original_"
"""Name prefix of the buffers holding a module's parameters as they were before any merge."""
_SEEN = "_adarec_merge_seen"
"""(id, version) of each merged module parameter after adarec last wrote it."""


# ------------------------------------------------------------------------------ the rules
def is_merged(a: Any) -> bool:
    return bool(getattr(a, "merged", False))


def fold_order(module: nn.Module) -> list[AdapterLayer]:
    """The adapters on ``module`` in the order a merge must fold them: the output-side ones in
    the order its hook runs them, then those folding into its input (every other adapter on the
    module reads that input, so they must already be folded when it is)."""
    container = cast(Any, module._modules.get(ADAPTERS_ATTR))
    adapters = [a for a in container.values() if is_adapter(a)] if container is not None else []
    into_input = [bool(getattr(a, "folds_into_input", False)) for a in adapters]
    return ([a for a, i in zip(adapters, into_input, strict=True) if not i]
            + [a for a, i in zip(adapters, into_input, strict=True) if i])


def adapted_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m._modules.get(ADAPTERS_ATTR), nn.ModuleDict)]


def merge_state_problems(
    model: nn.Module,
    active: Callable[[AdapterLayer], bool] | None = None,
    merged: Callable[[AdapterLayer], bool] | None = None,
) -> list[str]:
    """What would be wrong with the merge state given by ``active``/``merged`` (default: the
    current flags): a merged adapter switched off, or a merged adapter behind an active unmerged
    one in fold order. One line per (problem, sets), naming the first module and the count."""
    is_active = active or (lambda a: bool(a.active))
    merged_now = merged or is_merged
    found: dict[tuple[str, ...], list[str]] = {}
    for mname, module in adapted_modules(model):
        blocker: AdapterLayer | None = None
        for a in fold_order(module):
            m, on = merged_now(a), is_active(a)
            if m and not on:
                found.setdefault(("off", a.set_name), []).append(mname)
            elif on and not m:
                blocker = blocker or a
            elif m and blocker is not None:
                found.setdefault(("behind", a.set_name, blocker.set_name), []).append(mname)
    lines = []
    for key, where in found.items():
        at = where[0] + (f" (and {len(where) - 1} more modules)" if len(where) > 1 else "")
        if key[0] == "off":
            lines.append(f"set {key[1]!r} is merged into {at} and would be switched off while its "
                         "update stays in the base weights")
        else:
            lines.append(f"set {key[1]!r} would be (or stay) merged into {at} while set "
                         f"{key[2]!r}, active and not merged, runs before it there (a merged "
                         "update acts first)")
    return lines


def check_merge_state(model: nn.Module, active: Callable[[AdapterLayer], bool] | None = None,
                      merged: Callable[[AdapterLayer], bool] | None = None,
                      advice: str = "unmerge_adapters(model) first") -> None:
    """Raise `AdapterStateError` when `merge_state_problems` finds any."""
    problems = merge_state_problems(model, active, merged)
    if problems:
        raise AdapterStateError("; ".join(problems) + f". {advice}")


# ------------------------------------------------------------------- shared-storage check
def _storage(t: torch.Tensor) -> tuple[str, int] | None:
    try:
        ptr = t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # tensor subclasses without a storage
        return None
    return (str(t.device), ptr) if ptr else None


def refuse_shared_storage(model: nn.Module, modules: Iterable[nn.Module]) -> None:
    """Refuse when a parameter of one of ``modules`` shares its storage with a tensor held by
    another module of ``model`` (tied weights): writing a delta into it would change both."""
    holders: dict[tuple[str, int], list[tuple[int, str]]] = {}
    for mname, m in model.named_modules():
        if ADAPTERS_ATTR in mname.split(".") or is_adapter(m):
            continue
        for tname, t in [*m._parameters.items(), *m._buffers.items()]:
            key = _storage(t) if t is not None else None
            if key is not None:
                holders.setdefault(key, []).append((id(m), f"{mname}.{tname}" if mname else tname))
    names = {id(m): n for n, m in model.named_modules()}
    for module in modules:
        for pname, p in module.named_parameters(recurse=False):
            key = _storage(p)
            others = [n for mid, n in holders.get(key, []) if mid != id(module)] if key else []
            if others:
                raise AdapterStateError(
                    f"{names.get(id(module), type(module).__name__)}.{pname} shares its storage "
                    f"with {others} (tied weights): merging would change those modules too. "
                    "Keep the set unmerged, or untie the weights first"
                )


# ------------------------------------------------------------- per-module fold and undo
def _container(module: nn.Module) -> nn.Module:
    return cast(nn.Module, module._modules[ADAPTERS_ATTR])


def kept_originals(module: nn.Module) -> dict[str, torch.Tensor]:
    n = len(ORIGINAL_PREFIX)
    return {k[n:]: b for k, b in _container(module)._buffers.items()
            if k.startswith(ORIGINAL_PREFIX) and b is not None}


def keep_originals(module: nn.Module) -> None:
    container = _container(module)
    for pname, p in module.named_parameters(recurse=False):
        container.register_buffer(ORIGINAL_PREFIX + pname, p.detach().clone(), persistent=False)


def _drop_originals(module: nn.Module) -> None:
    container = _container(module)
    for k in [k for k in container._buffers if k.startswith(ORIGINAL_PREFIX)]:
        del container._buffers[k]
    container.__dict__.pop(_SEEN, None)


def _seen(module: nn.Module) -> dict[str, tuple[int, int]]:
    return {n: (id(p), p._version) for n, p in module.named_parameters(recurse=False)}


def _note_written(module: nn.Module) -> None:
    _container(module).__dict__[_SEEN] = _seen(module)


def _changed_while_merged(module: nn.Module, merged: list[AdapterLayer]) -> list[str]:
    """Parameters of ``module`` that differ from what its merged adapters wrote. Cheap when
    nothing touched them (same tensor, same version counter); otherwise the fold is recomputed
    from the kept copy (a deep copy or a reload of equal values is not a change)."""
    if _container(module).__dict__.get(_SEEN) == _seen(module):
        return []
    stand_in = copy.copy(module)
    stand_in.__dict__["_parameters"] = {
        n: nn.Parameter(t.clone(), requires_grad=False) for n, t in kept_originals(module).items()
    }
    for a in merged:
        layer = cast(Mergeable, a)
        layer.merged = False
        try:
            layer.merge(stand_in)
        finally:
            layer.merged = True
    return [n for n, p in module.named_parameters(recurse=False)
            if n in stand_in._parameters
            and not torch.equal(p, cast(torch.Tensor, stand_in._parameters[n]))]


def _undo_problem(module: nn.Module, merged: list[AdapterLayer], discard_changes: bool,
                  name: str) -> str | None:
    """Why ``module`` cannot be brought back to its pre-merge weights, or ``None``."""
    if kept_originals(module):
        changed = [] if discard_changes else _changed_while_merged(module, merged)
        if changed:
            return (f"{name}.{changed[0]} changed while sets {sorted({a.set_name for a in merged})}"
                    " were merged into it (training? loading?); restoring the copy kept at merge "
                    "time would discard that change. Call unmerge_adapters(model, "
                    "discard_changes=True) to restore it anyway")
        return None
    for a in merged:
        why = getattr(a, "irreversible_because", None)
        reason = why(module) if callable(why) else None
        if reason:
            return (f"set {a.set_name!r} on {name} was merged without a copy of the original "
                    f"weights (keep_original=False, or loaded merged) and {reason}")
    return None


def _undo(module: nn.Module, merged: list[AdapterLayer]) -> None:
    """Bring ``module`` back to its pre-merge weights (checked by `_undo_problem` first)."""
    originals = kept_originals(module)
    if originals:
        with torch.no_grad():
            for n, t in originals.items():
                getattr(module, n).data.copy_(t)
        for a in merged:
            cast(Mergeable, a).merged = False
    else:
        for a in reversed(merged):
            cast(Mergeable, a).unmerge(module)


def fold_adapters(module: nn.Module, adapters: list[AdapterLayer]) -> None:
    for a in adapters:
        cast(Mergeable, a).merge(module)
    _note_written(module)


def release(model: nn.Module, leaving: Sequence[AdapterLayer], *, keep_merged: bool = False,
            discard_changes: bool = False) -> None:
    """Take the merged ones among ``leaving`` (adapters about to be ejected or unmerged) out of
    their modules' weights, refolding the merged adapters that stay. Every module is checked
    before any changes. With ``keep_merged`` their updates stay in the weights instead (refused
    where other merged sets stay on the same module: the kept copy would no longer be the
    original of what remains)."""
    gone = {id(a) for a in leaving if is_merged(a)}
    if not gone:
        return
    work = []
    for mname, module in adapted_modules(model):
        order = fold_order(module)
        merged = [a for a in order if is_merged(a)]
        if not any(id(a) in gone for a in merged):
            continue
        stay = [a for a in merged if id(a) not in gone]
        if keep_merged and stay:
            raise AdapterStateError(
                f"sets {sorted({a.set_name for a in stay})} are merged into {mname} too; "
                "unmerge them first, or take them out together"
            )
        if not keep_merged:
            problem = _undo_problem(module, merged, discard_changes, mname)
            if problem:
                raise AdapterStateError(problem)
        work.append((module, merged, stay))
    for module, merged, stay in work:
        if keep_merged:
            for a in merged:
                cast(Mergeable, a).merged = False  # the update stays; nothing to subtract later
            _drop_originals(module)
            continue
        _undo(module, merged)
        if stay:
            fold_adapters(module, stay)
        else:
            _drop_originals(module)


__all__ = ["ORIGINAL_PREFIX", "adapted_modules", "check_merge_state", "fold_adapters", "fold_order",
           "is_merged", "keep_originals", "kept_originals", "merge_state_problems",
           "refuse_shared_storage", "release"]
