"""(IA)^3 (Liu et al. 2022): learned per-channel scaling of keys, values and the FFN activation.

Keys/values:  ``k' = l_k * k``, ``v' = l_v * v`` (the output of the k/v projections).
FFN:          ``y' = W (l_ff * a) + b`` where ``a`` is the input of the FFN output projection.

Every vector starts at one, so the model is exactly unchanged at initialisation. The FFN scaling is
applied by a forward pre-hook on the input of the projection: one elementwise product, where the
output-side form ``y + W((l - 1) * a)`` would cost a second matmul. Scaling is linear in the
weights, so `merge` folds the vectors into the base weights (rows for k/v, columns for the FFN).
In a fused q/k/v projection (GPT-2's ``c_attn``) only the k and v thirds are scaled.

`adarec.merge` keeps a copy of the weights it scales and restores them exactly (a learned scale of
0 included); `unmerge` (dividing the scale out, exact to ``eps * |W|``) is the way back when no copy
was kept, and refuses a zero or non-finite scale, which cannot be divided out.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import AdapterStateError, UnsupportedModuleError
from ..registry import AttachContext, BuildContext, MethodDef, Placement, register_method
from ..spec import LAYERS, TARGET_MODULES, SpecField, distinct_from
from .base import AdapterLayer, base_weight

ROLES = ("k", "v", "ffn_out")
"""(IA)^3 scales the key and value outputs and the input of the FFN output projection."""
IA3_TARGETS = SpecField(
    "ia3_targets", ROLES, distinct_from(ROLES), f"must be distinct roles from {list(ROLES)}",
    "roles whose activations are rescaled", sequence=True,
)


class IA3Adapter(AdapterLayer):
    """Scales channels ``start:stop`` of a module's output, or of its input (``scale_input``)."""

    mixed_batch_refusal = None

    def __init__(self, width: int, start: int, stop: int, scale_input: bool) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(stop - start))
        self.width, self.start, self.stop = width, start, stop
        self.scale_input = scale_input
        self.folds_into_input = scale_input
        """Merged, it scales the module's input, which other adapters on the module read too."""
        self.merged = False

    def full_scale(self) -> torch.Tensor:
        """The scaling over all ``width`` channels (ones outside ``start:stop``)."""
        if self.start == 0 and self.stop == self.width:
            return self.scale
        ones = self.scale.new_ones(self.width)
        return torch.cat([ones[: self.start], self.scale, ones[self.stop :]])

    def forward(self, x: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor:
        if self.merged or self.scale_input:
            return y
        return y * self.full_scale().to(y.dtype)

    def scale_args(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        """Forward pre-hook on the FFN output projection: scale its input."""
        if not self.active or self.merged:
            return None
        if args:
            return (args[0] * self._input_scale(args[0]), *args[1:]), kwargs
        key = next(iter(kwargs))
        return args, {**kwargs, key: kwargs[key] * self._input_scale(kwargs[key])}

    def _input_scale(self, a: torch.Tensor) -> torch.Tensor:
        """The factor for input ``a``: the scale, or in a mixed batch the scale on this set's
        rows and ones on the others (``[B, 1, ..., width]``)."""
        scale = self.full_scale().to(a.dtype)
        rows = self._mixed_rows
        if rows is None or rows.numel() == a.size(0):
            return scale
        if a.dim() < 2 or a.size(0) != self._mixed_batch:
            raise AdapterStateError(
                f"a mixed batch of {self._mixed_batch} rows reached an (IA)^3 adapter of set "
                f"{self.set_name!r} whose input has shape {tuple(a.shape)}: its first "
                "dimension must be the batch")
        factor = scale.new_ones(a.size(0), scale.numel())
        factor = factor.index_copy(0, rows.to(a.device), scale.expand(rows.numel(), -1))
        return factor.view(a.size(0), *([1] * (a.dim() - 2)), scale.numel())

    def _oriented(self, base: nn.Module) -> torch.Tensor:
        """The scale shaped to multiply ``base.weight``: Linear is (out, in), Conv1D (in, out)."""
        s = self.full_scale().detach().to(base_weight(base).dtype)
        on_rows = (type(base).__name__ == "Conv1D") == self.scale_input
        return s[:, None] if on_rows else s[None, :]

    @torch.no_grad()
    def merge(self, base: nn.Module) -> None:
        if self.merged:
            raise AdapterStateError(f"(IA)^3 set {self.set_name!r} is already merged")
        base_weight(base).data.mul_(self._oriented(base))
        bias = getattr(base, "bias", None)
        if not self.scale_input and bias is not None:
            bias.data.mul_(self.full_scale().detach().to(bias.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self, base: nn.Module) -> None:
        """Divide the scaling out again (to rounding); refused where that cannot work."""
        if not self.merged:
            raise AdapterStateError(f"(IA)^3 set {self.set_name!r} is not merged")
        reason = self.irreversible_because(base)
        if reason:
            raise AdapterStateError(f"(IA)^3 set {self.set_name!r} cannot be unmerged: {reason}")
        base_weight(base).data.div_(self._oriented(base))
        bias = getattr(base, "bias", None)
        if not self.scale_input and bias is not None:
            bias.data.div_(self.full_scale().detach().to(bias.dtype))
        self.merged = False

    @torch.no_grad()
    def irreversible_because(self, base: nn.Module) -> str | None:
        """Why dividing the scale out would not give the weights back within ``eps * |W|``
        (``None``: it would): a zero or non-finite scale, or, checked before merging by doing the
        round trip, a product that over- or underflows."""
        s = self.scale.detach()
        if not (torch.isfinite(s).all() and (s != 0).all()):
            return "its scale has zero or non-finite entries, which cannot be divided out"
        if self.merged:
            return None
        pairs = [(base_weight(base).detach(), self._oriented(base))]
        bias = getattr(base, "bias", None)
        if not self.scale_input and isinstance(bias, torch.Tensor):
            pairs.append((bias.detach(), self.full_scale().detach().to(bias.dtype)))
        for t, scale in pairs:
            scaled = t * scale
            back = scaled / scale
            eps = torch.finfo(t.dtype).eps
            if not (torch.isfinite(scaled).all() and ((back - t).abs() <= eps * t.abs()).all()):
                return "scaling the weights by it over- or underflows, losing their bits"
        return None

    def extra_repr(self) -> str:
        side = "input" if self.scale_input else "output"
        return f"{side} channels {self.start}:{self.stop} of {self.width}"


def build(ctx: BuildContext) -> IA3Adapter:
    """``ffn_out``: scale the projection's input; a fused q/k/v projection: scale the thirds of
    the roles this site serves; anything else (k, v, a ``target_modules`` match): the output."""
    site, d_in, d_out = ctx.site, ctx.d_in, ctx.d_out
    if site.role == "ffn_out":
        return IA3Adapter(d_in, 0, d_in, scale_input=True)
    if site.fused:
        widths = site.fused_widths
        if not widths or sum(widths) != d_out:
            raise UnsupportedModuleError(
                f"{site.target} computes {'/'.join(site.fused)} in one projection, and how its "
                f"{d_out} outputs split into them is not known (the dry run could not verify a "
                "contiguous split; interleaved heads?), so (IA)^3 cannot tell which channels are "
                "keys and values. Pass target_modules to scale its whole output"
            )
        index = sorted(site.fused.index(r) for r in site.roles)
        if index != list(range(index[0], index[-1] + 1)):
            raise UnsupportedModuleError(f"(IA)^3 roles {site.roles} are not adjacent in "
                                         f"{site.target}'s fused output {site.fused}")
        start = sum(widths[: index[0]])
        return IA3Adapter(d_out, start, start + sum(widths[index[0]: index[-1] + 1]),
                          scale_input=False)
    return IA3Adapter(d_out, 0, d_out, scale_input=False)


def attach(adapter: AdapterLayer, ctx: AttachContext) -> None:
    if isinstance(adapter, IA3Adapter) and adapter.scale_input:
        ctx.pre_hook(ctx.module, adapter.scale_args, with_kwargs=True)


IA3 = register_method(MethodDef(
    name="ia3",
    placement=Placement.PROJECTION,
    build=build,
    fields=(IA3_TARGETS, LAYERS, TARGET_MODULES),
    where=lambda spec: spec.ia3_targets,
    attach=attach,
    hints={"positions": "ia3_targets"},
    merges=True,
    merge_note="its scaling is linear: rows of W_k, W_v and columns of W_out are scaled",
    summary="learned rescaling of keys, values and the FFN activation",
))
