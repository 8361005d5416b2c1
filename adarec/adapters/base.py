"""The one protocol every adarec adapter layer follows (torchtune-style, no deep hierarchy).

An adapter layer is an ``nn.Module`` called as ``adapter(x, y) -> y'`` where ``x`` is the input
and ``y`` the output of the module it is attached to. It carries:

- ``active``: whether the hook applies it (switched by `set_active_adapters`);
- ``set_name`` / ``spec``: which named adapter set it belongs to and how it was built;
- ``adapter_params()``: the names of its trainable parameters, relative to itself;
- ``mixed_batch_refusal``: ``None`` when each row of its output depends on that row alone, so
  rows of one batch may use different sets (`adarec.mixed`), else the reason they may not.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeGuard

import torch
from torch import nn

from ..errors import AdapterStateError

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
        self._mixed_rows: torch.Tensor | None = None
        """Within `adarec.mixed.mixed_batch`: the batch rows this set serves (else all)."""
        self._mixed_batch = 0

    mixed_batch_refusal: ClassVar[str | None] = (
        "it does not declare that each row of its output depends on that row alone (a layer "
        "that does sets mixed_batch_refusal = None)"
    )

    def adapter_params(self) -> list[str]:
        """Names (relative to this module) of the parameters that belong to the adapter."""
        return [n for n, _ in self.named_parameters()]

    def forward(self, x: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def rows_forward(
        self, x: torch.Tensor | None, y: torch.Tensor, rows: torch.Tensor
    ) -> torch.Tensor:
        """The adapter on rows ``rows`` of the batch only (a layer reading more than ``x`` and
        ``y``, such as a tapped sublayer input, selects those rows of it too)."""
        return self(None if x is None else x.index_select(0, rows), y.index_select(0, rows))


def apply_to_rows(
    adapter: AdapterLayer, x: Any, y: torch.Tensor, rows: torch.Tensor
) -> torch.Tensor:
    """``y`` with ``adapter`` applied to rows ``rows`` (batch dimension 0) and the other rows
    untouched: the one place a mixed batch is split by set (out of place, so autograd works)."""
    if y.dim() == 0 or y.size(0) != adapter._mixed_batch:
        raise AdapterStateError(
            f"a mixed batch of {adapter._mixed_batch} rows reached an adapter of set "
            f"{adapter.set_name!r} whose module output has shape {tuple(y.shape)}: its first "
            "dimension must be the batch (set names go one per row of the model's input)"
        )
    if rows.numel() == y.size(0):  # the set serves every row (a tile of one set): no split
        return adapter(x, y)
    rows = rows.to(y.device)
    if not isinstance(x, torch.Tensor) or x.dim() == 0 or x.size(0) != y.size(0):
        x = None
    return y.index_copy(0, rows, adapter.rows_forward(x, y, rows).to(y.dtype))


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
