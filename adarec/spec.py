"""`AdapterSpec`: one immutable, JSON-round-trippable description of an adapter set.

A spec is a method name plus the values of the fields *that method uses*. The fields are a shared
vocabulary: the ones several methods understand (``bottleneck``, ``dropout``, ``layers``, ...) are
declared in `adarec.spec_fields` (re-exported here), and a method adds its own (a rank, the blocks
a tapping network reads ...) in its own file when it registers (`adarec.registry.register_method`).
So this file knows no method by name.

Every value is checked when the spec is built, however it is built (the constructor, `preset`
with overrides, `from_dict`, `replace`): an unknown field, a field the method does not use, an
out-of-range number or a value JSON cannot hold raises `SpecError` naming the field and what it
accepts, where it was written, instead of deep inside a forward pass or at save time.
"""

from __future__ import annotations

import copy
import difflib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import SpecError
from .methods_table import (
    DEFAULT_METHOD,
    MethodDef,
    Placement,
    ensure_builtins,
    method_info,
    method_names,
)
from .spec_fields import (
    ACTIVATION,
    BOTTLENECK,
    COMMON_FIELDS,
    DROPOUT,
    FIELDS,
    LAYERS,
    MAX_INDEX,
    MAX_WIDTH,
    POSITIONS,
    POSITIONS_FIELD,
    REDUCTION_FACTOR,
    SCALING,
    TARGET_MODULES,
    TUNE_LAYERNORM,
    SpecField,
    block_indices,
    distinct_from,
    forget_fields,
    int_in,
    is_int,
    is_number,
    number_in,
    register_fields,
    spec_fields,
)
from .spec_v1 import is_v1, upgrade_v1


# ------------------------------------------------------------------------------------- the spec
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
        if method is None:
            method = DEFAULT_METHOD
        info = method_info(method)  # SpecError for an unknown method
        extra = fields.pop("extra", None)
        unknown = sorted(n for n in fields if n not in FIELDS)
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
        if name in FIELDS:
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
        info = method_info(self._method)
        return info.placement is Placement.SUBLAYER and "bottleneck" in self._values

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
            f = FIELDS.get(name)
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
        data = upgrade_v1(data) if is_v1(data) else dict(data)
        method = data.pop("method", None)
        if method is not None and not isinstance(method, str):
            raise SpecError(f"AdapterSpec.method={method!r} is invalid: must be a string")
        return cls(method, **data)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> AdapterSpec:
        """A named preset (every method is one, more may be registered) with field overrides."""
        ensure_builtins()
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


def _unknown_message(unknown: list[str], info: MethodDef) -> str:
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, [*info.field_names, *FIELDS], n=1)
        if close:
            hints.append(f"{name!r}: did you mean {close[0]!r}?")
    hint = (" (" + "; ".join(hints) + ")") if hints else ""
    return (f"unknown AdapterSpec field(s) {unknown}{hint}; method {info.name!r} takes "
            f"{sorted(info.field_names)} (plus 'method' and 'extra'); all fields: "
            f"{sorted(FIELDS)}")


def _foreign_message(name: str, value: Any, info: MethodDef) -> str:
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
    if name in method_names():
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
    if name == "METHODS":
        return method_names()
    if name == "MODEL_METHODS":
        return method_names(Placement.MODEL)
    if name == "BOTTLENECK_METHODS":
        return tuple(n for n in method_names(Placement.SUBLAYER)
                     if "bottleneck" in method_info(n).field_names)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    "PRESETS",
    "REDUCTION_FACTOR",
    "SCALING",
    "TARGET_MODULES",
    "TUNE_LAYERNORM",
    "AdapterSpec",
    "SpecField",
    "as_spec",
    "block_indices",
    "distinct_from",
    "exactly_one",
    "forget_fields",
    "int_in",
    "is_int",
    "is_number",
    "normalise_layers",
    "number_in",
    "register_fields",
    "register_preset",
    "spec_fields",
]
