"""Full model states (the pre-train -> transfer protocol): `save_model_state` /
`load_model_state`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from ..adapters.base import Mergeable
from ..inject import (
    iter_adapters,
)
from ..version import __version__
from .digests import _persistent_buffers
from .files import FORMAT_VERSION, STATE_CONFIG, STATE_FORMAT, STATE_WEIGHTS, PathLike, _write
from .fingerprints import fingerprint
from .loading import _activate, _finish, _start_load
from .records import LoadResult
from .set_records import _groups, _set_records


def save_model_state(model: nn.Module, path: PathLike) -> Path:
    """Save every parameter and persistent buffer of ``model`` (adapters included), atomically.

    The pre-train -> transfer protocol: a recommender pre-trained on the source domain is saved
    whole, then loaded into a fresh instance before the adapters for a target domain go in.
    """
    groups = _groups(model, None)
    tensors: dict[str, torch.Tensor] = {}
    info: dict[str, dict[str, Any]] = {}
    named = {**{n: p for n, p in model.named_parameters()}, **_persistent_buffers(model)}
    for n, t in named.items():
        tensors[n] = t
        info[n] = {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch."),
                   "requires_grad": t.requires_grad if isinstance(t, nn.Parameter) else None,
                   "kind": "state", "set": None}
    modules = sorted({s["module"] for g in groups.values() for s in g["sites"]})
    config = {
        "format": STATE_FORMAT,
        "format_version": FORMAT_VERSION,
        "adarec_version": __version__,
        "torch_version": torch.__version__,
        "base_model": {**fingerprint(model, modules), "weights": {}},  # every tensor is saved
        "adapter_sets": _set_records(groups),
        "tensors": info,
    }
    return _write(path, config, tensors, STATE_CONFIG, STATE_WEIGHTS)


def load_model_state(
    model: nn.Module,
    path: PathLike,
    strict: bool = True,
    *,
    activate: str | Sequence[str] | None = None,
    restore_requires_grad: bool = False,
) -> LoadResult:
    """Load a `save_model_state` folder into a freshly built ``model`` of the same architecture.

    Recorded adapter sets are injected where absent; LoRA sets that were saved merged are marked
    merged again (their delta is already inside the loaded base weights). Afterwards exactly the
    sets that were active when saved are on (possibly none: the saved model is reproduced), or
    ``activate``. ``requires_grad`` flags of the parameters the model already had are left alone
    unless ``restore_requires_grad=True`` (then every parameter gets its saved flag).
    """
    config, tensors, result, injected = _start_load(model, path, STATE_FORMAT, strict,
                                                    "another model", False, activate)
    expected = {n for n in (*dict(model.named_parameters()), *_persistent_buffers(model))}
    result = _finish(model, path, config, tensors, expected, result, injected, strict,
                     restore_requires_grad)
    result.active = _activate(model, config, activate, first_if_none=False)
    for rec in config["adapter_sets"]:
        if rec["merged"]:
            for _, _, a in iter_adapters(model.get_submodule(rec["root"])):
                if a.set_name == rec["name"] and hasattr(a, "merged"):
                    cast(Mergeable, a).merged = True
    return result
