"""LoRA (Hu et al. 2021): ``y' = W x + b + (alpha / r) * B A drop(x)``, beside the frozen weight.

The pre-trained weight is kept and frozen (the paper's research code replaced it), ``B`` starts at
zero so the layer is the identity at initialisation, and `merge` folds ``(alpha/r) B A`` into the
base weight for inference. `adarec.merge` keeps a copy of the weight and restores it exactly;
`unmerge` (subtracting the delta again, exact to ``eps * (|W| + |delta|)``) is the way back when
no copy was kept.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import AdapterStateError
from ..registry import BuildContext, MethodDef, Placement, register_method
from ..sites import PROJECTION_ROLES
from ..spec import LAYERS, MAX_WIDTH, TARGET_MODULES, SpecField, distinct_from, int_in, number_in
from .base import AdapterLayer, base_weight

LORA_R = SpecField("lora_r", 8, int_in(1, MAX_WIDTH), f"must be an integer in [1, {MAX_WIDTH}]",
                   "rank r")
LORA_ALPHA = SpecField("lora_alpha", 16.0, number_in(0.0, 1e6, low_open=True),
                       "must be a number in (0, 1e6]", "alpha; the update is scaled by alpha / r")
LORA_DROPOUT = SpecField("lora_dropout", 0.0, number_in(0.0, 1.0, high_open=True),
                         "must be a probability in [0, 1)", "dropout on the LoRA input")
LORA_TARGETS = SpecField(
    "lora_targets", ("q", "v"), distinct_from(PROJECTION_ROLES),
    f"must be a non-empty sequence of distinct roles from {list(PROJECTION_ROLES)}",
    "projection roles to adapt", sequence=True,
)


class LoRAAdapter(AdapterLayer):
    mixed_batch_refusal = None

    def __init__(self, d_in: int, d_out: int, r: int, alpha: float, dropout: float) -> None:
        super().__init__()
        self.lora_A = nn.Linear(d_in, r, bias=False)
        self.lora_B = nn.Linear(r, d_out, bias=False)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.dropout = nn.Dropout(dropout)
        self.scaling = alpha / r
        self.merged = False

    def forward(self, x: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return y
        assert x is not None
        return y + self.lora_B(self.lora_A(self.dropout(x))) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """``(alpha/r) B A`` in nn.Linear's (out, in) orientation."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    @torch.no_grad()
    def merge(self, base: nn.Module) -> None:
        if self.merged:
            raise AdapterStateError(f"LoRA set {self.set_name!r} is already merged")
        _base_weight(base).add_(_oriented(base, self.delta_weight()))
        self.merged = True

    @torch.no_grad()
    def unmerge(self, base: nn.Module) -> None:
        if not self.merged:
            raise AdapterStateError(f"LoRA set {self.set_name!r} is not merged")
        reason = self.irreversible_because(base)
        if reason:
            raise AdapterStateError(f"LoRA set {self.set_name!r} cannot be unmerged: {reason}")
        _base_weight(base).sub_(_oriented(base, self.delta_weight()))
        self.merged = False

    @torch.no_grad()
    def irreversible_because(self, base: nn.Module) -> str | None:
        """Why subtracting the delta would not give the weight back (``None``: it would, to
        rounding): a non-finite delta, or a sum that overflows."""
        delta = _oriented(base, self.delta_weight())
        total = _base_weight(base) if self.merged else _base_weight(base) + delta
        if not (torch.isfinite(delta).all() and torch.isfinite(total).all()):
            return "its update W + (alpha/r) B A is not finite"
        return None

    def extra_repr(self) -> str:
        return f"scaling={self.scaling}"


def _base_weight(base: nn.Module) -> torch.Tensor:
    return base_weight(base).data


def _oriented(base: nn.Module, delta: torch.Tensor) -> torch.Tensor:
    """transformers' Conv1D stores its weight as (in, out), nn.Linear as (out, in)."""
    delta = delta.to(base_weight(base).dtype)
    return delta.T if type(base).__name__ == "Conv1D" else delta


def build(ctx: BuildContext) -> LoRAAdapter:
    spec = ctx.spec
    return LoRAAdapter(ctx.d_in, ctx.d_out, spec.lora_r, spec.lora_alpha, spec.lora_dropout)


LORA = register_method(MethodDef(
    name="lora",
    placement=Placement.PROJECTION,
    build=build,
    fields=(LORA_R, LORA_ALPHA, LORA_DROPOUT, LORA_TARGETS, LAYERS, TARGET_MODULES),
    where=lambda spec: spec.lora_targets,
    hints={"dropout": "lora_dropout", "positions": "lora_targets", "bottleneck": "lora_r",
           "reduction_factor": "lora_r", "scaling": "lora_alpha"},
    merges=True,
    merge_note="its update (alpha/r) B A x is linear in the input: W += (alpha/r) B A",
    peft_type="LORA",
    summary="low-rank update beside the query and value projections",
))
