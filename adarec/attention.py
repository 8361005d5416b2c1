"""An attach point inside attention: rewrite the query, key, value and mask an attention module
hands its kernel, for methods that add key/value positions (a hook on the k and v projections
cannot: the module reshapes their outputs to the input's length before the kernel).

Hugging Face attention modules compute ``q, k, v`` (heads split, rotary positions applied, the
KV cache updated) and then call ``ALL_ATTENTION_FUNCTIONS.get_interface(
self.config._attn_implementation, eager_attention_forward)(self, q, k, v, mask, ...)``. While an
attached module runs, a pre-hook gives it a view of its config whose ``_attn_implementation``
names adarec's kernel (registered once in transformers' `AttentionInterface`); that kernel runs
the active rewrites on an `AttentionCall`, then the model's own implementation (its eager
function or the registered one the real config names). A forward hook (called even when the
forward raises) puts the real config back, so the model's config, ``state_dict`` and copies never
see the view, and ejecting the hooks undoes everything.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .adapters.base import hook_owner
from .errors import AdapterStateError, UnsupportedModuleError
from .hooks import add_forward_hook, add_pre_hook

KERNEL = "adarec_rewrite"
"""The name adarec's kernel is registered under in transformers' `AttentionInterface`."""


@dataclass
class AttentionCall:
    """One kernel call: ``query [batch, heads, q_len, head_dim]``, ``key``/``value``
    ``[batch, kv_heads, kv_len, head_dim]`` (after rotary positions and the KV cache), the mask
    as the model built it (``None``; bool, True where attended; or additive float, ``[batch or 1,
    1 or heads, q_len, kv_len]``), the other keyword arguments, and the implementation the model
    runs (``"eager"``, ``"sdpa"``, ...). A rewrite changes the fields in place."""

    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    mask: torch.Tensor | None
    kwargs: dict[str, Any]
    implementation: str


Rewrite = Callable[[nn.Module, AttentionCall], None]


class _ConfigView:
    """The attention module's config, except that it names adarec's kernel; holds the rewrites
    of this forward."""

    _attn_implementation = KERNEL

    def __init__(self, base: Any) -> None:
        self.__dict__["base"] = base
        self.__dict__["rewrites"] = []
        self.__dict__["calls"] = 0

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.__dict__["base"], name)


def _eager(module: nn.Module) -> Callable[..., Any] | None:
    """The eager kernel the module's own file defines (its default in ``get_interface``)."""
    fn = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    return fn if callable(fn) else None


def _kernel(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
            attention_mask: torch.Tensor | None, *args: Any, **kwargs: Any) -> Any:
    view = module.__dict__.get("config")
    if not isinstance(view, _ConfigView):
        raise AdapterStateError(
            f"adarec's attention kernel was called for {type(module).__name__} outside an "
            "adapted forward (its config names it)"
        )
    impl = getattr(view.base, "_attn_implementation", None) or "eager"
    call = AttentionCall(query, key, value, attention_mask, kwargs, impl)
    for rewrite in view.rewrites:
        rewrite(module, call)
    view.__dict__["calls"] += 1
    fn = _eager(module) if impl == "eager" else ALL_ATTENTION_FUNCTIONS[impl]
    assert fn is not None  # checked by check_attention_module
    return fn(module, call.query, call.key, call.value, call.mask, *args, **call.kwargs)


AttentionInterface.register(KERNEL, _kernel)


def check_attention_module(module: nn.Module, what: str) -> None:
    """Refuse (naming ``what`` needs it) a module whose kernel adarec cannot reach: one without a
    transformers config, or from a file that does not dispatch through `AttentionInterface`."""
    config = getattr(module, "config", None)
    file = sys.modules.get(type(module).__module__)
    if (config is None or not hasattr(config, "_attn_implementation") or _eager(module) is None
            or getattr(file, "ALL_ATTENTION_FUNCTIONS", None) is None):
        raise UnsupportedModuleError(
            f"{what} rewrites the attention kernel call, which needs a Hugging Face attention "
            f"module dispatching through transformers' AttentionInterface (config."
            f"_attn_implementation, eager_attention_forward); {type(module).__name__} "
            f"({type(module).__module__}) is not one"
        )


def _enter(rewrite: Rewrite, module: nn.Module, args: tuple[Any, ...]) -> None:
    if not hook_owner(rewrite).active:
        return
    view = module.__dict__.get("config")
    if not isinstance(view, _ConfigView):
        view = _ConfigView(module.config)
        module.__dict__["config"] = view
    view.rewrites.append(rewrite)


def _leave(rewrite: Rewrite, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
    view = module.__dict__.get("config")
    if not isinstance(view, _ConfigView) or rewrite not in view.rewrites:
        return
    view.rewrites.remove(rewrite)
    calls = view.calls
    if not view.rewrites:
        module.__dict__["config"] = view.base
    if calls == 0 and output is not None:
        raise AdapterStateError(
            f"{type(module).__name__} ran without calling transformers' attention interface, so "
            f"adapter set {hook_owner(rewrite).set_name!r} could not change its "
            "attention; this attention module is not supported"
        )


def attach_attention(rewrite: Rewrite, module: nn.Module) -> None:
    """Run ``rewrite(module, call)`` on every kernel call of ``module`` while its adapter (the
    object ``rewrite`` is a method of) is active. The hooks are partials of that method, so
    ejecting the adapter's hooks finds them."""
    check_attention_module(module, type(hook_owner(rewrite)).__name__)
    add_pre_hook(module, functools.partial(_enter, rewrite))
    add_forward_hook(module, functools.partial(_leave, rewrite), always_call=True)


__all__ = ["KERNEL", "AttentionCall", "Rewrite", "attach_attention", "check_attention_module"]
