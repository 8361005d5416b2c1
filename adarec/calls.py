"""Reading a module's call arguments from inside hooks: where ``forward`` takes a parameter, and
its value in one call, whether it was passed by position or by keyword."""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn


def arg_locator(module: nn.Module, names: tuple[str, ...]) -> tuple[str, int | None] | None:
    """Where ``module.forward`` takes the first parameter called one of ``names``: its name and
    positional index (``None`` when keyword-only), or ``None`` when it has no such parameter."""
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return None
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    for want in names:
        for i, p in enumerate(params):
            if p.name == want:
                return want, (i if p.kind in positional else None)
    return None


def positional_names(module: nn.Module) -> tuple[str, ...]:
    """The names ``module.forward`` binds positional arguments to, in order."""
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return ()
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return tuple(p.name for p in params if p.kind in kinds)


def read_arg(
    loc: tuple[str, int | None] | None, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """The value of the located parameter in one call, or ``None`` when it was not passed."""
    if loc is None:
        return None
    name, index = loc
    if name in kwargs:
        return kwargs[name]
    return args[index] if index is not None and index < len(args) else None
