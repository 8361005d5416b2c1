"""Adapter layers, one file per method, and the single registration point `ADAPTER_BUILDERS`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .base import AdapterLayer, is_adapter
from .bottleneck import BottleneckAdapter, build_bottleneck
from .compacter import PHMLinear, build_compacter
from .lora import LoRAAdapter, build_lora

Builder = Callable[[Any, int, int, dict[str, Any]], AdapterLayer]

ADAPTER_BUILDERS: dict[str, Builder] = {
    "houlsby": build_bottleneck,
    "pfeiffer": build_bottleneck,
    "parallel": build_bottleneck,
    "compacter": build_compacter,
    "lora": build_lora,
}
"""method name -> ``builder(spec, d_in, d_out, shared) -> AdapterLayer``; ``shared`` is one dict
per injected set (Compacter keeps its shared rule matrices there)."""

__all__ = [
    "ADAPTER_BUILDERS",
    "AdapterLayer",
    "BottleneckAdapter",
    "LoRAAdapter",
    "PHMLinear",
    "is_adapter",
]
