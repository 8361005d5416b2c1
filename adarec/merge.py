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

from collections.abc import Sequence

from torch import nn

from .adapters.base import AdapterLayer
from .errors import AdapterStateError
from .inject import active_adapters, adapter_sets, eject_adapters, iter_adapters
from .merge_state import (
    ORIGINAL_PREFIX,
    adapted_modules,
    check_merge_state,
    fold_adapters,
    fold_order,
    is_merged,
    keep_originals,
    kept_originals,
    merge_state_problems,
    refuse_shared_storage,
    release,
)
from .registry import method_info


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
    already = sorted({a.set_name for a in chosen if is_merged(a)})
    if already:
        raise AdapterStateError(f"adapter set(s) {already} are already merged")
    planned = {id(a) for a in chosen}
    check_merge_state(model, merged=lambda a: is_merged(a) or id(a) in planned,
                      advice="Merge those sets together, in one call")
    work = [(mname, module, [a for a in fold_order(module) if id(a) in planned])
            for mname, module in adapted_modules(model)]
    work = [(mname, module, new) for mname, module, new in work if new]
    refuse_shared_storage(model, [module for _, module, _ in work])
    if unload:
        stacked = sorted({a.set_name for _, module, _ in work for a in fold_order(module)
                          if is_merged(a)})
        if stacked:
            raise AdapterStateError(
                f"sets {stacked} are already merged into the same modules; unload=True would "
                "leave them without a way back. Unmerge them first, or unload them together"
            )
    elif not keep_original:
        for mname, module, new in work:
            if kept_originals(module):
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
        merged_before = [a for a in order if is_merged(a)]
        # the rules checked above put every new adapter after those already merged
        assert all(order.index(m) < order.index(a) for m in merged_before for a in new)
        if keep_original and not unload and not merged_before:
            keep_originals(module)
        fold_adapters(module, new)
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
        names = sorted({a.set_name for _, _, a in iter_adapters(model) if is_merged(a)})
    else:
        names = _selected(model, name)
    chosen = _chosen(model, names)
    not_merged = sorted({a.set_name for a in chosen if not is_merged(a)})
    if not_merged:
        raise AdapterStateError(f"adapter set(s) {not_merged} are not merged")
    leaving = {id(a) for a in chosen}
    check_merge_state(model, merged=lambda a: is_merged(a) and id(a) not in leaving,
                      advice="Unmerge those sets too")
    release(model, chosen, discard_changes=discard_changes)
    return model


__all__ = ["ORIGINAL_PREFIX", "check_merge_state", "fold_order", "merge_adapters",
           "merge_state_problems", "refuse_shared_storage", "release", "unmerge_adapters"]
