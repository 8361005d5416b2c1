"""AdapterSpec: every way of building one validates it, and valid specs round-trip through JSON."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adarec import PRESETS, AdapterSpec, SpecError, as_spec
from adarec.registry import method_info, method_names
from adarec.spec import FIELDS, POSITIONS, TUNE_LAYERNORM, spec_fields

FIXTURES = Path(__file__).parent / "fixtures"

BUILDERS: dict[str, Callable[..., AdapterSpec]] = {
    "constructor": lambda method, **kw: AdapterSpec(method, **kw),
    "preset": lambda method, **kw: AdapterSpec.preset(method, **kw),
    "from_dict": lambda method, **kw: AdapterSpec.from_dict({"method": method, **kw}),
    "as_spec": lambda method, **kw: as_spec({"method": method, **kw}),
    "replace": lambda method, **kw: AdapterSpec(method).replace(**kw),
}
"""The ways a spec is built; each must refuse what the others refuse."""


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_round_trip_through_json(name: str) -> None:
    spec = AdapterSpec.preset(name)
    back = AdapterSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert back == spec and hash(back) == hash(spec)
    assert as_spec(name) == spec


def test_preset_overrides_and_reduction_factor() -> None:
    spec = AdapterSpec.preset("houlsby", reduction_factor=16)
    assert spec.bottleneck is None and spec.bottleneck_for(768) == 48
    assert AdapterSpec(reduction_factor=16) == spec  # naming one width unsets the other
    assert spec.replace(bottleneck=8).reduction_factor is None
    assert as_spec({"method": "pfeiffer", "bottleneck": 8}).positions == ("ffn",)
    assert AdapterSpec(method="parallel").scaling == 4.0  # a method's defaults are its preset
    assert AdapterSpec(layers=[0, -1]).layers == (0, -1)


def test_fields_a_method_does_not_use_read_as_none() -> None:
    lora = AdapterSpec.preset("lora")
    assert lora.bottleneck is None and lora.positions is None and not lora.uses("dropout")
    assert "bottleneck" not in lora.to_dict() and lora.to_dict()["lora_r"] == 8
    with pytest.raises(AttributeError, match="no field 'botleneck'"):
        _ = lora.botleneck
    with pytest.raises(AttributeError, match="immutable"):
        lora.lora_r = 4  # type: ignore[misc]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"method": "magic"}, "method"),
        ({"bottleneck": 0}, "bottleneck"),
        ({"bottleneck": 2.5}, "bottleneck"),
        ({"bottleneck": 10**9}, "bottleneck"),
        ({"bottleneck": 8, "reduction_factor": 4}, "bottleneck"),
        ({"bottleneck": None, "reduction_factor": 1e-320}, "reduction_factor"),
        ({"bottleneck": None, "reduction_factor": math.inf}, "reduction_factor"),
        ({"positions": ("mha", "mlp")}, "positions"),
        ({"positions": ()}, "positions"),
        ({"layers": ()}, "layers"),
        ({"layers": ("a",)}, "layers"),
        ({"layers": (0, 0, 0)}, "layers"),
        ({"layers": (10**9,)}, "layers"),
        ({"activation": "sine"}, "activation"),
        ({"dropout": 1.0}, "dropout"),
        ({"scaling": 0}, "scaling"),
        ({"scaling": math.nan}, "scaling"),
        ({"method": "compacter", "bottleneck": 6}, "bottleneck"),
        ({"method": "lora", "lora_r": 0}, "lora_r"),
        ({"method": "lora", "lora_r": 10**9}, "lora_r"),
        ({"method": "lora", "lora_targets": ("q", "x")}, "lora_targets"),
        ({"method": "lora", "lora_targets": ("q", "q")}, "lora_targets"),
        ({"target_modules": "("}, "target_modules"),
        ({"tune_layernorm": "yes"}, "tune_layernorm"),
        ({"extra": {"f": object()}}, "extra"),
        ({"extra": {"x": math.nan}}, "extra"),
        ({"extra": {1: "a"}}, "extra"),
    ],
)
def test_bad_fields_name_the_field(changes: dict, field: str) -> None:
    with pytest.raises(SpecError, match=f"AdapterSpec.{field}"):
        AdapterSpec(**changes)


BAD = [
    # (method, fields, what the message must say)
    ("houlsby", {"botleneck": 8},
     r"'botleneck': did you mean 'bottleneck'\?.*takes \[.*'bottleneck'"),
    ("lora", {"dropout": 0.1}, r"AdapterSpec\.dropout=0\.1 does not apply to method 'lora'; did "
                               r"you mean 'lora_dropout'"),
    ("lora", {"positions": ("ffn",)}, r"positions.* does not apply.*did you mean 'lora_targets'"),
    ("kadapter", {"layers": (0,)}, r"did you mean 'kadapter_layers'"),
    ("houlsby", {"reduction_factor": 1e-320}, r"AdapterSpec\.reduction_factor=1e-320 is invalid: "
                                              r"must be None or a number in \[0\.0625"),
    ("houlsby", {"bottleneck": 10**9}, r"AdapterSpec\.bottleneck=1000000000 is invalid: must be "
                                       r"None or an integer in \[1, 65536\]"),
    ("houlsby", {"layers": (0, 0, 0)}, r"AdapterSpec\.layers=\(0, 0, 0\) is invalid: .*distinct"),
    ("houlsby", {"extra": {"when": object()}}, r"AdapterSpec\.extra .*JSON-serialisable"),
    ("prompt", {"prompt_length": 10**9}, r"AdapterSpec\.prompt_length"),
]


@pytest.mark.parametrize("how", list(BUILDERS))
@pytest.mark.parametrize(("method", "fields", "message"), BAD)
def test_every_way_of_building_a_spec_refuses_with_a_clear_message(
    how: str, method: str, fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(SpecError, match=message):
        BUILDERS[how](method, **fields)


def test_register_preset_adds_names_but_never_redefines_a_method() -> None:
    from adarec import register_preset

    register_preset("houlsby-small", AdapterSpec(bottleneck=8))
    try:
        assert as_spec("houlsby-small").bottleneck == 8
        with pytest.raises(SpecError, match="is a method's name"):
            register_preset("houlsby", AdapterSpec(bottleneck=8))
    finally:
        del PRESETS["houlsby-small"]


def test_extra_is_a_json_copy() -> None:
    meta = {"note": "run 3", "tags": ["a"]}
    spec = AdapterSpec(extra=meta)
    meta["tags"].append("b")
    spec.extra["tags"].append("c")
    assert spec.extra == {"note": "run 3", "tags": ["a"]}
    assert spec == AdapterSpec()  # extra is metadata: not part of equality
    assert AdapterSpec.from_dict(spec.to_dict()).extra == spec.extra


def test_unknown_keys_and_types() -> None:
    with pytest.raises(SpecError, match="unknown AdapterSpec field"):
        AdapterSpec.from_dict({"botleneck": 8})
    with pytest.raises(SpecError, match="did you mean 'houlsby'"):
        as_spec("hulsby")
    with pytest.raises(SpecError):
        as_spec(42)  # type: ignore[arg-type]
    with pytest.raises(SpecError, match="must be a string"):
        AdapterSpec.from_dict({"method": 3})


# ----------------------------------------------------------------- specs written by adarec 0.1
def test_specs_written_by_adarec_0_1_load_as_they_did() -> None:
    folder = FIXTURES / "v1" / "tiny_bert_adapters"
    config = json.loads((folder / "adapter_config.json").read_text())
    specs = {s["name"]: AdapterSpec.from_dict(s["spec"]) for s in config["adapter_sets"]}
    assert specs["houlsby"] == AdapterSpec.preset("houlsby", bottleneck=4)
    assert specs["lora"] == AdapterSpec.preset(
        "lora", lora_r=2, lora_alpha=4.0, lora_targets=("q", "v", "ffn_out"))


def test_an_ignored_0_1_field_is_dropped_with_a_warning() -> None:
    from adarec.spec_v1 import V1_DEFAULTS

    old = {**V1_DEFAULTS, "method": "lora", "bottleneck": None, "positions": [], "dropout": 0.3}
    with pytest.warns(UserWarning, match=r"dropout=0\.3"):
        spec = AdapterSpec.from_dict(old)
    assert spec == AdapterSpec.preset("lora")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        AdapterSpec.from_dict({**V1_DEFAULTS, "method": "lora", "bottleneck": None,
                               "positions": []})
    with pytest.raises(SpecError, match="does not apply"):  # a new dict is strict
        AdapterSpec.from_dict({"method": "lora", "dropout": 0.3})


# ------------------------------------------------------------------------------ property tests
_values = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 300), st.integers(), st.floats(allow_nan=True),
    st.floats(min_value=1e-320, max_value=1e-300), st.text(max_size=6),
    st.lists(st.sampled_from([*POSITIONS, "q", "v", "x", 0, -1, 1]), max_size=3),
)
_field_names = st.sampled_from([*sorted(spec_fields()), "botleneck", "extra"])


def _outcome(build: Callable[[], AdapterSpec]) -> AdapterSpec | str:
    try:
        return build()
    except SpecError as exc:
        return f"SpecError: {exc}"


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_field_names, _values, max_size=4), st.sampled_from(method_names()))
def test_from_dict_either_builds_a_valid_spec_or_raises_spec_error(data: dict, method: str) -> None:
    data = {"method": method, **data}
    try:
        spec = AdapterSpec.from_dict(data)
    except SpecError as exc:
        assert "AdapterSpec" in str(exc) or "method" in str(exc)
        return
    assert AdapterSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert set(spec.fields()) == set(method_info(method).field_names)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(_field_names, _values, max_size=3), st.sampled_from(method_names()))
def test_constructor_preset_and_from_dict_agree(data: dict, method: str) -> None:
    outcomes = [_outcome(lambda how=how: BUILDERS[how](method, **data))
                for how in ("constructor", "preset", "from_dict")]
    if isinstance(outcomes[0], AdapterSpec):
        assert outcomes[1] == outcomes[0] and outcomes[2] == outcomes[0]
    else:
        assert all(isinstance(o, str) for o in outcomes), outcomes


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(method_names()), st.sampled_from(sorted(spec_fields())), _values)
def test_a_field_the_method_does_not_use_is_always_refused(method: str, name: str, value) -> None:
    if name in method_info(method).field_names or value is None:
        return
    with pytest.raises(SpecError, match=f"AdapterSpec.{name}=.* does not apply to method"):
        AdapterSpec(method, **{name: value})


@settings(max_examples=100, deadline=None)
@given(
    bottleneck=st.integers(1, 512),
    positions=st.lists(st.sampled_from(POSITIONS), min_size=1, max_size=2, unique=True),
    layers=st.none() | st.lists(st.integers(-12, 11), min_size=1, max_size=4, unique=True),
    dropout=st.floats(0, 0.99),
)
def test_valid_specs_round_trip(bottleneck, positions, layers, dropout) -> None:
    spec = AdapterSpec(bottleneck=bottleneck, positions=positions, layers=layers, dropout=dropout)
    assert AdapterSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert hash(spec) == hash(AdapterSpec.from_dict(spec.to_dict()))
    assert spec.replace() == spec


def test_the_field_vocabulary_is_read_only_outside_registration() -> None:
    """`FIELDS` is the live vocabulary every spec checks against; writing to it directly would
    skip `register_fields`' one-definition-per-name check."""
    assert dict(FIELDS) == spec_fields()
    with pytest.raises(TypeError):
        FIELDS["tune_layernorm"] = TUNE_LAYERNORM  # type: ignore[index]
