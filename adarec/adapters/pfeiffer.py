"""Pfeiffer adapter (Pfeiffer et al. 2021): one bottleneck per block, after the feed-forward
sublayer; otherwise as Houlsby."""

from __future__ import annotations

from ..registry import MethodDef, Placement, register_method
from . import bottleneck

PFEIFFER = register_method(MethodDef(
    name="pfeiffer",
    placement=Placement.SUBLAYER,
    build=bottleneck.build,
    fields=bottleneck.FIELDS,
    defaults={"bottleneck": 64, "positions": ("ffn",)},
    where=lambda spec: spec.positions,
    validate=bottleneck.validate,
    merge_note=bottleneck.NONLINEAR,
    summary="one bottleneck per block, after the FFN",
))
