"""Patch adapters into any transformer, switch between named sets, and take them out again.

Mechanism: an adapter set never replaces a module. Each adapted module (an attention or FFN
output projection, or a LoRA target) gets a child ``ModuleDict`` named ``adarec_adapters`` and one
forward hook that passes the module's output through its active adapters. The original modules,
their parameter names and their ``state_dict`` keys stay where they were, so
``from_pretrained`` weights, ``save_pretrained`` and gradient checkpointing keep working, and
`eject_adapters` restores the model bit for bit. A parallel adapter also puts a forward pre-hook on
its sublayer's entry module to read the sublayer input, and (IA)^3 one on the FFN output projection
to scale its input.

The model-level methods use the same containers on one host module per block stack: K-Adapter
lives on the last block (whose output it replaces) with forward hooks on the tapped blocks and a
pre-hook on the module the user calls (to read the padding mask); prompt tuning lives on the
embeddings module with a pre-hook that extends ``attention_mask`` and forward hooks that strip the
prompt positions again. Every extra hook is a bound method of its adapter, which is how
`eject_adapters` finds and removes it.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

from torch import nn

from .adapters import ADAPTER_BUILDERS
from .adapters.base import (
    AdapterLayer,
    arg_locator,
    base_weight,
    hook_owner,
    is_adapter,
    positional_names,
)
from .adapters.bottleneck import BottleneckAdapter
from .adapters.ia3 import IA3Adapter
from .adapters.kadapter import MASK_ARGS
from .errors import AdapterStateError, TargetNotFoundError, UnsupportedModuleError
from .layouts import BlockSites, is_linear_like, iter_blocks
from .spec import MODEL_METHODS, AdapterSpec, as_spec, normalise_layers

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
    if spec.method in MODEL_METHODS:
        return [p.site for p in _plan_model_level(model, spec)]
    if spec.target_modules is not None:
        return _sites_by_name(model, spec)
    sites: list[Site] = []
    for blocks in _stacks(model).values():
        for i in normalise_layers(spec.layers, len(blocks)):
            names = blocks[i].names
            if spec.method == "ia3":
                sites.extend(_ia3_sites(model, names, spec, i))
            elif spec.method == "lora":
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
        first = unique.setdefault(s.target, s)  # fused qkv: one LoRA for q and v
        if first is not s and s.position.startswith("qkv:"):  # (IA)^3: one vector for k and v
            unique[s.target] = Site(s.target, s.entry, f"{first.position}+{s.position[4:]}",
                                    s.block)
    return list(unique.values())


def _stacks(model: nn.Module) -> dict[str, list[BlockSites]]:
    by_stack: dict[str, list[BlockSites]] = {}
    for b in iter_blocks(model):
        by_stack.setdefault(b.stack, []).append(b)
    return by_stack


def _ia3_sites(model: nn.Module, names: dict[str, str | None], spec: AdapterSpec,
               block: int) -> list[Site]:
    """(IA)^3 sites; in a fused q/k/v projection the position says which thirds to scale."""
    fused = names.get("q") is not None and names.get("q") == names.get("k") == names.get("v")
    sites = []
    for role in spec.ia3_targets:
        target = names.get(role)
        if target is None:
            raise TargetNotFoundError(
                f"(IA)^3 target role {role!r} has no module in block {block} of "
                f"{type(model).__name__}; roles found: { {k: v for k, v in names.items() if v} }"
            )
        position = f"qkv:{role}" if fused and role in ("k", "v") else role
        sites.append(Site(target, target, position, block))
    return sites


@dataclass(frozen=True)
class _Placement:
    """A model-level adapter: its host (``site.target``), the module the user calls (``root``,
    where the mask is read or extended), the module returning the stack's output (``owner``), the
    width, and for K-Adapter the tapped blocks (``slots`` -> ``taps``) and causality."""

    site: Site
    hidden: int
    root: str
    owner: str
    slots: tuple[int, ...] = ()
    taps: tuple[str, ...] = ()
    causal: bool = False
    embeds_input: bool = False


_CAUSAL_MODEL_TYPES = {"clip_text_model"}
"""Causal models whose attention modules do not say so (CLIP's text tower builds a causal mask)."""


def _ancestors(name: str) -> list[str]:
    """Names of the modules containing ``name``, nearest first, ending with the root ``""``."""
    parts = name.split(".") if name else []
    return [".".join(parts[:i]) for i in range(len(parts) - 1, -1, -1)]


def _call_root(model: nn.Module, stack: str, mask_args: tuple[str, ...]) -> str:
    """The module a user calls for this stack: the outermost enclosing Hugging Face model (some,
    like DINOv2's encoder, are PreTrainedModels inside one), else the nearest enclosing module
    whose forward takes a mask (SASRec's ``mask``), else the root."""
    from transformers import PreTrainedModel

    ancestors = _ancestors(stack)
    for name in reversed(ancestors):
        if isinstance(model.get_submodule(name), PreTrainedModel):
            return name
    for name in ancestors:
        if arg_locator(model.get_submodule(name), mask_args) is not None:
            return name
    return ""


def _detect_causal(model: nn.Module, stack: str) -> bool:
    """A model is causal when a module on the way to its blocks, or in them, has
    ``is_causal=True`` (HF decoders; give SASRec-like encoders that attribute), or its config
    says it is a decoder."""
    path = [model.get_submodule(n) for n in _ancestors(stack)]
    for m in [*path, *model.get_submodule(stack).modules()]:
        if getattr(m, "is_causal", None) is True:
            return True
        config = getattr(m, "config", None)
        if getattr(config, "is_decoder", False) is True:
            return True
        if getattr(config, "model_type", None) in _CAUSAL_MODEL_TYPES:
            return True
    return False


def _stack_owner(model: nn.Module, stack: str) -> str:
    """The module that returns the stack's output: the nearest ancestor that is neither a
    ModuleList nor an element of one (ALBERT calls its layer *group* once per layer)."""
    def listed(name: str) -> bool:
        parent = _ancestors(name)[0] if name else None
        return parent is not None and isinstance(model.get_submodule(parent), nn.ModuleList)

    return next(a for a in _ancestors(stack)
                if not isinstance(model.get_submodule(a), nn.ModuleList) and not listed(a))


def _plan_model_level(model: nn.Module, spec: AdapterSpec) -> list[_Placement]:
    stacks = _stacks(model)
    if spec.method == "prompt" and len(stacks) != 1:
        raise UnsupportedModuleError(
            f"prompt tuning needs a model with one block stack; {type(model).__name__} has "
            f"{list(stacks)}: inject into the submodel that encodes the input"
        )
    out = []
    for stack, blocks in stacks.items():
        n = len(blocks)
        root = _call_root(model, stack, MASK_ARGS)
        config = getattr(model.get_submodule(root), "config", None)
        depth = getattr(config, "num_hidden_layers", None)
        if spec.method in ("kadapter", "side") and isinstance(depth, int) and depth != n:
            raise UnsupportedModuleError(
                f"{type(model).__name__} runs its {n} block module(s) {depth} times (shared "
                f"layers, as in ALBERT); {spec.method} needs one call per block"
            )
        ffn_out = blocks[-1].names["ffn_out"]
        assert ffn_out is not None
        dims = _dims(model.get_submodule(ffn_out))
        if dims is None:
            raise UnsupportedModuleError(
                f"cannot tell the hidden size of {type(model).__name__} from {ffn_out}"
            )
        owner = _stack_owner(model, stack)
        block_name = [f"{stack}.{b.index}" if stack else str(b.index) for b in blocks]
        if spec.method == "kadapter":
            slots = normalise_layers(spec.kadapter_layers, n, "kadapter_layers")
            causal = spec.kadapter_causal
            if causal is None:
                causal = _detect_causal(model, stack)
            site = Site(block_name[-1], root, "kadapter", n - 1)
            out.append(_Placement(site, dims[1], root, owner, tuple(slots),
                                  tuple(block_name[i] for i in slots), causal))
        elif spec.method == "side":  # TEMP(side): until the method registry
            from .adapters.side import SideOptions, side_taps

            if _detect_causal(model, stack):
                raise UnsupportedModuleError(
                    f"{type(model).__name__} is causal; a side network pools over the whole "
                    "sequence, which would let a position see later ones: use it on encoders")
            slots = side_taps(spec.layers, n, SideOptions.from_spec(spec).stride)
            out.append(_Placement(Site(root, root, "side"), dims[1], root, owner, tuple(slots),
                                  tuple(block_name[i] for i in slots)))
        else:
            out.append(_prompt_placement(model, root, owner, stack, dims[1]))
    return out


def _input_embeddings(module: nn.Module) -> nn.Module | None:
    getter = getattr(module, "get_input_embeddings", None)
    try:
        return getter() if callable(getter) else None
    except NotImplementedError:  # transformers' default for models without a word embedding
        return None


def _prompt_placement(model: nn.Module, root: str, owner: str, stack: str, hidden: int
                      ) -> _Placement:
    """Through ``inputs_embeds`` when the model takes them and has a word embedding, else on
    the output of the embeddings module."""
    root_module = model.get_submodule(root)
    emb = _input_embeddings(root_module)
    takes = all(arg_locator(root_module, (a,)) for a in ("input_ids", "inputs_embeds"))
    if isinstance(emb, nn.Embedding) and takes:
        host = next(n for n, m in model.named_modules() if m is emb)
        return _Placement(Site(host, root, "prompt"), emb.embedding_dim, root, owner,
                          embeds_input=True)
    host = _embeddings_module(model, root, stack, emb)
    return _Placement(Site(host, root, "prompt"), hidden, root, owner)


def _embeddings_module(model: nn.Module, root: str, stack: str, emb: nn.Module | None) -> str:
    """The module whose output enters the block stack: the outermost module around the input
    (word or patch) embedding that does not also contain the blocks (ViT's ``embeddings``)."""
    name = next((n for n, m in model.named_modules() if m is emb), None) if emb else None
    if name is None:  # no get_input_embeddings(): a child of the model called "*embed*"
        prefix = f"{root}." if root else ""
        kids = [f"{prefix}{n}" for n, _ in model.get_submodule(root).named_children()
                if "embed" in n.lower()]
        name = kids[0] if len(kids) == 1 else None
    if name is None:
        raise UnsupportedModuleError(
            f"prompt tuning cannot find the embeddings of "
            f"{type(model.get_submodule(root)).__name__}: it has no get_input_embeddings() and "
            "no single child module named '*embed*'"
        )
    while True:
        parent = _ancestors(name)[0]
        if parent == root or stack.startswith(parent + ".") or parent == "":
            return name
        name = parent


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
        return int(base_weight(module).shape[0]), int(base_weight(module).shape[1])
    if isinstance(module, nn.MultiheadAttention):
        return module.embed_dim, module.embed_dim
    return None


def _attach_point(model: nn.Module, site: Site, spec: AdapterSpec) -> tuple[nn.Module, int, int]:
    """The module to hook and its (in, out) widths, refusing modules a hook cannot adapt."""
    module = model.get_submodule(site.target)
    parent = _parent(model, site.target)
    weight_based = spec.method in ("lora", "ia3")
    if isinstance(parent, nn.MultiheadAttention) and module is parent.out_proj:
        # nn.MultiheadAttention reads out_proj.weight through F.linear: a hook on out_proj would
        # never run. The MHA's own output *is* out_proj's output, so bottleneck adapters go there.
        if weight_based:
            raise UnsupportedModuleError(
                f"{site.target} is the out_proj of an nn.MultiheadAttention, which computes "
                f"through F.linear on its weights, so {spec.method} cannot wrap it; use a "
                "bottleneck method"
            )
        module = parent
    if isinstance(module, nn.MultiheadAttention) and weight_based:
        raise UnsupportedModuleError(
            f"{site.target} is an nn.MultiheadAttention (fused in_proj_weight read through "
            f"F.linear); {spec.method} needs nn.Linear or Conv1D targets"
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
    builder = ADAPTER_BUILDERS[spec.method]
    shared: dict[str, Any] = {}
    order = next(_injection_counter)
    if spec.method in MODEL_METHODS:
        placements = _plan_model_level(model, spec)  # validate all before changing any
        for pl in placements:
            _inject_model_level(model, spec, name, order, pl, builder, shared)
    else:
        sites = plan_sites(model, spec)
        attach = [_attach_point(model, s, spec) for s in sites]  # validate before changing any
        for site, (module, d_in, d_out) in zip(sites, attach, strict=True):
            entry = model.get_submodule(site.entry)
            if spec.method == "parallel" and entry is not module:
                entry_dims = _dims(entry)
                d_in = entry_dims[0] if entry_dims else d_out
            shared["position"] = site.position
            adapter = builder(spec, d_in, d_out, shared)
            _attach(module, name, spec, adapter, site, order, recurse=False)
            if spec.method == "parallel" and entry is not module:
                capture = cast(BottleneckAdapter, adapter).capture  # "parallel" builds one
                entry.register_forward_pre_hook(capture, with_kwargs=True)
            if getattr(adapter, "scale_input", False):
                scale_args = cast(IA3Adapter, adapter).scale_args  # input-side (IA)^3
                module.register_forward_pre_hook(scale_args, with_kwargs=True)
    if activate:
        set_active_adapters(model, name)
    else:
        for adapter in _adapters_of(model, name):
            adapter.active = False
    if freeze:
        from .freeze import mark_only_adapters_trainable

        mark_only_adapters_trainable(model)
    return model


def _attach(
    module: nn.Module, name: str, spec: AdapterSpec, adapter: AdapterLayer, site: Site, order: int,
    recurse: bool,
) -> None:
    """Put ``adapter`` into ``module``'s container (created with its hook on first use)."""
    adapter.set_name, adapter.spec = name, spec
    adapter.site, adapter.injection_order = site, order
    ref = next((p for p in module.parameters(recurse=recurse)), None)
    if ref is not None:
        adapter.to(device=ref.device, dtype=ref.dtype)
    container = getattr(module, ADAPTERS_ATTR, None)
    if container is None:
        container = nn.ModuleDict()
        module.add_module(ADAPTERS_ATTR, container)
        module.register_forward_hook(_apply_adapters, with_kwargs=True)
    container[name] = adapter
    container.train(module.training)  # a model in eval mode must not run adapter dropout


def _inject_model_level(
    model: nn.Module, spec: AdapterSpec, name: str, order: int, pl: _Placement, builder: Any,
    shared: dict[str, Any],
) -> None:
    host = model.get_submodule(pl.site.target)
    root = model.get_submodule(pl.root)
    shared.update(slots=list(pl.slots), host=pl.site.block, causal=pl.causal,
                  word_embeddings=_input_embeddings(root))
    adapter = builder(spec, pl.hidden, pl.hidden, shared)
    _attach(host, name, spec, adapter, pl.site, order, recurse=True)
    if spec.method in ("kadapter", "side"):  # TEMP(side): "side" until the method registry
        adapter.mask_arg = arg_locator(root, MASK_ARGS)
        root.register_forward_pre_hook(adapter.start, with_kwargs=True)
        for slot, block in zip(pl.slots, pl.taps, strict=True):
            if block != pl.site.target:
                model.get_submodule(block).register_forward_hook(
                    functools.partial(adapter.tap, slot)
                )
    else:
        adapter.embeds_input, adapter.arg_names = pl.embeds_input, positional_names(root)
        # first, so other pre-hooks on the model (K-Adapter's) see the extended mask
        root.register_forward_pre_hook(adapter.prepare, with_kwargs=True, prepend=True)
        owner = model.get_submodule(pl.owner)
        if owner is not root:
            owner.register_forward_hook(adapter.strip)
        root.register_forward_hook(adapter.finish)


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
    """Within the block the model computes as the base model (merged sets are refused)."""
    adapters = [a for _, _, a in iter_adapters(model)]
    if any(getattr(a, "merged", False) for a in adapters):
        raise AdapterStateError(
            "merged adapter weights (LoRA, (IA)^3) are part of the base weights; "
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

    def ours(fn: Any) -> bool:
        return id(hook_owner(fn)) in gone

    for m in model.modules():
        _remove_hooks(m._forward_pre_hooks, (m._forward_pre_hooks_with_kwargs,), ours)
        _remove_hooks(
            m._forward_hooks, (m._forward_hooks_with_kwargs, m._forward_hooks_always_called), ours
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
        for fn in (*m._forward_hooks.values(), *m._forward_pre_hooks.values()):
            owner = hook_owner(fn)
            n += owner is not None and isinstance(owner, nn.Module) and is_adapter(owner)
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
