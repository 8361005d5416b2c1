"""The bottleneck adapter layer shared by Houlsby, Pfeiffer, the parallel adapter and Compacter
(each registered in its own file), and the spec fields and checks they have in common.

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

from ..errors import SpecError
from ..registry import BuildContext
from ..spec import (
    ACTIVATION,
    BOTTLENECK,
    DROPOUT,
    LAYERS,
    POSITIONS_FIELD,
    REDUCTION_FACTOR,
    SCALING,
    TARGET_MODULES,
    AdapterSpec,
    exactly_one,
)
from .base import AdapterLayer

FIELDS = (BOTTLENECK, REDUCTION_FACTOR, POSITIONS_FIELD, LAYERS, ACTIVATION, DROPOUT, SCALING,
          TARGET_MODULES)
"""The spec fields of a bottleneck method."""
NONLINEAR = (
    "it applies a non-linear activation between its projections, and a non-linear function of "
    "the activations cannot be folded into a weight matrix"
)


def zero_linear(d_in: int, d_out: int) -> nn.Linear:
    layer = nn.Linear(d_in, d_out)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class BottleneckAdapter(AdapterLayer):
    """``y + s * up(drop(act(down(h))))`` where ``h`` is ``y`` (serial) or the sublayer input."""

    mixed_batch_refusal = None

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

    def rows_forward(
        self, x: torch.Tensor | None, y: torch.Tensor, rows: torch.Tensor
    ) -> torch.Tensor:
        if self.parallel and self._tapped is not None:
            self._tapped = self._tapped.index_select(0, rows.to(self._tapped.device))
        return super().rows_forward(x, y, rows)

    def extra_repr(self) -> str:
        return f"scaling={self.scaling}, parallel={self.parallel}"


def validate(spec: AdapterSpec) -> None:
    """One width (``bottleneck`` or ``reduction_factor``), and a sublayer to go to."""
    exactly_one(spec, "bottleneck", "reduction_factor")
    if spec.target_modules is None and not spec.positions:
        raise SpecError(f"AdapterSpec.positions={spec.positions!r} is invalid: must name at "
                        "least one position (or give target_modules)")


def build(ctx: BuildContext, *, parallel: bool = False) -> BottleneckAdapter:
    """A serial adapter reads the output it changes; a parallel one its sublayer's input."""
    spec = ctx.spec
    d = (ctx.sublayer_in or ctx.d_in) if parallel else ctx.d_out
    k = spec.bottleneck_for(ctx.d_out)
    return BottleneckAdapter(
        nn.Linear(d, k), zero_linear(k, ctx.d_out), spec.activation, spec.dropout, spec.scaling,
        parallel=parallel,
    )
