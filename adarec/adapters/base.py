"""The one protocol every adarec adapter layer follows (torchtune-style, no deep hierarchy).

An adapter layer is an ``nn.Module`` called as ``adapter(x, y) -> y'`` where ``x`` is the input
and ``y`` the output of the module it is attached to. It carries:

- ``active``: whether the hook applies it (switched by `set_active_adapters`);
- ``set_name`` / ``spec``: which named adapter set it belongs to and how it was built;
- ``adapter_params()``: the names of its trainable parameters, relative to itself.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class AdapterLayer(nn.Module):
    """Shared plumbing: the active switch and the parameter protocol."""

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


def is_adapter(module: nn.Module) -> bool:
    """Duck-typed check for the protocol, so third-party layers can take part."""
    return callable(getattr(module, "adapter_params", None)) and hasattr(module, "active")
