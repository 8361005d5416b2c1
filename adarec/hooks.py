"""The one module that touches torch's private hook dictionaries.

Adding hooks goes through torch's public API. Removing them cannot, for our purposes: a
``RemovableHandle`` points at the dictionary of the module it was created on, so it does not
follow a ``copy.deepcopy`` of the model, while adapters must eject from copies too. So hooks are
found by what they are (a function, or a method of an adapter layer) and deleted from the
module's own dictionaries, here and only here. `tests/test_hooks.py` pins the dictionary names
and fails loudly when a torch release changes them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from torch import nn

FORWARD_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called")
"""A forward hook lives in the first; the others hold flags keyed by the same id."""
PRE_DICTS = ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs")
"""A forward pre-hook lives in the first; the second holds a flag keyed by the same id."""


def add_forward_hook(module: nn.Module, hook: Callable[..., Any], *, with_kwargs: bool = False,
                     prepend: bool = False, always_call: bool = False) -> None:
    """``always_call``: run it even when the forward raises (to undo what a pre-hook set)."""
    module.register_forward_hook(hook, with_kwargs=with_kwargs, prepend=prepend,
                                 always_call=always_call)


def add_pre_hook(module: nn.Module, hook: Callable[..., Any], *, with_kwargs: bool = False,
                 prepend: bool = False) -> None:
    module.register_forward_pre_hook(hook, with_kwargs=with_kwargs, prepend=prepend)


def _dicts(module: nn.Module, names: tuple[str, ...]) -> list[dict[int, Any]]:
    try:
        return [getattr(module, n) for n in names]
    except AttributeError as exc:  # pragma: no cover - only on an incompatible torch
        raise RuntimeError(
            f"torch's nn.Module no longer has the hook dictionary {exc.name!r}; adarec's "
            "adarec/hooks.py must be updated for this torch release"
        ) from None


def iter_hooks(module: nn.Module) -> Iterator[Callable[..., Any]]:
    """Every forward and forward pre-hook on ``module`` (not its children)."""
    yield from _dicts(module, FORWARD_DICTS)[0].values()
    yield from _dicts(module, PRE_DICTS)[0].values()


def hook_ids(module: nn.Module) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The handle ids of ``module``'s forward hooks and forward pre-hooks (never reused, so a
    cache key holding them changes when a hook is added or removed)."""
    return (tuple(_dicts(module, FORWARD_DICTS)[0]), tuple(_dicts(module, PRE_DICTS)[0]))


def global_hook_ids() -> tuple[tuple[int, ...], ...]:
    """Handle ids of the hooks registered for every module
    (``nn.modules.module.register_module_forward_hook`` and its pre-hook twin)."""
    from torch.nn.modules import module as mod

    names = ("_global_forward_hooks", "_global_forward_pre_hooks")
    return tuple(tuple(getattr(mod, n, {})) for n in names)


def remove_hooks(module: nn.Module, pred: Callable[[Callable[..., Any]], bool]) -> int:
    """Delete every forward and forward pre-hook of ``module`` for which ``pred(hook)`` is true,
    with their flags; returns how many were removed."""
    n = 0
    for names in (FORWARD_DICTS, PRE_DICTS):
        hooks, *flags = _dicts(module, names)
        for key, fn in list(hooks.items()):
            if pred(fn):
                del hooks[key]
                for d in flags:
                    d.pop(key, None)
                n += 1
    return n
