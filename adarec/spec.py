"""`AdapterSpec`: one immutable, JSON-round-trippable description of an adapter set.

A spec is a method name plus the values of the fields *that method uses*. The fields are a shared
vocabulary: the ones several methods understand (``bottleneck``, ``dropout``, ``layers``, ...) are
declared here, and a method adds its own (a rank, the blocks a tapping network reads ...) in its own
file when it registers (`adarec.registry.register_method`). So this file knows no method by name.

Every value is checked when the spec is built, however it is built (the constructor, `preset`
with overrides, `from_dict`, `replace`): an unknown field, a field the method does not use, an
out-of-range number or a value JSON cannot hold raises `SpecError` naming the field and what it
accepts, where it was written, instead of deep inside a forward pass or at save time.
"""

from __future__ import annotations

import copy
import difflib
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
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


# ------------------------------------------------------------------------------------- the spec
def _registry() -> Any:
    from . import registry

    return registry


class AdapterSpec:
    """What to inject and where: a method and the values of the fields it uses.

    ``AdapterSpec(method, **fields)``; fields left out take the method's defaults (its preset).
    A field the method does not use must be left out (or ``None``); reading it gives ``None``.
    ``bottleneck`` (a width) and ``reduction_factor`` (hidden size / bottleneck) are exclusive.
    ``layers`` indexes the model's block stack (negative indices count from the top; ``None``
    means all blocks). ``target_modules`` overrides the layout: a string is a regex matched against
    full module names, a sequence matches name suffixes (as in peft's ``target_modules``).
    ``extra`` holds free-form JSON-serialisable metadata (it does not take part in equality).
    See `adarec.registry.method_info` for what each method uses.
    """

    __slots__ = ("_extra", "_method", "_values")
    _method: str
    _values: dict[str, Any]
    _extra: dict[str, Any]

    def __init__(self, method: str | None = None, **fields: Any) -> None:
        reg = _registry()
        if method is None:
            method = reg.DEFAULT_METHOD
        info = reg.method_info(method)  # SpecError for an unknown method
        extra = fields.pop("extra", None)
        unknown = sorted(n for n in fields if n not in _FIELDS)
        if unknown:
            raise SpecError(_unknown_message(unknown, info))
        uses = info.field_names
        for name, value in fields.items():
            if name not in uses and value is not None:
                raise SpecError(_foreign_message(name, value, info))
        values: dict[str, Any] = {}
        for f in info.all_fields:
            if f.name in fields:
                value = fields[f.name]
            elif any(fields.get(x) is not None for x in f.excludes):
                value = None
            else:
                value = info.defaults.get(f.name, f.default)
            value = f.normalise(value)
            if not f.check(value):
                raise SpecError(f"AdapterSpec.{f.name}={value!r} is invalid: {f.allowed}")
            values[f.name] = value
        object.__setattr__(self, "_method", method)
        object.__setattr__(self, "_values", values)
        object.__setattr__(self, "_extra", _json_copy(extra))
        if info.validate is not None:
            info.validate(self)

    # -------------------------------------------------------------------------- attributes
    @property
    def method(self) -> str:
        return self._method

    @property
    def extra(self) -> dict[str, Any]:
        """A copy: a spec never changes after construction."""
        return copy.deepcopy(self._extra)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        values = self._values
        if name in values:
            return values[name]
        if name in _FIELDS:
            return None  # a field this method does not use
        raise AttributeError(f"AdapterSpec has no field {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("AdapterSpec is immutable; use spec.replace(...)")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("AdapterSpec is immutable")

    def fields(self) -> dict[str, Any]:
        """The method's fields and their values."""
        return dict(self._values)

    def uses(self, name: str) -> bool:
        """Whether this spec's method takes field ``name``."""
        return name in self._values

    # -------------------------------------------------------------------------- value object
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AdapterSpec):
            return NotImplemented
        return self._method == other._method and self._values == other._values

    def __hash__(self) -> int:
        return hash((self._method, tuple(sorted(self._values.items()))))

    def __repr__(self) -> str:
        parts = [f"method={self._method!r}", *(f"{k}={v!r}" for k, v in self._values.items())]
        if self._extra:
            parts.append(f"extra={self._extra!r}")
        return f"AdapterSpec({', '.join(parts)})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self._method, self._values, self._extra))

    def __copy__(self) -> AdapterSpec:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> AdapterSpec:
        return self

    # -------------------------------------------------------------------------- helpers
    @property
    def is_bottleneck(self) -> bool:
        """A bottleneck adapter at sublayer outputs."""
        reg = _registry()
        info = reg.method_info(self._method)
        return info.placement is reg.Placement.SUBLAYER and "bottleneck" in self._values

    @property
    def needs_bottleneck(self) -> bool:
        """The method has a width to choose (``bottleneck`` or ``reduction_factor``)."""
        return "bottleneck" in self._values

    def bottleneck_for(self, hidden: int) -> int:
        """The bottleneck width for a sublayer of width ``hidden``."""
        bottleneck = self._values.get("bottleneck")
        if bottleneck is not None:
            return int(bottleneck)
        factor = self._values.get("reduction_factor")
        if factor is None:
            raise SpecError(f"AdapterSpec(method={self._method!r}) has no bottleneck width")
        k = max(1, round(hidden / factor))
        if k > MAX_WIDTH:
            raise SpecError(
                f"AdapterSpec.reduction_factor={factor} gives a bottleneck of {k} for width "
                f"{hidden}; the largest allowed is {MAX_WIDTH}"
            )
        return k

    def replace(self, **changes: Any) -> AdapterSpec:
        """A copy with some fields changed (validated again). Setting one of two exclusive fields
        (``reduction_factor``) unsets the other (``bottleneck``)."""
        values: dict[str, Any] = {**self._values, "extra": self._extra}
        for name, value in changes.items():
            f = _FIELDS.get(name)
            if f is not None and value is not None:
                for other in f.excludes:
                    if other not in changes:
                        values.pop(other, None)
        values.update(changes)
        method = values.pop("method", self._method)
        return AdapterSpec(method, **values)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; ``from_dict(to_dict())`` gives back an equal spec."""
        out: dict[str, Any] = {"method": self._method}
        for k, v in self._values.items():
            out[k] = list(v) if isinstance(v, tuple) else v
        out["extra"] = copy.deepcopy(self._extra)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AdapterSpec:
        """Build a spec from a dict (``to_dict`` output, or one written by hand); fields left out
        take the method's defaults. Dicts written by adarec 0.1 (every field, used or not) load as
        they did then."""
        if not isinstance(data, Mapping):
            raise SpecError(f"an adapter spec dict must be a mapping, got {type(data).__name__}")
        from .spec_v1 import is_v1, upgrade_v1

        data = upgrade_v1(data) if is_v1(data) else dict(data)
        method = data.pop("method", None)
        if method is not None and not isinstance(method, str):
            raise SpecError(f"AdapterSpec.method={method!r} is invalid: must be a string")
        return cls(method, **data)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> AdapterSpec:
        """A named preset (every method is one, more may be registered) with field overrides."""
        _registry().ensure_builtins()
        if name not in PRESETS:
            close = difflib.get_close_matches(name, list(PRESETS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise SpecError(f"unknown adapter preset {name!r}{hint} presets: {list(PRESETS)}")
        return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]


def _rebuild(method: str, values: dict[str, Any], extra: dict[str, Any]) -> AdapterSpec:
    return AdapterSpec(method, **values, extra=extra)


def _json_copy(extra: Any) -> dict[str, Any]:
    if extra is None:
        return {}
    if not isinstance(extra, dict) or not all(isinstance(k, str) for k in extra):
        raise SpecError(f"AdapterSpec.extra={extra!r} is invalid: must be a dict with str keys")
    try:
        return dict(json.loads(json.dumps(extra, allow_nan=False)))
    except (TypeError, ValueError) as exc:
        raise SpecError(
            f"AdapterSpec.extra is invalid: it must be JSON-serialisable (it is saved with the "
            f"adapters): {exc}"
        ) from None


def _unknown_message(unknown: list[str], info: Any) -> str:
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, [*info.field_names, *_FIELDS], n=1)
        if close:
            hints.append(f"{name!r}: did you mean {close[0]!r}?")
    hint = (" (" + "; ".join(hints) + ")") if hints else ""
    return (f"unknown AdapterSpec field(s) {unknown}{hint}; method {info.name!r} takes "
            f"{sorted(info.field_names)} (plus 'method' and 'extra'); all fields: "
            f"{sorted(_FIELDS)}")


def _foreign_message(name: str, value: Any, info: Any) -> str:
    meant = info.hints.get(name)
    if meant is None:
        close = difflib.get_close_matches(name, list(info.field_names), n=1, cutoff=0.5)
        meant = close[0] if close else None
    hint = f"; did you mean {meant!r}?" if meant else ""
    return (f"AdapterSpec.{name}={value!r} does not apply to method {info.name!r}{hint} "
            f"Method {info.name!r} takes {sorted(info.field_names)}")


def as_spec(spec: AdapterSpec | str | Mapping[str, Any]) -> AdapterSpec:
    """Accept a spec, a preset name or a dict, the three forms `inject_adapters` takes."""
    if isinstance(spec, AdapterSpec):
        return spec
    if isinstance(spec, str):
        return AdapterSpec.preset(spec)
    if isinstance(spec, Mapping):
        return AdapterSpec.from_dict(spec)
    raise SpecError(
        f"expected an AdapterSpec, a preset name or a dict, got {type(spec).__name__}"
    )


def exactly_one(spec: AdapterSpec, first: str, second: str) -> None:
    """Refuse a spec that sets both or neither of two exclusive fields."""
    a, b = getattr(spec, first), getattr(spec, second)
    if (a is None) == (b is None):
        raise SpecError(
            f"AdapterSpec.{first}={a!r} is invalid: give exactly one of {first} and {second} "
            f"(got {first}={a!r}, {second}={b!r})"
        )


# ------------------------------------------------------------------------------------ presets
PRESETS: dict[str, AdapterSpec] = {}
"""Named specs; every registered method is one (its defaults), `register_preset` adds more."""


def register_preset(name: str, spec: AdapterSpec) -> None:
    """Add a named preset, usable wherever a spec is accepted. A method's own name always means
    its defaults, so it cannot be taken."""
    if not isinstance(spec, AdapterSpec):
        raise SpecError(f"a preset must be an AdapterSpec, got {type(spec).__name__}")
    if name in _registry().method_names():
        raise SpecError(f"preset name {name!r} is a method's name (its defaults); choose another")
    PRESETS[name] = spec


def normalise_layers(
    layers: Sequence[int] | None, n_blocks: int, field_name: str = "layers"
) -> list[int]:
    """Resolve (possibly negative) block indices against a stack of ``n_blocks`` blocks: the
    sorted set of blocks they name (``(1, -1)`` on two blocks is block 1; a spec itself refuses
    an index written twice)."""
    if layers is None:
        return list(range(n_blocks))
    out = set()
    for i in layers:
        j = i + n_blocks if i < 0 else i
        if not 0 <= j < n_blocks:
            raise SpecError(
                f"AdapterSpec.{field_name} contains {i}, but the model has {n_blocks} blocks "
                f"(valid: {-n_blocks}..{n_blocks - 1})"
            )
        out.add(j)
    return sorted(out)


def __getattr__(name: str) -> Any:
    """``METHODS``, ``MODEL_METHODS`` and ``BOTTLENECK_METHODS`` as they are now registered
    (module attributes of adarec 0.1; prefer `adarec.registry.method_names`)."""
    reg = _registry()
    if name == "METHODS":
        return reg.method_names()
    if name == "MODEL_METHODS":
        return reg.method_names(reg.Placement.MODEL)
    if name == "BOTTLENECK_METHODS":
        return tuple(n for n in reg.method_names(reg.Placement.SUBLAYER)
                     if "bottleneck" in reg.method_info(n).field_names)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
