"""The method registry: a method is one `MethodDef`, registered by one call in its own file.

Registering a method enters it in the method table (`adarec.methods_table`, which also says what a
`MethodDef` holds), adds its fields to the spec vocabulary and builds its preset specs; the table
and the names it defines are re-exported here, where method files import them from.
"""

from __future__ import annotations

from .errors import RegistrationError, SpecError
from .methods_table import (
    DEFAULT_METHOD,
    AttachContext,
    BuildContext,
    MethodDef,
    PlaceContext,
    Placement,
    SetState,
    add_to_table,
    ensure_builtins,
    method_info,
    method_names,
    methods_for_peft,
    registered_methods,
    remove_from_table,
)
from .spec import PRESETS, AdapterSpec, forget_fields, register_fields


def register_method(method: MethodDef) -> MethodDef:
    """Make ``method`` usable everywhere a method name is (`AdapterSpec`, presets, injection,
    checkpoints). Its fields join the spec vocabulary; its defaults become the preset of its name.
    Returns ``method``, so a file can keep it (``HOULSBY = register_method(MethodDef(...))``)."""
    ensure_builtins()
    name = method.name
    if not isinstance(name, str) or not name.isidentifier():
        raise RegistrationError(f"a method name must be an identifier, got {name!r}")
    if name in method_names():
        raise RegistrationError(
            f"method {name!r} is already registered; unregister_method({name!r}) first"
        )
    if not isinstance(method.placement, Placement):
        raise RegistrationError(f"method {name!r}: placement must be a Placement")
    if method.placement is Placement.MODEL and method.place is None:
        raise RegistrationError(f"method {name!r} acts on the whole model but has no place()")
    if method.placement is not Placement.MODEL and method.where is None:
        raise RegistrationError(f"method {name!r} needs where() (its sublayers or roles)")
    unknown = sorted((set(method.defaults) | set(method.hints.values())) - method.field_names)
    if unknown:
        raise RegistrationError(f"method {name!r} names fields it does not declare: {unknown}")
    register_fields(method.fields)
    add_to_table(method)
    try:
        register_preset_spec(name, AdapterSpec(name))
        for preset, overrides in method.presets.items():
            register_preset_spec(preset, AdapterSpec(name, **overrides))
    except SpecError:
        unregister_method(name)
        raise
    return method


def register_preset_spec(name: str, spec: AdapterSpec) -> None:
    if name in PRESETS and PRESETS[name].method != spec.method:
        raise RegistrationError(f"preset {name!r} already names a {PRESETS[name].method} spec")
    PRESETS[name] = spec


def unregister_method(name: str) -> None:
    """Remove a method, its presets, and the spec fields no other method uses."""
    method = remove_from_table(name)
    if method is None:
        raise RegistrationError(f"no method {name!r} is registered")
    for preset in [name, *method.presets]:
        if preset in PRESETS and PRESETS[preset].method == name:
            del PRESETS[preset]
    still = {f for m in registered_methods() for f in m.field_names}
    forget_fields(f.name for f in method.fields if f.name not in still)


__all__ = [
    "DEFAULT_METHOD",
    "AttachContext",
    "BuildContext",
    "MethodDef",
    "PlaceContext",
    "Placement",
    "SetState",
    "method_info",
    "method_names",
    "methods_for_peft",
    "register_method",
    "unregister_method",
]
