"""Bottleneck adapters: Houlsby (serial, after MHA and FFN), Pfeiffer (serial, one per block) and
the parallel adapter of He et al. 2022.

Serial:   y' = y + s * up(drop(act(down(y))))        (Houlsby et al. 2019; Pfeiffer et al. 2021)
Parallel: y' = y + s * up(drop(act(down(x_in))))     (He et al. 2022, "scaled PA", s = 4)

``up`` is zero-initialised, so every bottleneck adapter is exactly the identity at initialisation
while ``down`` keeps a random init and gradients reach both from the first step.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.activations import ACT2FN

from .base import AdapterLayer


def zero_linear(d_in: int, d_out: int) -> nn.Linear:
    layer = nn.Linear(d_in, d_out)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class BottleneckAdapter(AdapterLayer):
    """``y + s * up(drop(act(down(h))))`` where ``h`` is ``y`` (serial) or the sublayer input."""

    def __init__(
        self,
        down: nn.Module,
        up: nn.Module,
        activation: str = "gelu",
        dropout: float = 0.0,
        scaling: float = 1.0,
        parallel: bool = False,
    ) -> None:
        super().__init__()
        self.down = down
        self.act = ACT2FN[activation]
        self.dropout = nn.Dropout(dropout)
        self.up = up
        self.scaling = scaling
        self.parallel = parallel
        self._tapped: torch.Tensor | None = None

    def capture(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Forward pre-hook on the sublayer's entry module: remember the sublayer input."""
        if self.active:
            self._tapped = args[0] if args else next(iter(kwargs.values()))

    def forward(self, x: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor:
        if self.parallel:
            h, self._tapped = (self._tapped if self._tapped is not None else x), None
        else:
            h = y
        assert h is not None
        return y + self.scaling * self.up(self.dropout(self.act(self.down(h))))

    def extra_repr(self) -> str:
        return f"scaling={self.scaling}, parallel={self.parallel}"


def build_bottleneck(spec: Any, d_in: int, d_out: int, shared: dict[str, Any]) -> BottleneckAdapter:
    parallel = spec.method == "parallel"
    d = d_in if parallel else d_out
    k = spec.bottleneck_for(d_out)
    return BottleneckAdapter(
        nn.Linear(d, k), zero_linear(k, d_out), spec.activation, spec.dropout, spec.scaling,
        parallel=parallel,
    )
