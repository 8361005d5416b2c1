"""The spec field vocabulary: `SpecField`, its value checks, and the fields several methods share.

Why a module of its own: a method declares its fields when it registers, and the method table
(`adarec.methods_table`) and the spec (`adarec.spec`) both read them, so the vocabulary sits below
both. `adarec.spec` re-exports every public name here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from .errors import SpecError

MAX_WIDTH = 1 << 16
"""Largest adapter width (bottleneck, rank, number of soft tokens) a spec accepts: far above any
use, far below what makes the allocator fail with an unreadable error."""
MAX_INDEX = 1 << 20
"""Largest block index (either sign) a spec accepts."""


# ------------------------------------------------------------------------------ field vocabulary
@dataclass(frozen=True)
class SpecField:
    """One spec field: its default, what it accepts, and which fields it cancels.

    ``check(value)`` returns ``True`` for an acceptable value; ``allowed`` says in words what is
    accepted (it becomes the error message). ``sequence`` fields take any sequence and store a
    tuple. Setting a field listed in ``excludes`` (``bottleneck`` vs ``reduction_factor``) leaves
    this one unset instead of at its default.
    """

    name: str
    default: Any
    check: Callable[[Any], bool]
    allowed: str
    doc: str = ""
    sequence: bool = False
    excludes: tuple[str, ...] = ()

    def normalise(self, value: Any) -> Any:
        if self.sequence and isinstance(value, (list, range)):
            return tuple(value)
        return value


def is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def int_in(lo: int, hi: int) -> Callable[[Any], bool]:
    return lambda x: is_int(x) and lo <= x <= hi


def number_in(lo: float, hi: float, *, low_open: bool = False, high_open: bool = False
              ) -> Callable[[Any], bool]:
    def ok(x: Any) -> bool:
        if not is_number(x):
            return False
        return (lo < x if low_open else lo <= x) and (x < hi if high_open else x <= hi)

    return ok


def distinct_from(choices: Sequence[str], *, min_size: int = 1) -> Callable[[Any], bool]:
    """A tuple of distinct values from ``choices`` with at least ``min_size`` items."""
    return lambda x: (isinstance(x, tuple) and len(x) >= min_size and len(set(x)) == len(x)
                      and all(isinstance(v, str) and v in choices for v in x))


def block_indices(*, allow_none: bool) -> Callable[[Any], bool]:
    """``None`` (when allowed: every block) or a non-empty tuple of distinct block indices."""
    def ok(x: Any) -> bool:
        if x is None:
            return allow_none
        return (isinstance(x, tuple) and len(x) > 0 and len(set(x)) == len(x)
                and all(is_int(i) and -MAX_INDEX <= i < MAX_INDEX for i in x))

    return ok


def _activations() -> tuple[str, ...]:
    from transformers.activations import ACT2FN

    return tuple(sorted(ACT2FN))


def _valid_targets(tm: Any) -> bool:
    if tm is None:
        return True
    if isinstance(tm, str):
        try:
            re.compile(tm)
        except re.error:
            return False
        return tm != ""
    return isinstance(tm, tuple) and len(tm) > 0 and all(isinstance(t, str) and t for t in tm)


POSITIONS = ("mha", "ffn")
"""Sublayers a bottleneck adapter can follow: self-attention and feed-forward."""

BOTTLENECK = SpecField(
    "bottleneck", 64, lambda x: x is None or (is_int(x) and 1 <= x <= MAX_WIDTH),
    f"must be None or an integer in [1, {MAX_WIDTH}]", "bottleneck width",
    excludes=("reduction_factor",),
)
REDUCTION_FACTOR = SpecField(
    "reduction_factor", None, lambda x: x is None or number_in(1 / 16, MAX_WIDTH)(x),
    f"must be None or a number in [0.0625, {MAX_WIDTH}] (bottleneck = hidden / factor)",
    "bottleneck = hidden size / reduction_factor", excludes=("bottleneck",),
)
POSITIONS_FIELD = SpecField(
    "positions", POSITIONS, distinct_from(POSITIONS, min_size=0),
    f"must be distinct values from {list(POSITIONS)}", "sublayers that get an adapter",
    sequence=True,
)
LAYERS = SpecField(
    "layers", None, block_indices(allow_none=True),
    "must be None (all blocks) or a non-empty sequence of distinct block indices",
    "block indices; negative counts from the top", sequence=True,
)
ACTIVATION = SpecField(
    "activation", "gelu", lambda x: isinstance(x, str) and x in _activations(),
    "must be a name in transformers.activations.ACT2FN", "activation inside the bottleneck",
)
DROPOUT = SpecField(
    "dropout", 0.0, number_in(0.0, 1.0, high_open=True), "must be a probability in [0, 1)",
    "dropout inside the adapter",
)
SCALING = SpecField(
    "scaling", 1.0, number_in(0.0, 1e6, low_open=True), "must be a number in (0, 1e6]",
    "multiplier of the adapter's output",
)
TARGET_MODULES = SpecField(
    "target_modules", None, _valid_targets,
    "must be None, a valid regex string, or a non-empty sequence of module-name suffixes",
    "explicit targets instead of the layout", sequence=True,
)
TUNE_LAYERNORM = SpecField(
    "tune_layernorm", False, lambda x: isinstance(x, bool), "must be a bool",
    "also train the norm layers",
)
COMMON_FIELDS = (TUNE_LAYERNORM,)
"""Fields every method takes (besides ``method`` and ``extra``)."""

_FIELDS: dict[str, SpecField] = {}
FIELDS: Mapping[str, SpecField] = MappingProxyType(_FIELDS)
"""Every field a spec may carry (for some method), by name: a read-only, live view."""


def register_fields(fields: Iterable[SpecField]) -> None:
    """Add fields to the vocabulary; a name may be declared once (by one definition)."""
    for f in fields:
        if f.name in ("method", "extra") or f.name.startswith("_"):
            raise SpecError(f"{f.name!r} cannot be a spec field name")
        known = _FIELDS.get(f.name)
        if known is not None and known is not f:
            raise SpecError(
                f"spec field {f.name!r} is already declared with another definition; "
                "reuse that SpecField object or choose another name"
            )
        _FIELDS[f.name] = f


register_fields([BOTTLENECK, REDUCTION_FACTOR, POSITIONS_FIELD, LAYERS, ACTIVATION, DROPOUT,
                 SCALING, TARGET_MODULES, TUNE_LAYERNORM])
_SHARED = frozenset(_FIELDS)


def forget_fields(names: Iterable[str]) -> None:
    """Drop method-declared fields from the vocabulary (when their last method is unregistered);
    the shared fields declared here stay."""
    for name in names:
        if name not in _SHARED:
            _FIELDS.pop(name, None)


def spec_fields() -> dict[str, SpecField]:
    """Every field a spec may carry (for some method), by name."""
    return dict(_FIELDS)


__all__ = [
    "ACTIVATION",
    "BOTTLENECK",
    "COMMON_FIELDS",
    "DROPOUT",
    "FIELDS",
    "LAYERS",
    "MAX_INDEX",
    "MAX_WIDTH",
    "POSITIONS",
    "POSITIONS_FIELD",
    "REDUCTION_FACTOR",
    "SCALING",
    "TARGET_MODULES",
    "TUNE_LAYERNORM",
    "SpecField",
    "block_indices",
    "distinct_from",
    "forget_fields",
    "int_in",
    "is_int",
    "is_number",
    "number_in",
    "register_fields",
    "spec_fields",
]
