"""What a method is (`MethodDef`, `Placement`, the contexts its steps get) and the table of
registered methods (`method_info`, `method_names`).

Why a module of its own: a spec looks its method up here, and registering a method
(`adarec.registry.register_method`) builds the method's preset specs, so the table sits below the
spec and registration above it. `adarec.registry` re-exports every public name here.

A `MethodDef` says everything the rest of adarec needs to know about a method, so the injector,
the spec, merging and peft export never name a method:

- ``placement``: at sublayer outputs (Houlsby), on projection weights (LoRA) or over the whole
  model (K-Adapter, prompt tuning), and which sublayers or roles (``where``) or, for whole-model
  methods, which hosts (``place``);
- ``build``: the typed builder, ``build(BuildContext) -> AdapterLayer``;
- ``fields`` / ``defaults`` / ``validate`` / ``presets`` / ``hints``: the spec fields it uses, its
  defaults (which are its preset), its own cross-field checks, extra named presets, and for a
  field it does not use, the field a user probably meant (``dropout`` -> ``lora_dropout``);
- ``attach``: the extra hooks it needs besides the output hook every adapter gets (a parallel
  adapter reads its sublayer's input, K-Adapter taps blocks, prompt tuning rewrites the call);
- ``merges`` / ``merge_note``: whether it folds into the base weights, and if not, why;
- ``peft_type``: the peft type it can be exported as (``"LORA"``), if any.
"""

from __future__ import annotations

import enum
import importlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, cast

from torch import nn

from .adapters.base import hook_owner, is_adapter
from .attention import attach_attention
from .errors import AdapterStateError, SpecError
from .hooks import add_forward_hook, add_pre_hook
from .spec_fields import COMMON_FIELDS, SpecField

if TYPE_CHECKING:
    from .adapters.base import AdapterLayer
    from .sites import Site
    from .spec import AdapterSpec
    from .stacks import StackInfo

T = TypeVar("T")

DEFAULT_METHOD = "houlsby"
"""The method of ``AdapterSpec()`` without a ``method`` (the paper's main adapter)."""


class Placement(enum.Enum):
    """Where a method's adapters go."""

    SUBLAYER = "sublayer output"
    """After a sublayer's output projection (serial) or beside the sublayer (parallel): the
    adapter's output width is the residual width, which adarec verifies."""
    PROJECTION = "projection weight"
    """On identified projections (query, value, FFN output, ...), one adapter per projection."""
    MODEL = "whole model"
    """Over a whole block stack: a side network, soft prompts; the method's ``place`` chooses."""


class SetState:
    """State shared by the adapters of one injected set (Compacter's rule matrices)."""

    def __init__(self) -> None:
        self._items: dict[str, Any] = {}

    def once(self, key: str, make: Callable[[], T]) -> T:
        """The value stored under ``key``, made by ``make()`` the first time."""
        if key not in self._items:
            self._items[key] = make()
        return cast(T, self._items[key])


@dataclass(frozen=True)
class BuildContext:
    """What a builder gets: the spec, the site, the widths, the set's shared state and, for a
    whole-model method, the block stack and the injection root.

    ``d_in``/``d_out`` are the input and output widths of the module the adapter is attached to;
    ``sublayer_in`` the width of its sublayer's input (what a parallel adapter reads).
    """

    spec: AdapterSpec
    site: Site
    d_in: int
    d_out: int
    shared: SetState
    sublayer_in: int | None = None
    stack: StackInfo | None = None
    model: nn.Module | None = None


@dataclass(frozen=True)
class PlaceContext:
    """What a whole-model method's ``place`` gets: the injection root, the spec and its stacks."""

    model: nn.Module
    spec: AdapterSpec
    stacks: Sequence[StackInfo]


@dataclass(frozen=True)
class AttachContext:
    """What an ``attach`` step gets, and the only way it adds hooks: hooks added here must be
    bound methods of the adapter (or partials of them), so `eject_adapters` finds and removes
    them."""

    model: nn.Module
    module: nn.Module
    site: Site
    stack: StackInfo | None = None

    def submodule(self, name: str) -> nn.Module:
        return self.model.get_submodule(name)

    def pre_hook(self, module: nn.Module | str, hook: Callable[..., Any], *,
                 with_kwargs: bool = False, prepend: bool = False) -> None:
        """A forward pre-hook on ``module`` (a module or its name under the injection root)."""
        add_pre_hook(self._module(module), _owned(hook), with_kwargs=with_kwargs,
                     prepend=prepend)

    def forward_hook(self, module: nn.Module | str, hook: Callable[..., Any], *,
                     with_kwargs: bool = False, prepend: bool = False) -> None:
        """A forward hook on ``module`` (a module or its name under the injection root)."""
        add_forward_hook(self._module(module), _owned(hook), with_kwargs=with_kwargs,
                         prepend=prepend)

    def attention(self, module: nn.Module | str, rewrite: Callable[..., Any]) -> None:
        """Run ``rewrite(module, call)``, a method of the adapter, on every attention kernel
        call of ``module`` while the adapter is active: it may change the query, key, value and
        mask (an `adarec.attention.AttentionCall`), e.g. to add key/value positions."""
        attach_attention(_owned(rewrite), self._module(module))

    def _module(self, module: nn.Module | str) -> nn.Module:
        return self.model.get_submodule(module) if isinstance(module, str) else module


def _owned(hook: Callable[..., Any]) -> Callable[..., Any]:
    owner = hook_owner(hook)
    if not (isinstance(owner, nn.Module) and is_adapter(owner)):
        raise AdapterStateError(
            f"hook {hook!r} is not a method of an adapter layer; eject_adapters could not find "
            "it again. Use a bound method of the adapter (or functools.partial of one)"
        )
    return hook


Builder = Callable[[BuildContext], "AdapterLayer"]
Attach = Callable[["AdapterLayer", AttachContext], None]
Place = Callable[[PlaceContext], list["Site"]]


@dataclass(frozen=True)
class MethodDef:
    """Everything adarec knows about one method. See the module docstring."""

    name: str
    placement: Placement
    build: Builder
    fields: tuple[SpecField, ...] = ()
    defaults: Mapping[str, Any] = field(default_factory=dict)
    where: Callable[[AdapterSpec], tuple[str, ...]] | None = None
    """``SUBLAYER``: the sublayer kinds (``mha``, ``ffn``); ``PROJECTION``: the roles (``q``...)."""
    place: Place | None = None
    """``MODEL``: the host sites, one per block stack it adapts."""
    attach: Attach | None = None
    validate: Callable[[AdapterSpec], None] | None = None
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    hints: Mapping[str, str] = field(default_factory=dict)
    merges: bool = False
    merge_note: str = ""
    """Why it cannot be merged (or, for a mergeable method, what merging does)."""
    peft_type: str | None = None
    summary: str = ""
    """One line for tables (README, docs)."""

    @property
    def all_fields(self) -> tuple[SpecField, ...]:
        names = {f.name for f in self.fields}
        return (*self.fields, *(f for f in COMMON_FIELDS if f.name not in names))

    @property
    def field_names(self) -> frozenset[str]:
        return frozenset(f.name for f in self.all_fields)


_METHODS: dict[str, MethodDef] = {}
_BUILTINS_LOADED = False


def ensure_builtins() -> None:
    """Import the built-in method files (they register themselves)."""
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        _BUILTINS_LOADED = True
        importlib.import_module("adarec.adapters")


def add_to_table(method: MethodDef) -> None:
    """Enter ``method`` in the table (`adarec.registry.register_method` checks it first)."""
    _METHODS[method.name] = method


def remove_from_table(name: str) -> MethodDef | None:
    """Take method ``name`` out of the table; the `MethodDef` it had, or ``None``."""
    return _METHODS.pop(name, None)


def registered_methods() -> Iterable[MethodDef]:
    """Every registered `MethodDef`, in registration order (the built-ins loaded)."""
    ensure_builtins()
    return tuple(_METHODS.values())


def method_info(name: str) -> MethodDef:
    """The `MethodDef` of a registered method (`SpecError` naming the known ones otherwise)."""
    ensure_builtins()
    method = _METHODS.get(name) if isinstance(name, str) else None
    if method is None:
        raise SpecError(f"AdapterSpec.method={name!r} is invalid: must be one of "
                        f"{list(_METHODS)}")
    return method


def method_names(placement: Placement | None = None) -> tuple[str, ...]:
    """Registered methods (of one placement kind), in registration order."""
    ensure_builtins()
    return tuple(n for n, m in _METHODS.items() if placement is None or m.placement is placement)


def methods_for_peft(peft_type: str) -> tuple[MethodDef, ...]:
    """The methods that can be written as (and read from) a peft adapter of ``peft_type``."""
    ensure_builtins()
    return tuple(m for m in _METHODS.values() if m.peft_type == peft_type)


__all__ = [
    "DEFAULT_METHOD",
    "AttachContext",
    "BuildContext",
    "MethodDef",
    "PlaceContext",
    "Placement",
    "SetState",
    "add_to_table",
    "ensure_builtins",
    "method_info",
    "method_names",
    "methods_for_peft",
    "registered_methods",
    "remove_from_table",
]
