"""Patch adapters into any transformer, switch between named sets, and take them out again.

Mechanism: an adapter set never replaces a module. Each adapted module (an attention or FFN
output projection, or a LoRA target) gets a child ``ModuleDict`` named ``adarec_adapters`` and one
forward hook that passes the module's output through its active adapters. The original modules,
their parameter names and their ``state_dict`` keys stay where they were, so
``from_pretrained`` weights, ``save_pretrained`` and gradient checkpointing keep working, and
`eject_adapters` restores the model bit for bit. A parallel adapter also puts a forward pre-hook on
its sublayer's entry module to read the sublayer input.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from torch import nn

from .adapters import ADAPTER_BUILDERS
from .adapters.base import AdapterLayer, is_adapter
from .errors import AdapterStateError, TargetNotFoundError, UnsupportedModuleError
from .layouts import is_linear_like, iter_blocks
from .spec import AdapterSpec, as_spec, normalise_layers

ADAPTERS_ATTR = "adarec_adapters"
_injection_counter = itertools.count()


@dataclass(frozen=True)
class Site:
    """One place an adapter goes: the module whose output it changes (``target``), the module
    whose input a parallel adapter reads (``entry``), and for reporting, block and position."""

    target: str
    entry: str
    position: str
    block: int | None = None


# ------------------------------------------------------------------------------- planning
def plan_sites(model: nn.Module, spec: AdapterSpec) -> list[Site]:
    """Where ``spec`` would put adapters in ``model``, without changing anything."""
    if spec.target_modules is not None:
        return _sites_by_name(model, spec)
    sites: list[Site] = []
    by_stack: dict[str, list[Any]] = {}
    for b in iter_blocks(model):
        by_stack.setdefault(b.stack, []).append(b)
    for blocks in by_stack.values():
        for i in normalise_layers(spec.layers, len(blocks)):
            names = blocks[i].names
            if spec.method == "lora":
                for role in spec.lora_targets:
                    key = {"o": "mha_out"}.get(role, role)
                    target = names.get(key)
                    if target is None:
                        raise TargetNotFoundError(
                            f"LoRA target role {role!r} has no module in block {i} of "
                            f"{type(model).__name__}; roles found: "
                            f"{ {k: v for k, v in names.items() if v} }"
                        )
                    sites.append(Site(target, target, role, i))
            else:
                for pos in spec.positions:
                    target, entry = names[f"{pos}_out"], names[f"{pos}_in"]
                    assert target is not None
                    sites.append(Site(target, entry or target, pos, i))
    unique: dict[str, Site] = {}
    for s in sites:
        unique.setdefault(s.target, s)  # fused qkv: one LoRA for q and v
    return list(unique.values())


def _sites_by_name(model: nn.Module, spec: AdapterSpec) -> list[Site]:
    tm = spec.target_modules
    names = [n for n, _ in model.named_modules() if n and ADAPTERS_ATTR not in n.split(".")]
    if isinstance(tm, str):
        hits = [n for n in names if re.fullmatch(tm, n)]
    else:
        assert tm is not None
        hits = [n for n in names if any(n == t or n.endswith("." + t) for t in tm)]
    if not hits:
        candidates = [n for n in names if is_linear_like(model.get_submodule(n))][:40]
        raise TargetNotFoundError(
            f"AdapterSpec.target_modules={tm!r} matched no module of {type(model).__name__}; "
            f"candidate linear modules: {candidates}"
        )
    return [Site(n, n, "module") for n in hits]


def _parent(model: nn.Module, name: str) -> nn.Module | None:
    if "." not in name:
        return model if name else None
    return model.get_submodule(name.rsplit(".", 1)[0])


def _dims(module: nn.Module) -> tuple[int, int] | None:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D":
        return int(module.weight.shape[0]), int(module.weight.shape[1])
    if isinstance(module, nn.MultiheadAttention):
        return module.embed_dim, module.embed_dim
    return None


def _attach_point(model: nn.Module, site: Site, spec: AdapterSpec) -> tuple[nn.Module, int, int]:
    """The module to hook and its (in, out) widths, refusing modules a hook cannot adapt."""
    module = model.get_submodule(site.target)
    parent = _parent(model, site.target)
    if isinstance(parent, nn.MultiheadAttention) and module is parent.out_proj:
        # nn.MultiheadAttention reads out_proj.weight through F.linear: a hook on out_proj would
        # never run. The MHA's own output *is* out_proj's output, so bottleneck adapters go there.
        if spec.method == "lora":
            raise UnsupportedModuleError(
                f"{site.target} is the out_proj of an nn.MultiheadAttention, which computes "
                "through F.linear on its weights, so LoRA cannot wrap it; use a bottleneck method"
            )
        module = parent
    if isinstance(module, nn.MultiheadAttention) and spec.method == "lora":
        raise UnsupportedModuleError(
            f"{site.target} is an nn.MultiheadAttention (fused in_proj_weight read through "
            "F.linear); LoRA needs nn.Linear or Conv1D targets"
        )
    dims = _dims(module)
    if dims is None:
        raise UnsupportedModuleError(
            f"cannot adapt {site.target} of type {type(module).__name__}: adarec adapts nn.Linear, "
            "transformers' Conv1D and nn.MultiheadAttention outputs"
        )
    return module, dims[0], dims[1]


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
            y = adapter(x, y)
    return (y, *output[1:]) if isinstance(output, tuple) else y


def _remove_hooks(hooks: dict[int, Any], extra: Iterable[dict[int, Any]], pred: Any) -> None:
    for key, fn in list(hooks.items()):
        if pred(fn):
            del hooks[key]
            for d in extra:
                d.pop(key, None)


# ------------------------------------------------------------------------------ public API
def inject_adapters(
    model: nn.Module,
    spec: AdapterSpec | str | Mapping[str, Any],
    name: str = "default",
    *,
    freeze: bool = True,
    activate: bool = True,
) -> nn.Module:
    """Add adapter set ``name`` built from ``spec`` to ``model`` in place and return ``model``.

    ``spec`` may be an `AdapterSpec`, a preset name (``"houlsby"``) or a dict. With ``freeze``
    every non-adapter parameter is frozen (LayerNorms of adapted blocks stay trainable when
    ``spec.tune_layernorm``); with ``activate`` the new set becomes the active one.
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
    sites = plan_sites(model, spec)
    attach = [_attach_point(model, s, spec) for s in sites]  # validate all before changing any

    builder = ADAPTER_BUILDERS[spec.method]
    shared: dict[str, Any] = {}
    order = next(_injection_counter)
    for site, (module, d_in, d_out) in zip(sites, attach, strict=True):
        entry = model.get_submodule(site.entry)
        if spec.method == "parallel" and entry is not module:
            entry_dims = _dims(entry)
            d_in = entry_dims[0] if entry_dims else d_out
        adapter = builder(spec, d_in, d_out, shared)
        adapter.set_name, adapter.spec = name, spec
        adapter.site, adapter.injection_order = site, order
        ref = next((p for p in module.parameters(recurse=False)), None)
        if ref is not None:
            adapter.to(device=ref.device, dtype=ref.dtype)
        container = getattr(module, ADAPTERS_ATTR, None)
        if container is None:
            container = nn.ModuleDict()
            module.add_module(ADAPTERS_ATTR, container)
            module.register_forward_hook(_apply_adapters, with_kwargs=True)
        container[name] = adapter
        if spec.method == "parallel" and entry is not module:
            entry.register_forward_pre_hook(adapter.capture, with_kwargs=True)
    if activate:
        set_active_adapters(model, name)
    else:
        for adapter in _adapters_of(model, name):
            adapter.active = False
    if freeze:
        from .freeze import mark_only_adapters_trainable

        mark_only_adapters_trainable(model)
    return model


def iter_adapters(model: nn.Module) -> Iterator[tuple[str, nn.Module, AdapterLayer]]:
    """``(name of adapted module, adapted module, adapter)`` for every adapter in ``model``."""
    for mname, module in model.named_modules():
        container = module._modules.get(ADAPTERS_ATTR)
        if isinstance(container, nn.ModuleDict):
            for adapter in container.values():
                yield mname, module, adapter  # type: ignore[misc]


def _adapters_of(model: nn.Module, name: str | None) -> list[AdapterLayer]:
    return [a for _, _, a in iter_adapters(model) if name is None or a.set_name == name]


def adapter_sets(model: nn.Module) -> dict[str, AdapterSpec]:
    """The adapter sets present in ``model``: name -> spec, in injection order."""
    out: dict[str, tuple[int, AdapterSpec]] = {}
    for _, _, a in iter_adapters(model):
        out.setdefault(a.set_name, (getattr(a, "injection_order", 0), a.spec))
    return {n: spec for n, (_, spec) in sorted(out.items(), key=lambda kv: kv[1][0])}


def active_adapters(model: nn.Module) -> list[str]:
    """Names of the sets whose adapters are switched on."""
    return list(dict.fromkeys(a.set_name for _, _, a in iter_adapters(model) if a.active))


def set_active_adapters(model: nn.Module, names: str | Sequence[str] | None) -> None:
    """Switch on exactly the named set(s) (``None``: none), e.g. one set per target domain."""
    wanted = [names] if isinstance(names, str) else list(names or [])
    present = adapter_sets(model)
    missing = [n for n in wanted if n not in present]
    if missing:
        raise AdapterStateError(f"no adapter set named {missing}; sets present: {list(present)}")
    for _, _, a in iter_adapters(model):
        a.active = a.set_name in wanted


@contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block the model computes as the base model (merged LoRA is refused)."""
    adapters = [a for _, _, a in iter_adapters(model)]
    if any(getattr(a, "merged", False) for a in adapters):
        raise AdapterStateError(
            "merged LoRA weights are part of the base weights; unmerge_adapters(model) first"
        )
    saved = [a.active for a in adapters]
    try:
        for a in adapters:
            a.active = False
        yield model
    finally:
        for a, flag in zip(adapters, saved, strict=True):
            a.active = flag


def eject_adapters(model: nn.Module, name: str | None = None) -> nn.Module:
    """Remove adapter set ``name`` (all sets when ``None``) and every hook adarec added.

    Merged LoRA sets are unmerged first. With all sets gone the model's modules, ``state_dict``
    keys, ``requires_grad`` flags and outputs are those it had before `inject_adapters`.
    """
    present = adapter_sets(model)
    if name is not None and name not in present:
        raise AdapterStateError(f"no adapter set named {name!r}; sets present: {list(present)}")
    removed: list[nn.Module] = []
    for _, module, adapter in list(iter_adapters(model)):
        if name is not None and adapter.set_name != name:
            continue
        if getattr(adapter, "merged", False):
            adapter.unmerge(module)  # type: ignore[operator]
        container = getattr(module, ADAPTERS_ATTR)
        del container[adapter.set_name]
        removed.append(adapter)
        if len(container) == 0:
            delattr(module, ADAPTERS_ATTR)
            _remove_hooks(
                module._forward_hooks,
                (module._forward_hooks_with_kwargs, module._forward_hooks_always_called),
                lambda fn: fn is _apply_adapters,
            )
    gone = {id(a) for a in removed}
    for m in model.modules():
        _remove_hooks(
            m._forward_pre_hooks, (m._forward_pre_hooks_with_kwargs,),
            lambda fn: id(getattr(fn, "__self__", None)) in gone,
        )
    if not adapter_sets(model):
        from .freeze import restore_requires_grad

        restore_requires_grad(model)
    return model


def count_forward_hooks(model: nn.Module) -> int:
    """How many adarec hooks are installed (used by tests to prove a clean eject)."""
    n = 0
    for m in model.modules():
        n += sum(fn is _apply_adapters for fn in m._forward_hooks.values())
        n += sum(is_adapter(getattr(fn, "__self__", nn.Module())) for fn in
                 m._forward_pre_hooks.values())
    return n


__all__ = [
    "Site",
    "active_adapters",
    "adapter_sets",
    "adapters_disabled",
    "eject_adapters",
    "inject_adapters",
    "iter_adapters",
    "plan_sites",
    "set_active_adapters",
]
