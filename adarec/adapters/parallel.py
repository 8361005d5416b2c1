"""Parallel adapter (He et al. 2022, the "scaled PA"): a bottleneck beside the sublayer that reads
the sublayer's input and adds to its output, ``y' = y + s * up(drop(act(down(x))))``, ``s = 4``.

The attach step puts a forward pre-hook on the sublayer's entry module (its first projection) to
read ``x``; with an explicit ``target_modules`` match the adapter reads that module's own input.
"""

from __future__ import annotations

import functools

from ..registry import AttachContext, MethodDef, Placement, register_method
from . import bottleneck
from .base import AdapterLayer
from .bottleneck import BottleneckAdapter


def attach(adapter: AdapterLayer, ctx: AttachContext) -> None:
    entry = ctx.submodule(ctx.site.entry)
    if entry is not ctx.module and isinstance(adapter, BottleneckAdapter):
        ctx.pre_hook(entry, adapter.capture, with_kwargs=True)


PARALLEL = register_method(MethodDef(
    name="parallel",
    placement=Placement.SUBLAYER,
    build=functools.partial(bottleneck.build, parallel=True),
    fields=bottleneck.FIELDS,
    defaults={"bottleneck": 64, "positions": ("ffn",), "scaling": 4.0},
    where=lambda spec: spec.positions,
    attach=attach,
    validate=bottleneck.validate,
    merge_note=bottleneck.NONLINEAR,
    summary="bottleneck beside the FFN, reading its input, scaled x4",
))
