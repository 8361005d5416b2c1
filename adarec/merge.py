"""Fold weight-level sets (LoRA, (IA)^3) into the base weights for inference, and take them out.

A method says whether it merges (and if not, why) in its `adarec.registry.MethodDef`: LoRA's
update ``(alpha/r) B A x`` is linear in the module input, so it is a weight delta; a bottleneck
adapter applies a non-linear activation between its projections, which no weight matrix
reproduces. Sets of methods that do not merge are refused with that reason, as is every set whose
layers implement no ``merge``/``unmerge``.

The promises, and how they are kept:

- **Exact undo.** Merging keeps a copy of every parameter of each module it writes into (its
  weight and bias, as non-persistent buffers ``original_*`` of the module's ``adarec_adapters``
  container, so they follow ``.to()`` and never reach a ``state_dict``). Unmerging and ejecting
  copy it back: the base weights are bit for bit those before the merge, in every dtype, whatever
  the learned values (an (IA)^3 scale of 0 included). The cost is one copy of the merged modules'
  weights while merged. ``keep_original=False`` skips the copy; undoing then subtracts the delta
  (or divides the scale) out again, within ``eps * (|W| + |delta|)`` per element (``eps`` of the
  weight dtype), and a set that cannot be undone that way (a zero or non-finite (IA)^3 scale, a
  product that over- or underflows) is refused. Sets loaded merged by `load_model_state` have no
  copy either and are undone the same way.
- **Nothing runs silently merged.** On every adapted module the merged adapters must be active
  and must be the first of its active adapters in fold order (output-side adapters in the order
  the hook runs them, then those that fold into the module's *input*, which every other adapter
  on the module reads). `merge_adapters`, `unmerge_adapters`, `set_active_adapters` and
  `inject_adapters` check that rule on the state they would create and refuse before changing
  anything; the forward hook refuses a merged adapter that was switched off by hand.
- **Only this module changes.** A weight (or bias) whose storage another module also holds
  (tied weights) is refused: the delta would change that module too.
- **No lost work.** Base weights changed while merged (training, loading) are not silently
  replaced by the copy: unmerging refuses unless ``discard_changes=True``.

A layer takes part by implementing ``merge(base)`` / ``unmerge(base)`` (fold in place, set
``merged``; undo by arithmetic) and optionally ``folds_into_input`` (True when it scales the
module's input) and ``irreversible_because(base) -> str | None`` (why the arithmetic undo would
fail).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

import torch
from torch import nn

from .adapters.base import AdapterLayer, Mergeable, is_adapter
from .errors import AdapterStateError
from .inject import active_adapters, adapter_sets, eject_adapters, iter_adapters
from .planning import ADAPTERS_ATTR
from .registry import method_info

ORIGINAL_PREFIX = "original_"
"""Name prefix of the buffers holding a module's parameters as they were before any merge."""
_SEEN = "_adarec_merge_seen"
"""(id, version) of each merged module parameter after adarec last wrote it."""


# ------------------------------------------------------------------------------ the rules
def _merged(a: Any) -> bool:
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


def _adapted(model: nn.Module) -> list[tuple[str, nn.Module]]:
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
    is_merged = merged or _merged
    found: dict[tuple[str, ...], list[str]] = {}
    for mname, module in _adapted(model):
        blocker: AdapterLayer | None = None
        for a in fold_order(module):
            m, on = is_merged(a), is_active(a)
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


def _originals(module: nn.Module) -> dict[str, torch.Tensor]:
    n = len(ORIGINAL_PREFIX)
    return {k[n:]: b for k, b in _container(module)._buffers.items()
            if k.startswith(ORIGINAL_PREFIX) and b is not None}


def _keep_originals(module: nn.Module) -> None:
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
        n: nn.Parameter(t.clone(), requires_grad=False) for n, t in _originals(module).items()
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
    if _originals(module):
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
    originals = _originals(module)
    if originals:
        with torch.no_grad():
            for n, t in originals.items():
                getattr(module, n).data.copy_(t)
        for a in merged:
            cast(Mergeable, a).merged = False
    else:
        for a in reversed(merged):
            cast(Mergeable, a).unmerge(module)


def _fold(module: nn.Module, adapters: list[AdapterLayer]) -> None:
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
    gone = {id(a) for a in leaving if _merged(a)}
    if not gone:
        return
    work = []
    for mname, module in _adapted(model):
        order = fold_order(module)
        merged = [a for a in order if _merged(a)]
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
            _fold(module, stay)
        else:
            _drop_originals(module)


# ------------------------------------------------------------------------------ public API
def _why_not(model: nn.Module, name: str, method: str) -> str | None:
    """Why set ``name`` cannot be merged, or ``None`` when it can: its method must say it merges
    and its layers must implement ``merge``/``unmerge``."""
    info = method_info(method)
    if not info.merges:
        return info.merge_note or f"method {method!r} does not merge"
    if not all(callable(getattr(a, "merge", None)) and callable(getattr(a, "unmerge", None))
               for _, _, a in iter_adapters(model) if a.set_name == name):
        return "its adapter layers implement no merge()"
    return None


def _selected(model: nn.Module, name: str | Sequence[str] | None) -> list[str]:
    """The named sets (default: the active ones), refusing unknown and unmergeable sets."""
    present = adapter_sets(model)
    if name is None:
        names = active_adapters(model)
    else:
        names = [name] if isinstance(name, str) else list(name)
    missing = [n for n in names if n not in present]
    if missing:
        raise AdapterStateError(f"no adapter set named {missing}; sets present: {list(present)}")
    refused = {n: (present[n].method, _why_not(model, n, present[n].method)) for n in names}
    why = "; ".join(f"{n!r} ({m}): {w}" for n, (m, w) in refused.items() if w is not None)
    if why:
        raise AdapterStateError(f"cannot merge adapter set(s) into the base weights: {why}")
    return names


def _chosen(model: nn.Module, names: list[str]) -> list[AdapterLayer]:
    return [a for _, _, a in iter_adapters(model) if a.set_name in names]


def merge_adapters(
    model: nn.Module, name: str | Sequence[str] | None = None, *, unload: bool = False,
    keep_original: bool = True,
) -> nn.Module:
    """Fold set(s) ``name`` (default: every active set) into the base weights.

    The merged model computes the same outputs (to float rounding) without the adapter work. Every
    set and module is checked before any weight changes (see the module docstring for the rules).
    With ``keep_original`` (default) a copy of each written module's parameters is kept so that
    `unmerge_adapters` / `eject_adapters` restore them bit for bit (memory: one copy of those
    weights while merged); without it they are undone arithmetically, within
    ``eps * (|W| + |delta|)``. With ``unload`` the adapters are then removed, leaving a plain model
    whose weights carry the update (no copy is kept; it cannot be unmerged afterwards).
    """
    names = _selected(model, name)
    chosen = _chosen(model, names)
    inactive = sorted({a.set_name for a in chosen if not a.active})
    if inactive:
        raise AdapterStateError(
            f"adapter set(s) {inactive} are not active; merging them would change the outputs. "
            "set_active_adapters(model, ...) first"
        )
    already = sorted({a.set_name for a in chosen if _merged(a)})
    if already:
        raise AdapterStateError(f"adapter set(s) {already} are already merged")
    planned = {id(a) for a in chosen}
    check_merge_state(model, merged=lambda a: _merged(a) or id(a) in planned,
                      advice="Merge those sets together, in one call")
    work = [(mname, module, [a for a in fold_order(module) if id(a) in planned])
            for mname, module in _adapted(model)]
    work = [(mname, module, new) for mname, module, new in work if new]
    refuse_shared_storage(model, [module for _, module, _ in work])
    if unload:
        stacked = sorted({a.set_name for _, module, _ in work for a in fold_order(module)
                          if _merged(a)})
        if stacked:
            raise AdapterStateError(
                f"sets {stacked} are already merged into the same modules; unload=True would "
                "leave them without a way back. Unmerge them first, or unload them together"
            )
    elif not keep_original:
        for mname, module, new in work:
            if _originals(module):
                continue  # an earlier merge kept a copy: the undo stays exact
            for a in new:
                why = getattr(a, "irreversible_because", None)
                problem = why(module) if callable(why) else None
                if problem:
                    raise AdapterStateError(
                        f"set {a.set_name!r} cannot be merged into {mname} without a copy of the "
                        f"original weights: {problem}. Use keep_original=True"
                    )
    for _, module, new in work:
        order = fold_order(module)
        merged_before = [a for a in order if _merged(a)]
        # the rules checked above put every new adapter after those already merged
        assert all(order.index(m) < order.index(a) for m in merged_before for a in new)
        if keep_original and not unload and not merged_before:
            _keep_originals(module)
        _fold(module, new)
    if unload:
        for n in names:
            eject_adapters(model, n, keep_merged=True)
    return model


def unmerge_adapters(
    model: nn.Module, name: str | Sequence[str] | None = None, *, discard_changes: bool = False
) -> nn.Module:
    """Take merged set(s) ``name`` (default: every merged set) out of the base weights again.

    With the copy kept at merge time the weights come back bit for bit; base weights changed while
    merged are refused unless ``discard_changes``. Sets merged after (and on the same modules as)
    one that stays merged are refused, since the one left would no longer act first.
    """
    if name is None:
        names = sorted({a.set_name for _, _, a in iter_adapters(model) if _merged(a)})
    else:
        names = _selected(model, name)
    chosen = _chosen(model, names)
    not_merged = sorted({a.set_name for a in chosen if not _merged(a)})
    if not_merged:
        raise AdapterStateError(f"adapter set(s) {not_merged} are not merged")
    leaving = {id(a) for a in chosen}
    check_merge_state(model, merged=lambda a: _merged(a) and id(a) not in leaving,
                      advice="Unmerge those sets too")
    release(model, chosen, discard_changes=discard_changes)
    return model


__all__ = ["check_merge_state", "fold_order", "merge_adapters", "unmerge_adapters"]
