"""Patch adapters into any transformer, switch between named sets, and take them out again.

Mechanism: an adapter set never replaces a module. Each adapted module (a sublayer's output
projection, a projection a weight-level method targets, or the host a whole-model method chose)
gets a child ``ModuleDict`` named ``adarec_adapters`` and one forward hook that passes the
module's output through its active adapters. The original modules, their parameter names and
their ``state_dict`` keys stay where they were, so ``from_pretrained`` weights, gradient
checkpointing and ``torch.compile`` keep working, and `eject_adapters` restores the model bit for
bit. What a method needs beyond that hook (an adapter beside a sublayer reading the sublayer's
input, a network tapping the blocks, soft tokens rewriting the call) its own file adds in its
``attach`` step, with hooks that are methods of the adapter: that is how `eject_adapters` finds
them.

This module knows no method by name: everything method-specific comes from the method's
`adarec.registry.MethodDef`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, cast

from torch import nn

from .adapters.base import ADAPTERS_ATTR, AdapterLayer, apply_to_rows, hook_owner, is_adapter
from .errors import AdapterStateError
from .freezing import mark_only_adapters_trainable, restore_requires_grad_below
from .hf import guard_save_pretrained
from .hooks import add_forward_hook, iter_hooks, remove_hooks
from .merge_state import check_merge_state, release
from .planning import attach_point, module_widths, plan_sites
from .registry import AttachContext, BuildContext, SetState, method_info
from .sets import active_adapters, adapter_sets, iter_adapters
from .sites import Site
from .spec import AdapterSpec, as_spec

_injection_counter = itertools.count()


# ------------------------------------------------------------------------------ the hooks
def _first_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if args:
        return args[0]
    return next(iter(kwargs.values()), None)


def _apply_adapters(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
) -> Any:
    """Forward hook: run the module's active adapters on its output (first item of a tuple)."""
    adapters = getattr(module, ADAPTERS_ATTR)
    x = _first_input(args, kwargs)
    y = output[0] if isinstance(output, tuple) else output
    for adapter in adapters.values():
        if adapter.active:
            rows = getattr(adapter, "_mixed_rows", None)
            y = adapter(x, y) if rows is None else apply_to_rows(adapter, x, y, rows)
        elif getattr(adapter, "merged", False):  # switched off by hand: its update still acts
            raise AdapterStateError(
                f"adapter set {adapter.set_name!r} is merged into the base weights but switched "
                "off; unmerge_adapters(model) first, or switch it back on"
            )
    return (y, *output[1:]) if isinstance(output, tuple) else y


# ------------------------------------------------------------------------------ public API
def inject_adapters(
    model: nn.Module,
    spec: AdapterSpec | str | Mapping[str, Any],
    name: str = "default",
    *,
    freeze: bool = True,
    activate: bool = True,
    example_inputs: Any = None,
) -> nn.Module:
    """Add adapter set ``name`` built from ``spec`` to ``model`` in place and return ``model``.

    ``spec`` may be an `AdapterSpec`, a preset name or a dict. Every site is
    planned and verified (`plan_sites`) before the model changes. With ``freeze`` every
    non-adapter parameter is frozen (LayerNorms stay trainable when ``spec.tune_layernorm``);
    with ``activate`` the new set becomes the active one. ``example_inputs`` is a batch the
    model accepts, for the dry run that finds the sublayers of models outside the layout table
    (default: a generated tiny batch).
    """
    spec = as_spec(spec)
    if not isinstance(name, str) or not name or "." in name:
        raise AdapterStateError(
            f"adapter set name must be a non-empty string without '.': {name!r}"
        )
    if name in adapter_sets(model):
        raise AdapterStateError(
            f"adapter set {name!r} already exists; eject_adapters(model, {name!r}) first or "
            "choose another name"
        )
    merged = sorted({a.set_name for _, _, a in iter_adapters(model) if getattr(a, "merged", 0)})
    if activate and merged:
        raise AdapterStateError(
            f"adapter set(s) {merged} are merged into the base weights; activating {name!r} alone "
            "would switch them off while their update stays. unmerge_adapters(model) first, or "
            "inject with activate=False"
        )
    method = method_info(spec.method)
    plan = plan_sites(model, spec, example_inputs=example_inputs)  # checked before any change
    guard_save_pretrained()  # save_pretrained must not drop adapters silently
    shared = SetState()
    order = next(_injection_counter)
    names = {id(m): n for n, m in model.named_modules()}
    built: list[tuple[Site, nn.Module, Any, AdapterLayer]] = []
    for row in plan.rows:
        site = row.site
        module, d_in, d_out = attach_point(model, site, method)
        if any(m is module for _, m, _, _ in built):
            continue  # one module object listed twice (a block repeated in a ModuleList): one
            # adapter serves every call, as for ALBERT's shared layer
        stack = plan.stacks.get(site.stack) if site.stack is not None else None
        if stack is not None:
            d_in = d_out = stack.hidden
        entry = model.get_submodule(site.entry) if site.entry != site.target else module
        sublayer_in = d_in if entry is module else _in_width(entry, d_in)
        ctx = BuildContext(spec, site, d_in, d_out, shared, sublayer_in, stack, model)
        built.append((site, module, stack, method.build(ctx)))
    for site, module, stack, adapter in built:
        _attach(module, name, spec, adapter, site, order)
        adapter.attached_to = names[id(module)]  # relative to the injection root (see eject)
        if method.attach is not None:
            method.attach(adapter, AttachContext(model, module, site, stack))
    _hold_nested_tensors(model)
    if activate:
        set_active_adapters(model, name)
    else:
        for adapter in _adapters_of(model, name):
            adapter.active = False
    if freeze:
        mark_only_adapters_trainable(model)
    return model


def _in_width(module: nn.Module, default: int) -> int:
    dims = module_widths(module)
    return dims[0] if dims else default


def _attach(
    module: nn.Module, name: str, spec: AdapterSpec, adapter: AdapterLayer, site: Site, order: int
) -> None:
    """Put ``adapter`` into ``module``'s container (created with its hook on first use)."""
    adapter.set_name, adapter.spec = name, spec
    adapter.site, adapter.injection_order = site, order
    ref = next((p for n, p in module.named_parameters() if ADAPTERS_ATTR not in n.split(".")),
               None)
    if ref is not None:
        adapter.to(device=ref.device, dtype=ref.dtype)
    container = getattr(module, ADAPTERS_ATTR, None)
    if container is None:
        container = nn.ModuleDict()
        module.add_module(ADAPTERS_ATTR, container)
        add_forward_hook(module, _apply_adapters, with_kwargs=True)
    container[name] = adapter
    container.train(module.training)  # a model in eval mode must not run adapter dropout


def attach_layer(module: nn.Module, name: str, adapter: AdapterLayer, site: Site,
                 spec: Any = None) -> None:
    """Add ``adapter``, built outside the method registry (a TransRec set's own DTL), to set
    ``name`` on ``module``: switched, disabled, ejected and keyed with the set like a layer
    `inject_adapters` built."""
    _attach(module, name, spec, adapter, site, next(_injection_counter))
    cast(Any, adapter).attached_to = ""  # the module it is attached to is its injection root


def _adapters_of(model: nn.Module, name: str | None) -> list[AdapterLayer]:
    return [a for _, _, a in iter_adapters(model) if name is None or a.set_name == name]


def set_active_adapters(model: nn.Module, names: str | Sequence[str] | None) -> None:
    """Switch on exactly the named set(s) (``None``: none), e.g. one set per target domain."""
    wanted = [names] if isinstance(names, str) else list(names or [])
    present = adapter_sets(model)
    missing = [n for n in wanted if n not in present]
    if missing:
        raise AdapterStateError(f"no adapter set named {missing}; sets present: {list(present)}")
    check_merge_state(model, active=lambda a: a.set_name in wanted)
    for _, _, a in iter_adapters(model):
        a.active = a.set_name in wanted


@contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block the model computes as the base model (merged sets are refused)."""
    adapters = [a for _, _, a in iter_adapters(model)]
    if any(getattr(a, "merged", False) for a in adapters):
        raise AdapterStateError(
            "merged adapter weights are part of the base weights; "
            "unmerge_adapters(model) first"
        )
    saved = [a.active for a in adapters]
    try:
        for a in adapters:
            a.active = False
        yield model
    finally:
        for a, flag in zip(adapters, saved, strict=True):
            a.active = flag


def eject_adapters(
    model: nn.Module, name: str | None = None, *, keep_merged: bool = False
) -> nn.Module:
    """Remove adapter set ``name`` (all sets when ``None``) and every hook adarec added.

    Merged sets are unmerged first (bit for bit from the copy `merge_adapters` kept; see
    `adarec.merge`), unless ``keep_merged``, which leaves their update in the base weights. With
    all sets gone the model's modules, ``state_dict`` keys, weights, ``requires_grad`` flags,
    hooks and outputs are those it had before `inject_adapters`, also when the sets were injected
    into submodules of ``model``. Ejecting from *inside* the module a set was injected into is
    refused: that set's hooks and remembered flags live above it.
    """
    present = adapter_sets(model)
    if name is not None and name not in present:
        raise AdapterStateError(f"no adapter set named {name!r}; sets present: {list(present)}")
    leaving = [(mname, module, a) for mname, module, a in iter_adapters(model)
               if name is None or a.set_name == name]
    inside = sorted({a.set_name for mname, _, a in leaving if _injected_outside(mname, a)})
    if inside:
        raise AdapterStateError(
            f"adapter set(s) {inside} were injected into a module that contains "
            f"{type(model).__name__}; eject them from that module (or one containing it)"
        )
    release(model, [a for _, _, a in leaving], keep_merged=keep_merged)  # checks, then unmerges
    for _, module, adapter in leaving:
        container = getattr(module, ADAPTERS_ATTR)
        del container[adapter.set_name]
        if len(container) == 0:
            delattr(module, ADAPTERS_ATTR)
            remove_hooks(module, lambda fn: fn is _apply_adapters)
    gone_sets = {a.set_name for _, _, a in leaving}
    live = {id(a) for _, _, a in iter_adapters(model)}

    def orphaned(fn: Any) -> bool:  # an adapter of an ejected set that is no longer in the model
        owner = hook_owner(fn)
        return (isinstance(owner, nn.Module) and is_adapter(owner)
                and owner.set_name in gone_sets and id(owner) not in live)

    for m in model.modules():
        remove_hooks(m, orphaned)
    _release_nested_tensors(model)
    restore_requires_grad_below(model)
    return model


def _injected_outside(mname: str, adapter: AdapterLayer) -> bool:
    """Whether ``adapter``, found at ``mname`` below the module being ejected from, was injected
    into a module strictly containing that one: its module's name relative to the injection root
    (``attached_to``) is then a longer name ending with ``mname``."""
    at = getattr(adapter, "attached_to", None)
    if not isinstance(at, str) or at == mname:
        return False
    return len(at) > len(mname) and (mname == "" or at.endswith("." + mname))


# ------------------------------------------------------------- torch's nested-tensor path
_NESTED = "_adarec_use_nested_tensor"


def _holds_adapters(module: nn.Module) -> bool:
    return any(ADAPTERS_ATTR in m._modules for m in module.modules())


def _hold_nested_tensors(model: nn.Module) -> None:
    """torch's ``nn.TransformerEncoder`` turns a padded batch into a nested (ragged) tensor in
    eval mode and runs its layers on that; adapters (networks indexing positions, learned scales
    per position) cannot work on it. Encoders holding adapters take the ordinary padded
    path instead (same results at real positions), until the adapters are ejected."""
    for m in model.modules():
        if (isinstance(m, nn.TransformerEncoder) and getattr(m, "use_nested_tensor", False)
                and _holds_adapters(m)):
            m.__dict__[_NESTED] = m.use_nested_tensor
            m.use_nested_tensor = False


def _release_nested_tensors(model: nn.Module) -> None:
    for m in model.modules():
        if _NESTED in m.__dict__ and not _holds_adapters(m):
            m.use_nested_tensor = m.__dict__.pop(_NESTED)


def count_forward_hooks(model: nn.Module) -> int:
    """How many adarec hooks are installed (used by tests to prove a clean eject)."""
    n = 0
    for m in model.modules():
        for fn in iter_hooks(m):
            owner = hook_owner(fn)
            n += fn is _apply_adapters or (isinstance(owner, nn.Module) and is_adapter(owner))
    return n


__all__ = [
    "Site",
    "active_adapters",
    "adapter_sets",
    "adapters_disabled",
    "attach_layer",
    "eject_adapters",
    "inject_adapters",
    "iter_adapters",
    "plan_sites",
    "set_active_adapters",
]
