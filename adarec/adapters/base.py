"""The one protocol every adarec adapter layer follows (torchtune-style, no deep hierarchy).

An adapter layer is an ``nn.Module`` called as ``adapter(x, y) -> y'`` where ``x`` is the input
and ``y`` the output of the module it is attached to. It carries:

- ``active``: whether the hook applies it (switched by `set_active_adapters`);
- ``set_name`` / ``spec``: which named adapter set it belongs to and how it was built;
- ``adapter_params()``: the names of its trainable parameters, relative to itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, TypeGuard

import torch
from torch import nn

if TYPE_CHECKING:
    from ..inject import Site


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
    """The object a hook function is bound to (through ``functools.partial``), or ``None``."""
    fn = getattr(fn, "func", fn)
    return getattr(fn, "__self__", None)


def arg_locator(module: nn.Module, names: tuple[str, ...]) -> tuple[str, int | None] | None:
    """Where ``module.forward`` takes the first parameter called one of ``names``: its name and
    positional index (``None`` when keyword-only), or ``None`` when it has no such parameter."""
    import inspect

    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return None
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    for want in names:
        for i, p in enumerate(params):
            if p.name == want:
                return want, (i if p.kind in positional else None)
    return None


def positional_names(module: nn.Module) -> tuple[str, ...]:
    """The names ``module.forward`` binds positional arguments to, in order."""
    import inspect

    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return ()
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return tuple(p.name for p in params if p.kind in kinds)


def read_arg(
    loc: tuple[str, int | None] | None, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """The value of the located parameter in one call, or ``None`` when it was not passed."""
    if loc is None:
        return None
    name, index = loc
    if name in kwargs:
        return kwargs[name]
    return args[index] if index is not None and index < len(args) else None
