"""`AdapterSpec`: one immutable, JSON-round-trippable description of an adapter set.

Every field is validated on construction, so a bad value fails where it was written, with the
field's name and the allowed values, instead of deep inside a forward pass.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import SpecError

BOTTLENECK_METHODS = ("houlsby", "pfeiffer", "parallel", "compacter")
"""Methods that add a bottleneck ``up(act(down(h)))`` at MHA/FFN sublayers."""
MODEL_METHODS = ("kadapter", "prompt", "side")  # TEMP(side): "side" until the method registry
"""Methods that act on the whole model (a side network, soft prompts), not on sublayers."""
METHODS = (*BOTTLENECK_METHODS, "lora", "ia3", *MODEL_METHODS)
POSITIONS = ("mha", "ffn")
LORA_ROLES = ("q", "k", "v", "o", "ffn_in", "ffn_out")
"""Layout roles LoRA can target: query/key/value/output projections and the FFN projections."""
IA3_ROLES = ("k", "v", "ffn_out")
"""(IA)^3 scales the key and value outputs and the input of the FFN output projection."""
PROMPT_INITS = ("random", "vocab")


def _activations() -> tuple[str, ...]:
    from transformers.activations import ACT2FN

    return tuple(sorted(ACT2FN))


@dataclass(frozen=True)
class AdapterSpec:
    """What to inject and where.

    ``bottleneck`` (a size) and ``reduction_factor`` (hidden size / bottleneck) are exclusive.
    ``layers`` indexes the model's block stack (negative indices count from the top; ``None`` means
    all blocks). ``target_modules`` overrides the layout: a string is a regex matched against full
    module names, a sequence matches name suffixes (as in peft's ``target_modules``).

    K-Adapter reads the outputs of blocks ``kadapter_layers`` with a side network of width
    ``bottleneck`` (``kadapter_depth`` encoder layers with ``kadapter_heads`` heads per adapter
    layer); ``kadapter_causal=None`` detects a causal model. Prompt tuning prepends
    ``prompt_length`` soft tokens (``prompt_init``: random, or the mean word embedding plus noise).
    (IA)^3 scales the roles in ``ia3_targets``.
    """

    method: str = "houlsby"
    bottleneck: int | None = 64
    reduction_factor: float | None = None
    positions: tuple[str, ...] = ("mha", "ffn")
    layers: tuple[int, ...] | None = None
    activation: str = "gelu"
    dropout: float = 0.0
    scaling: float = 1.0
    phm_dim: int = 4
    phm_rank: int = 1
    shared_phm_rule: bool = True
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ("q", "v")
    target_modules: str | tuple[str, ...] | None = None
    tune_layernorm: bool = False
    kadapter_layers: tuple[int, ...] = (0, -1)
    kadapter_depth: int = 2
    kadapter_heads: int = 4
    kadapter_causal: bool | None = None
    prompt_length: int = 10
    prompt_init: str = "random"
    ia3_targets: tuple[str, ...] = IA3_ROLES
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        for name in ("positions", "layers", "lora_targets", "kadapter_layers", "ia3_targets"):
            value = getattr(self, name)
            if isinstance(value, (list, range)):
                object.__setattr__(self, name, tuple(value))
        if isinstance(self.target_modules, list):
            object.__setattr__(self, "target_modules", tuple(self.target_modules))
        _validate(self)

    # ----------------------------------------------------------------------------------- helpers
    @property
    def is_bottleneck(self) -> bool:
        return self.method in BOTTLENECK_METHODS

    @property
    def needs_bottleneck(self) -> bool:
        """Bottleneck adapters and K-Adapter's side network have a width to choose."""
        return self.is_bottleneck or self.method in ("kadapter", "side")  # TEMP(side)

    def bottleneck_for(self, hidden: int) -> int:
        """The bottleneck size for a sublayer of width ``hidden``."""
        if self.bottleneck is not None:
            return self.bottleneck
        assert self.reduction_factor is not None
        return max(1, round(hidden / self.reduction_factor))

    def replace(self, **changes: Any) -> AdapterSpec:
        """A copy with some fields changed (validated again)."""
        if "reduction_factor" in changes and changes["reduction_factor"] is not None:
            changes.setdefault("bottleneck", None)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; `from_dict(to_dict())` gives back an equal spec."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AdapterSpec:
        """Build a spec from a dict; a ``method`` key starts from that method's preset."""
        if not isinstance(data, Mapping):
            raise SpecError(f"an adapter spec dict must be a mapping, got {type(data).__name__}")
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise SpecError(f"unknown AdapterSpec field(s) {unknown}; allowed: {sorted(allowed)}")
        data = dict(data)
        method = data.get("method", "houlsby")
        if not isinstance(method, str) or method not in PRESETS:
            raise SpecError(f"method={method!r} is not one of {list(PRESETS)}")
        return PRESETS[method].replace(**data)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> AdapterSpec:
        """A named preset (``"houlsby"``, ``"pfeiffer"``, ...) with optional field overrides."""
        if name not in PRESETS:
            raise SpecError(f"unknown adapter preset {name!r}; presets: {list(PRESETS)}")
        return PRESETS[name].replace(**overrides)


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


# --------------------------------------------------------------------------------- validation
def _check(cond: bool, field_name: str, value: Any, allowed: str) -> None:
    if not cond:
        raise SpecError(f"AdapterSpec.{field_name}={value!r} is invalid: {allowed}")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _validate(s: AdapterSpec) -> None:
    _check(s.method in METHODS, "method", s.method, f"must be one of {list(METHODS)}")
    if s.needs_bottleneck:
        _check(
            (s.bottleneck is None) != (s.reduction_factor is None),
            "bottleneck",
            s.bottleneck,
            "give exactly one of bottleneck and reduction_factor",
        )
    if s.bottleneck is not None:
        _check(_is_int(s.bottleneck) and s.bottleneck >= 1, "bottleneck", s.bottleneck,
               "must be an integer >= 1")
    if s.reduction_factor is not None:
        _check(_is_num(s.reduction_factor) and s.reduction_factor > 0, "reduction_factor",
               s.reduction_factor, "must be a number > 0")
    _check(isinstance(s.positions, tuple) and all(p in POSITIONS for p in s.positions)
           and len(set(s.positions)) == len(s.positions), "positions", s.positions,
           f"must be distinct values from {list(POSITIONS)}")
    if s.is_bottleneck and s.target_modules is None:
        _check(len(s.positions) > 0, "positions", s.positions, "must name at least one position")
    if s.layers is not None:
        _check(isinstance(s.layers, tuple) and len(s.layers) > 0
               and all(_is_int(i) for i in s.layers), "layers", s.layers,
               "must be None (all blocks) or a non-empty sequence of block indices")
    acts = _activations()
    _check(isinstance(s.activation, str) and s.activation in acts, "activation", s.activation,
           f"must be one of {list(acts)}")
    for name in ("dropout", "lora_dropout"):
        v = getattr(s, name)
        _check(_is_num(v) and 0.0 <= v < 1.0, name, v, "must be a probability in [0, 1)")
    _check(_is_num(s.scaling) and s.scaling > 0, "scaling", s.scaling, "must be a number > 0")
    _check(_is_int(s.phm_dim) and s.phm_dim >= 1, "phm_dim", s.phm_dim, "must be an integer >= 1")
    _check(_is_int(s.phm_rank) and s.phm_rank >= 1, "phm_rank", s.phm_rank,
           "must be an integer >= 1")
    if s.method == "compacter" and s.bottleneck is not None:
        _check(s.bottleneck % s.phm_dim == 0, "bottleneck", s.bottleneck,
               f"must be divisible by phm_dim={s.phm_dim} for Compacter")
    _check(_is_int(s.lora_r) and s.lora_r >= 1, "lora_r", s.lora_r, "must be an integer >= 1")
    _check(_is_num(s.lora_alpha) and s.lora_alpha > 0, "lora_alpha", s.lora_alpha,
           "must be a number > 0")
    _check(isinstance(s.lora_targets, tuple) and len(s.lora_targets) > 0
           and all(t in LORA_ROLES for t in s.lora_targets), "lora_targets", s.lora_targets,
           f"must be a non-empty sequence of roles from {list(LORA_ROLES)}")
    tm = s.target_modules
    if tm is not None:
        ok = (isinstance(tm, str) and tm != "") or (
            isinstance(tm, tuple) and len(tm) > 0 and all(isinstance(t, str) and t for t in tm)
        )
        _check(ok, "target_modules", tm,
               "must be None, a regex string, or a non-empty sequence of module-name suffixes")
        if isinstance(tm, str):
            import re

            try:
                re.compile(tm)
            except re.error as exc:
                raise SpecError(
                    f"AdapterSpec.target_modules={tm!r} is not a valid regex: {exc}"
                ) from None
    _check(isinstance(s.shared_phm_rule, bool), "shared_phm_rule", s.shared_phm_rule,
           "must be a bool")
    _check(isinstance(s.tune_layernorm, bool), "tune_layernorm", s.tune_layernorm,
           "must be a bool")
    _check(isinstance(s.extra, dict), "extra", s.extra, "must be a dict")
    _validate_extra_methods(s)


def _validate_extra_methods(s: AdapterSpec) -> None:
    """K-Adapter, prompt tuning and (IA)^3 fields."""
    _check(isinstance(s.kadapter_layers, tuple) and len(s.kadapter_layers) > 0
           and all(_is_int(i) for i in s.kadapter_layers), "kadapter_layers", s.kadapter_layers,
           "must be a non-empty sequence of block indices")
    _check(_is_int(s.kadapter_depth) and s.kadapter_depth >= 1, "kadapter_depth",
           s.kadapter_depth, "must be an integer >= 1")
    _check(_is_int(s.kadapter_heads) and s.kadapter_heads >= 1, "kadapter_heads",
           s.kadapter_heads, "must be an integer >= 1")
    if s.method == "kadapter" and s.bottleneck is not None:
        _check(s.bottleneck % s.kadapter_heads == 0, "bottleneck", s.bottleneck,
               f"must be divisible by kadapter_heads={s.kadapter_heads} for K-Adapter")
    _check(s.kadapter_causal is None or isinstance(s.kadapter_causal, bool), "kadapter_causal",
           s.kadapter_causal, "must be None (detect), True or False")
    _check(_is_int(s.prompt_length) and s.prompt_length >= 1, "prompt_length", s.prompt_length,
           "must be an integer >= 1")
    _check(s.prompt_init in PROMPT_INITS, "prompt_init", s.prompt_init,
           f"must be one of {list(PROMPT_INITS)}")
    _check(isinstance(s.ia3_targets, tuple) and len(s.ia3_targets) > 0
           and all(t in IA3_ROLES for t in s.ia3_targets)
           and len(set(s.ia3_targets)) == len(s.ia3_targets), "ia3_targets", s.ia3_targets,
           f"must be distinct roles from {list(IA3_ROLES)}")
    if s.method in MODEL_METHODS:
        _check(s.target_modules is None, "target_modules", s.target_modules,
               f"must be None for {s.method!r}, which places itself from the model's layout")


# ------------------------------------------------------------------------------------ presets
PRESETS: dict[str, AdapterSpec] = {}


def register_preset(name: str, spec: AdapterSpec) -> None:
    """Add a named preset, usable wherever a spec is accepted."""
    PRESETS[name] = spec


register_preset("houlsby", AdapterSpec(method="houlsby", positions=("mha", "ffn")))
register_preset("pfeiffer", AdapterSpec(method="pfeiffer", positions=("ffn",)))
register_preset("parallel", AdapterSpec(method="parallel", positions=("ffn",), scaling=4.0))
register_preset("compacter", AdapterSpec(method="compacter", positions=("mha", "ffn")))
register_preset("lora", AdapterSpec(method="lora", bottleneck=None, positions=()))
register_preset("ia3", AdapterSpec(method="ia3", bottleneck=None, positions=()))
register_preset("kadapter", AdapterSpec(method="kadapter", bottleneck=64, positions=()))
register_preset("prompt", AdapterSpec(method="prompt", bottleneck=None, positions=()))
register_preset("side", AdapterSpec(method="side", bottleneck=64, positions=()))  # TEMP(side)


def normalise_layers(
    layers: Sequence[int] | None, n_blocks: int, field_name: str = "layers"
) -> list[int]:
    """Resolve (possibly negative) block indices against a stack of ``n_blocks`` blocks."""
    if layers is None:
        return list(range(n_blocks))
    out = []
    for i in layers:
        j = i + n_blocks if i < 0 else i
        if not 0 <= j < n_blocks:
            raise SpecError(
                f"AdapterSpec.{field_name} contains {i}, but the model has {n_blocks} blocks "
                f"(valid: {-n_blocks}..{n_blocks - 1})"
            )
        out.append(j)
    return sorted(set(out))
