"""adarec: adapter-based transfer learning for recommender systems, in PyTorch.

The core patches adapters into any Hugging Face transformer (`inject_adapters`), freezes the rest
(`mark_only_adapters_trainable`) and takes them out again (`eject_adapters`); `adarec.rec` holds
the recommender side (TransRec, data, losses, metrics).
"""

from __future__ import annotations

from .adapters import (
    AdapterLayer,
    BottleneckAdapter,
    IA3Adapter,
    KAdapter,
    LoRAAdapter,
    PHMLinear,
    PromptAdapter,
    SideNetwork,
)
from .checkpoint import (
    LoadResult,
    checkpoint_info,
    load_adapters,
    load_model_state,
    save_adapters,
    save_model_state,
)
from .errors import (
    AdapterStateError,
    AdarecError,
    CheckpointError,
    ConfigError,
    DataError,
    DataFileNotFoundError,
    EvaluationError,
    RegistrationError,
    SpecError,
    StateMismatchError,
    TargetNotFoundError,
    TrainingError,
    UnknownItemError,
    UnsupportedModuleError,
)
from .freezing import (
    ParameterSummary,
    adapter_parameters,
    freeze,
    mark_adapters_and_upper_norms_trainable,
    mark_only_adapters_trainable,
    mark_only_biases_trainable,
    parameter_summary,
    print_trainable_parameters,
    restore_requires_grad,
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
from .interop import export_peft_lora, import_peft_lora
from .layouts import Layout, register_layout
from .logs import setup_logging
from .merge import merge_adapters, unmerge_adapters
from .mixed import mixed_batch
from .precision import native_bf16, resolve_precision
from .registry import (
    AttachContext,
    BuildContext,
    MethodDef,
    PlaceContext,
    Placement,
    SetState,
    method_info,
    method_names,
    register_method,
    unregister_method,
)
from .sites import Plan, Site
from .spec import PRESETS, AdapterSpec, SpecField, as_spec, register_preset
from .stacks import StackInfo
from .training_state import load_training_state, save_training_state
from .version import __version__

__all__ = [
    "PRESETS",
    "AdapterLayer",
    "AdapterSpec",
    "AdapterStateError",
    "AdarecError",
    "AttachContext",
    "BottleneckAdapter",
    "BuildContext",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DataFileNotFoundError",
    "EvaluationError",
    "IA3Adapter",
    "KAdapter",
    "Layout",
    "LoRAAdapter",
    "LoadResult",
    "MethodDef",
    "PHMLinear",
    "ParameterSummary",
    "PlaceContext",
    "Placement",
    "Plan",
    "PromptAdapter",
    "RegistrationError",
    "SetState",
    "SideNetwork",
    "Site",
    "SpecError",
    "SpecField",
    "StackInfo",
    "StateMismatchError",
    "TargetNotFoundError",
    "TrainingError",
    "UnknownItemError",
    "UnsupportedModuleError",
    "__version__",
    "active_adapters",
    "adapter_parameters",
    "adapter_sets",
    "adapters_disabled",
    "as_spec",
    "checkpoint_info",
    "eject_adapters",
    "export_peft_lora",
    "freeze",
    "import_peft_lora",
    "inject_adapters",
    "iter_adapters",
    "load_adapters",
    "load_model_state",
    "load_training_state",
    "mark_adapters_and_upper_norms_trainable",
    "mark_only_adapters_trainable",
    "mark_only_biases_trainable",
    "merge_adapters",
    "method_info",
    "method_names",
    "mixed_batch",
    "native_bf16",
    "parameter_summary",
    "plan_sites",
    "print_trainable_parameters",
    "register_layout",
    "register_method",
    "register_preset",
    "resolve_precision",
    "restore_requires_grad",
    "save_adapters",
    "save_model_state",
    "save_training_state",
    "set_active_adapters",
    "setup_logging",
    "trainable_parameters",
    "unmerge_adapters",
    "unregister_method",
]
