"""Adapter methods, one file per method; importing a file registers its method.

`bottleneck` holds the layer the bottleneck methods share; every other file is one method: its
layer, its spec fields and one `adarec.registry.register_method` call.
"""

from __future__ import annotations

# registration order is the order of adarec.registry.method_names()
# isort: off
from . import houlsby, pfeiffer, parallel, compacter, lora, ia3, kadapter, prompt, side, prefix  # noqa: F401
# isort: on
from .base import AdapterLayer, is_adapter
from .bottleneck import BottleneckAdapter
from .compacter import PHMLinear
from .ia3 import IA3Adapter
from .kadapter import KAdapter
from .lora import LoRAAdapter
from .prefix import PrefixAdapter, fold_prefix
from .prompt import PromptAdapter
from .side import SideNetwork

__all__ = [
    "AdapterLayer",
    "BottleneckAdapter",
    "IA3Adapter",
    "KAdapter",
    "LoRAAdapter",
    "PHMLinear",
    "PrefixAdapter",
    "PromptAdapter",
    "SideNetwork",
    "fold_prefix",
    "is_adapter",
]
