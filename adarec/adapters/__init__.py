"""Adapter layers, one file per method, and the single registration point `ADAPTER_BUILDERS`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .base import AdapterLayer, is_adapter
from .bottleneck import BottleneckAdapter, build_bottleneck
from .compacter import PHMLinear, build_compacter
from .ia3 import IA3Adapter, build_ia3
from .kadapter import KAdapter, build_kadapter
from .lora import LoRAAdapter, build_lora
from .prompt import PromptAdapter, build_prompt
from .side import SideNetwork, build_side

Builder = Callable[[Any, int, int, dict[str, Any]], AdapterLayer]

ADAPTER_BUILDERS: dict[str, Builder] = {
    "houlsby": build_bottleneck,
    "pfeiffer": build_bottleneck,
    "parallel": build_bottleneck,
    "compacter": build_compacter,
    "lora": build_lora,
    "ia3": build_ia3,
    "kadapter": build_kadapter,
    "prompt": build_prompt,
    "side": build_side,  # TEMP(side): until the method registry
}
"""method name -> ``builder(spec, d_in, d_out, shared) -> AdapterLayer``; ``shared`` is one dict
per injected set (Compacter keeps its shared rule matrices there) into which `inject_adapters`
also writes what a builder needs about the current site (``position``; for the model-level
methods the tapped blocks, causality and word embeddings)."""

__all__ = [
    "ADAPTER_BUILDERS",
    "AdapterLayer",
    "BottleneckAdapter",
    "IA3Adapter",
    "KAdapter",
    "LoRAAdapter",
    "PHMLinear",
    "PromptAdapter",
    "SideNetwork",
    "is_adapter",
]
