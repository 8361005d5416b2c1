"""Houlsby adapter (Houlsby et al. 2019): a bottleneck after the attention and the feed-forward
sublayer, ``y' = y + s * up(drop(act(down(y))))``, zero-initialised ``up`` (identity at init)."""

from __future__ import annotations

from ..registry import MethodDef, Placement, register_method
from . import bottleneck

HOULSBY = register_method(MethodDef(
    name="houlsby",
    placement=Placement.SUBLAYER,
    build=bottleneck.build,
    fields=bottleneck.FIELDS,
    defaults={"bottleneck": 64, "positions": ("mha", "ffn")},
    where=lambda spec: spec.positions,
    validate=bottleneck.validate,
    merge_note=bottleneck.NONLINEAR,
    summary="bottleneck after the MHA and the FFN output projection",
))
