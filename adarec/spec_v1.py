"""Reading spec dicts written by adarec 0.1 (checkpoint format 1, before the method registry).

adarec 0.1 had one flat spec with every field of every method and wrote all of them, used or not
(a Houlsby set carried ``lora_r=8``). Those fields were ignored by the methods that did not use
them, so loading such a dict drops them: the model computes what it computed when it was saved.
A dropped field that holds a value other than its old default (or the "unset" ``None``/``[]``)
was set by hand and silently ignored then; that is said with a warning now.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from .methods_table import method_info

V1_DEFAULTS: dict[str, Any] = {
    "method": "houlsby", "bottleneck": 64, "reduction_factor": None,
    "positions": ["mha", "ffn"], "layers": None, "activation": "gelu", "dropout": 0.0,
    "scaling": 1.0, "phm_dim": 4, "phm_rank": 1, "shared_phm_rule": True, "lora_r": 8,
    "lora_alpha": 16.0, "lora_dropout": 0.0, "lora_targets": ["q", "v"], "target_modules": None,
    "tune_layernorm": False, "kadapter_layers": [0, -1], "kadapter_depth": 2,
    "kadapter_heads": 4, "kadapter_causal": None, "prompt_length": 10, "prompt_init": "random",
    "ia3_targets": ["k", "v", "ffn_out"], "extra": {},
}
"""Every field adarec 0.1 wrote, with its default then."""


def is_v1(data: Mapping[str, Any]) -> bool:
    """A 0.1 dict has exactly the 0.1 field set (0.1's ``to_dict`` always wrote every field)."""
    return set(data) == set(V1_DEFAULTS)


def upgrade_v1(data: Mapping[str, Any]) -> dict[str, Any]:
    """The dict without the fields its method does not use."""
    method = data.get("method")
    if not isinstance(method, str):
        return dict(data)  # let the spec constructor name the problem
    uses = method_info(method).field_names | {"method", "extra"}
    out, ignored = {}, []
    for name, value in data.items():
        if name in uses:
            out[name] = value
        elif value not in (V1_DEFAULTS[name], None, []):
            ignored.append(f"{name}={value!r}")
    if ignored:
        warnings.warn(
            f"this {method!r} spec was written by adarec 0.1 with field(s) {ignored} that "
            f"{method!r} does not use; they were ignored then and are dropped now",
            stacklevel=3,
        )
    return out
