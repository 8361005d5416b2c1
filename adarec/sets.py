"""Which adapter sets a model holds: the read-only queries every layer above asks.

Why a module of its own: freezing, the save_pretrained guard, injection, merging and checkpoints
all need them, and injection needs freezing, so they live below all of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from torch import nn

from .adapters.base import ADAPTERS_ATTR, AdapterLayer

if TYPE_CHECKING:
    from .spec import AdapterSpec


def iter_adapters(model: nn.Module) -> Iterator[tuple[str, nn.Module, AdapterLayer]]:
    """``(name of adapted module, adapted module, adapter)`` for every adapter in ``model``."""
    for mname, module in model.named_modules():
        container = module._modules.get(ADAPTERS_ATTR)
        if isinstance(container, nn.ModuleDict):
            for adapter in container.values():
                yield mname, module, adapter  # type: ignore[misc]


def adapter_sets(model: nn.Module) -> dict[str, AdapterSpec]:
    """The adapter sets present in ``model``: name -> spec, in injection order."""
    out: dict[str, tuple[int, AdapterSpec]] = {}
    for _, _, a in iter_adapters(model):
        out.setdefault(a.set_name, (getattr(a, "injection_order", 0), a.spec))
    return {n: spec for n, (_, spec) in sorted(out.items(), key=lambda kv: kv[1][0])}


def active_adapters(model: nn.Module) -> list[str]:
    """Names of the sets whose adapters are switched on."""
    return list(dict.fromkeys(a.set_name for _, _, a in iter_adapters(model) if a.active))


def inactive_adapters(model: nn.Module) -> list[AdapterLayer]:
    """The adapter layers switched off and not merged. Such a layer changes no output, so the
    key of a cache of what ``model`` computes may skip it: one set's cache then outlives edits
    of another set's weights, and switching sets back finds it valid (a layer switched on again
    is back in the key)."""
    return [a for _, _, a in iter_adapters(model)
            if not a.active and not getattr(a, "merged", False)]
