"""adarec: adapter-based transfer learning for recommender systems, in PyTorch.

The core patches adapters into any Hugging Face transformer (`inject_adapters`), freezes the rest
(`mark_only_adapters_trainable`) and takes them out again (`eject_adapters`); `adarec.rec` holds
the recommender side (TransRec, data, losses, metrics).
"""

from __future__ import annotations

from .adapters import AdapterLayer, BottleneckAdapter, LoRAAdapter, PHMLinear
from .errors import (
    AdapterStateError,
    AdarecError,
    CheckpointError,
    SpecError,
    TargetNotFoundError,
    UnsupportedModuleError,
)
from .freeze import (
    ParameterSummary,
    adapter_parameters,
    freeze,
    mark_only_adapters_trainable,
    parameter_summary,
    print_trainable_parameters,
    trainable_parameters,
)
from .inject import (
    active_adapters,
    adapter_sets,
    adapters_disabled,
    eject_adapters,
    inject_adapters,
    iter_adapters,
    plan_sites,
    set_active_adapters,
)
from .layouts import Layout, register_layout
from .spec import PRESETS, AdapterSpec, as_spec, register_preset
from .version import __version__

__all__ = [
    "PRESETS",
    "AdapterLayer",
    "AdapterSpec",
    "AdapterStateError",
    "AdarecError",
    "BottleneckAdapter",
    "CheckpointError",
    "Layout",
    "LoRAAdapter",
    "PHMLinear",
    "ParameterSummary",
    "SpecError",
    "TargetNotFoundError",
    "UnsupportedModuleError",
    "__version__",
    "active_adapters",
    "adapter_parameters",
    "adapter_sets",
    "adapters_disabled",
    "as_spec",
    "eject_adapters",
    "freeze",
    "inject_adapters",
    "iter_adapters",
    "mark_only_adapters_trainable",
    "parameter_summary",
    "plan_sites",
    "print_trainable_parameters",
    "register_layout",
    "register_preset",
    "set_active_adapters",
    "trainable_parameters",
]
