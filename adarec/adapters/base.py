"""The one protocol every adarec adapter layer follows (torchtune-style, no deep hierarchy).

An adapter layer is an ``nn.Module`` called as ``adapter(x, y) -> y'`` where ``x`` is the input
and ``y`` the output of the module it is attached to. It carries:

- ``active``: whether the hook applies it (switched by `set_active_adapters`);
- ``set_name`` / ``spec``: which named adapter set it belongs to and how it was built;
- ``adapter_params()``: the names of its trainable parameters, relative to itself.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Protocol, TypeGuard

import torch
from torch import nn

if TYPE_CHECKING:
    from ..sites import Site


ADAPTERS_ATTR = "adarec_adapters"
"""The child ``ModuleDict`` of an adapted module that holds its adapters, one per named set."""


class AdapterLayer(nn.Module):
    """Shared plumbing: the active switch and the parameter protocol."""

    # set by injection (`adarec.inject`), not by the constructor
    site: Site
    injection_order: int

    def __init__(self) -> None:
        super().__init__()
        self.active = True
        self.set_name = ""
        self.spec: Any = None

    def adapter_params(self) -> list[str]:
        """Names (relative to this module) of the parameters that belong to the adapter."""
        return [n for n, _ in self.named_parameters()]

    def forward(self, x: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class Mergeable(Protocol):
    """What `merge_adapters` needs of a layer that folds into its base module (LoRA, (IA)^3)."""

    set_name: str
    active: bool
    merged: bool

    def merge(self, base: nn.Module) -> None: ...

    def unmerge(self, base: nn.Module) -> None: ...


def base_weight(base: nn.Module) -> torch.Tensor:
    """``base.weight`` (``nn.Module.__getattr__`` is typed ``Tensor | Module``)."""
    weight = base.weight
    assert isinstance(weight, torch.Tensor)
    return weight


def is_adapter(module: nn.Module) -> TypeGuard[AdapterLayer]:
    """Duck-typed check for the protocol, so third-party layers can take part (typed as
    `AdapterLayer`, whose interface they follow)."""
    return callable(getattr(module, "adapter_params", None)) and hasattr(module, "active")


def hook_owner(fn: Any) -> Any:
    """The object a hook function is bound to, through ``functools.partial``: of a bound method,
    or of a helper whose first argument is one (`adarec.attention`'s hooks)."""
    if isinstance(fn, functools.partial):
        owner = hook_owner(fn.func)
        return owner if owner is not None or not fn.args else hook_owner(fn.args[0])
    return getattr(fn, "__self__", None)
