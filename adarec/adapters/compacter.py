"""Compacter (Mahabadi et al. 2021): a bottleneck adapter whose projections are PHM layers.

A PHM weight is a sum of Kronecker products, ``W = sum_i A_i (x) B_i`` with ``n`` "rule" matrices
``A_i`` (n x n) that are shared by every PHM layer of the adapter set, and per-layer ``B_i`` that
are rank-r factorised, ``B_i = s_i t_i^T``. Unlike the paper's research code we keep the skip
connection: ``y' = y + s * up(act(down(y)))``; with ``up``'s ``s`` factors at zero the adapter is
the identity at initialisation.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn
from torch.nn import functional as F

from ..errors import SpecError
from ..registry import BuildContext, MethodDef, Placement, register_method
from ..spec import AdapterSpec, SpecField, int_in
from . import bottleneck
from .bottleneck import BottleneckAdapter

PHM_DIM = SpecField("phm_dim", 4, int_in(1, 64), "must be an integer in [1, 64]",
                    "n: the number of Kronecker terms (must divide the widths)")
PHM_RANK = SpecField("phm_rank", 1, int_in(1, 1 << 16), f"must be an integer in [1, {1 << 16}]",
                     "rank r of the per-layer factors")
SHARED_PHM_RULE = SpecField("shared_phm_rule", True, lambda x: isinstance(x, bool),
                            "must be a bool", "one set of rule matrices for the whole set")


class PHMLinear(nn.Module):
    """``x @ W + b`` with ``W = sum_i kron(rule[i], s[i] @ t[i])``, W of shape (d_in, d_out)."""

    def __init__(
        self, d_in: int, d_out: int, n: int, rank: int, rule: nn.Parameter | None,
        zero_init: bool = False,
    ) -> None:
        super().__init__()
        for dim, what in ((d_in, "input"), (d_out, "output")):
            if dim % n:
                raise SpecError(
                    f"AdapterSpec.phm_dim={n} must divide the Compacter {what} size {dim}"
                )
        self.n, self.d_in, self.d_out = n, d_in, d_out
        self.rule = rule if rule is not None else new_rule(n)
        self.s = nn.Parameter(torch.empty(n, d_in // n, rank))
        self.t = nn.Parameter(torch.empty(n, rank, d_out // n))
        self.bias = nn.Parameter(torch.zeros(d_out))
        bound = 1.0 / math.sqrt(d_in)
        nn.init.uniform_(self.t, -1.0, 1.0)
        if zero_init:
            nn.init.zeros_(self.s)
        else:
            nn.init.uniform_(self.s, -bound, bound)

    def weight(self) -> torch.Tensor:
        """The (d_in, d_out) weight; one small matmul instead of ``n`` explicit Kronecker
        products: ``W[(a c), (b d)] = sum_i rule[i, a, b] * B_i[c, d]``."""
        n = self.n
        b = self.s @ self.t  # (n, d_in/n, d_out/n)
        w = self.rule.reshape(n, n * n).T @ b.reshape(n, -1)  # ((a b), (c d))
        return rearrange(w, "(a b) (c d) -> (a c) (b d)", a=n, c=self.d_in // n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight().T, self.bias)

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, d_out={self.d_out}, n={self.n}, rank={self.s.shape[-1]}"


def new_rule(n: int) -> nn.Parameter:
    return nn.Parameter(torch.randn(n, n, n) * (1.0 / n))


def validate(spec: AdapterSpec) -> None:
    bottleneck.validate(spec)
    if spec.bottleneck is not None and spec.bottleneck % spec.phm_dim:
        raise SpecError(f"AdapterSpec.bottleneck={spec.bottleneck} is invalid: must be divisible "
                        f"by phm_dim={spec.phm_dim} for Compacter")


def build(ctx: BuildContext) -> BottleneckAdapter:
    spec = ctx.spec
    n, r = spec.phm_dim, spec.phm_rank
    k = spec.bottleneck_for(ctx.d_out)
    if k % n:
        raise SpecError(f"Compacter bottleneck {k} must be divisible by phm_dim={n}")
    rule = ctx.shared.once("phm_rule", lambda: new_rule(n)) if spec.shared_phm_rule else None
    down = PHMLinear(ctx.d_out, k, n, r, rule)
    up = PHMLinear(k, ctx.d_out, n, r, rule, zero_init=True)
    return BottleneckAdapter(down, up, spec.activation, spec.dropout, spec.scaling)


COMPACTER = register_method(MethodDef(
    name="compacter",
    placement=Placement.SUBLAYER,
    build=build,
    fields=(*bottleneck.FIELDS, PHM_DIM, PHM_RANK, SHARED_PHM_RULE),
    defaults={"bottleneck": 64, "positions": ("mha", "ffn")},
    where=lambda spec: spec.positions,
    validate=validate,
    merge_note=bottleneck.NONLINEAR,
    summary="Houlsby positions, PHM projections, shared rule matrices",
))
