"""Where a spec's adapters go in a model: `plan_sites` turns (model, spec) into a verified `Plan`.

Block-wise methods are placed from each block's roles (`adarec.layouts.iter_blocks`: the layout
table, else a traced dry run); whole-model methods by their own ``place``; an explicit
``target_modules`` by name. Every site is checked before anything is attached: nothing is planned
on a module a hook cannot adapt, and a serial adapter only on a module whose output width is the
residual width.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torch import nn

from .adapters.base import ADAPTERS_ATTR
from .errors import TargetNotFoundError, UnsupportedModuleError
from .layouts import is_linear_like, iter_blocks, module_widths
from .registry import MethodDef, PlaceContext, Placement, method_info
from .sites import BlockSites, Plan, PlannedSite, Site
from .spec import AdapterSpec, as_spec, normalise_layers
from .stacks import StackInfo, stack_infos


def blocks_by_stack(model: nn.Module, example_inputs: Any = None) -> dict[str, list[BlockSites]]:
    """The blocks of every block stack, with their roles resolved."""
    by_stack: dict[str, list[BlockSites]] = {}
    for b in iter_blocks(model, example_inputs):
        by_stack.setdefault(b.stack, []).append(b)
    return by_stack


def model_stacks(model: nn.Module, example_inputs: Any = None) -> list[StackInfo]:
    """`StackInfo` of every block stack of ``model`` (for whole-model methods)."""
    return stack_infos(model, blocks_by_stack(model, example_inputs))


def plan_sites(model: nn.Module, spec: AdapterSpec | str | Mapping[str, Any], *,
               example_inputs: Any = None) -> Plan:
    """Where ``spec`` would put adapters in ``model``, verified, without changing anything.

    ``print(plan_sites(model, spec))`` shows a table (block, role, module, widths, method).
    Models outside the layout table are traced: run once on ``example_inputs`` (a dict of
    keyword arguments, a tuple of positional ones, or one tensor), by default a generated tiny
    batch.
    """
    spec = as_spec(spec)
    method = method_info(spec.method)
    if method.placement is Placement.MODEL:
        stacks = model_stacks(model, example_inputs)
        assert method.place is not None
        sites = method.place(PlaceContext(model, spec, stacks))
        widths = {s.name: s.hidden for s in stacks}
        rows = [PlannedSite(s, type(model.get_submodule(s.target)).__name__,
                            widths.get(s.stack or "", 0), widths.get(s.stack or "", 0))
                for s in sites]
        return Plan(spec.method, rows, "the method's own placement", widths,
                    {s.name: s for s in stacks})
    residual: dict[str, int] = {}
    if spec.target_modules is not None:
        sites, source = _sites_by_name(model, spec), "target_modules"
    else:
        sites, source, residual = _sites_by_role(model, spec, method, example_inputs)
    rows = []
    for site in sites:
        module, d_in, d_out = attach_point(model, site, method)
        rows.append(PlannedSite(site, type(module).__name__, d_in, d_out))
    return Plan(spec.method, rows, source, residual)


def _sites_by_role(model: nn.Module, spec: AdapterSpec, method: MethodDef, example_inputs: Any
                   ) -> tuple[list[Site], str, dict[str, int]]:
    assert method.where is not None
    wanted = method.where(spec)
    sites: list[Site] = []
    sources: set[str] = set()
    residual: dict[str, int] = {}
    for stack, blocks in blocks_by_stack(model, example_inputs).items():
        for i in normalise_layers(spec.layers, len(blocks)):
            b = blocks[i]
            sources.add(b.source)
            if b.width is not None:
                residual[stack] = b.width
            if method.placement is Placement.SUBLAYER:
                sites += _sublayer_sites(model, b, wanted, method.name)
            else:
                sites += _projection_sites(model, b, wanted, method.name)
    return sites, " + ".join(sorted(sources)), residual


def _refusal(model: nn.Module, b: BlockSites, what: str) -> TargetNotFoundError:
    seen = b.describe or "roles: " + str({k: v for k, v in b.names.items() if v})
    return TargetNotFoundError(
        f"{what} in block {b.name} of {type(model).__name__} (found by {b.source}).\n{seen}\n"
        f"Pass AdapterSpec(target_modules=(...)) with the module names to adapt (a "
        "sequence of name suffixes, e.g. ('attn.proj', 'mlp.fc2'), or a regex), or register "
        "the family with adarec.register_layout(...)."
    )


def _sublayer_sites(model: nn.Module, b: BlockSites, wanted: tuple[str, ...], method: str
                    ) -> list[Site]:
    """One site per sublayer of each wanted kind, on its exit, which must have the residual
    width (the adapter's output replaces the sublayer's)."""
    out = []
    for pos in wanted:
        found = [s for s in b.sublayers if s.kind == pos]
        if not found:
            kinds = [s.kind for s in b.sublayers]
            raise _refusal(model, b, f"{method} needs a {pos!r} sublayer, and there is none "
                           f"(sublayers seen: {kinds})")
        for sub in found:
            dims = module_widths(model.get_submodule(sub.exit))
            if b.width is not None and dims is not None and dims[1] != b.width:
                raise _refusal(
                    model, b, f"the {pos!r} sublayer's exit {sub.exit} outputs width {dims[1]}, "
                    f"not the residual width {b.width}, so {method} cannot follow it")
            out.append(Site(sub.exit, sub.entry, pos, b.index, b.stack))
    return out


def _projection_sites(model: nn.Module, b: BlockSites, roles: tuple[str, ...], method: str
                      ) -> list[Site]:
    """One site per distinct module. Roles resolve to distinct identified projections, or to one
    projection that fuses them (then the site lists the roles it serves)."""
    names = b.names
    by_target: dict[str, list[str]] = {}
    for role in roles:
        key = "mha_out" if role == "o" else role
        target = names.get(key)
        if target is None:
            why = b.unresolved.get(key, "no module plays it")
            raise _refusal(model, b, f"{method} target role {role!r} is not settled: {why}")
        by_target.setdefault(target, []).append(role)
    out = []
    for target, served in by_target.items():
        fused = b.fused if b.fused and target == names.get(b.fused[0]) else ()
        if len(served) > 1 and not set(served) <= set(fused):
            raise _refusal(model, b, f"{method} roles {served} all resolve to {target}, which is "
                           "not a known fused projection")
        widths = b.fused_widths if fused else ()
        out.append(Site(target, target, served[0], b.index, b.stack, tuple(served), fused,
                        widths))
    return out


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


def attach_point(model: nn.Module, site: Site, method: MethodDef) -> tuple[nn.Module, int, int]:
    """The module to hook for ``site`` and its (in, out) widths, refusing modules a hook cannot
    adapt."""
    module = model.get_submodule(site.target)
    if method.placement is Placement.MODEL:
        return module, 0, 0
    parent = _parent(model, site.target)
    weight_based = method.placement is Placement.PROJECTION
    if isinstance(parent, nn.MultiheadAttention) and module is parent.out_proj:
        # nn.MultiheadAttention reads out_proj.weight through F.linear: a hook on out_proj would
        # never run. The MHA's own output *is* out_proj's output, so output adapters go there.
        if weight_based:
            raise UnsupportedModuleError(
                f"{site.target} is the out_proj of an nn.MultiheadAttention, which computes "
                f"through F.linear on its weights, so {method.name} cannot wrap it; use a "
                "sublayer method"
            )
        module = parent
    if isinstance(module, nn.MultiheadAttention) and weight_based:
        raise UnsupportedModuleError(
            f"{site.target} is an nn.MultiheadAttention (fused in_proj_weight read through "
            f"F.linear); {method.name} needs nn.Linear or Conv1D targets"
        )
    dims = module_widths(module)
    if dims is None:
        raise UnsupportedModuleError(
            f"cannot adapt {site.target} of type {type(module).__name__}: adarec adapts nn.Linear, "
            "transformers' Conv1D and nn.MultiheadAttention outputs"
        )
    return module, dims[0], dims[1]


__all__ = ["Plan", "attach_point", "model_stacks", "plan_sites"]
