from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adarec import PRESETS, AdapterSpec, SpecError, as_spec
from adarec.spec import METHODS, POSITIONS


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_round_trip_through_json(name: str) -> None:
    spec = AdapterSpec.preset(name)
    back = AdapterSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert back == spec
    assert as_spec(name) == spec


def test_preset_overrides_and_reduction_factor() -> None:
    spec = AdapterSpec.preset("houlsby", reduction_factor=16)
    assert spec.bottleneck is None and spec.bottleneck_for(768) == 48
    assert as_spec({"method": "pfeiffer", "bottleneck": 8}).positions == ("ffn",)
    assert AdapterSpec(layers=[0, -1]).layers == (0, -1)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"method": "magic"}, "method"),
        ({"bottleneck": 0}, "bottleneck"),
        ({"bottleneck": 2.5}, "bottleneck"),
        ({"bottleneck": 8, "reduction_factor": 4}, "bottleneck"),
        ({"positions": ("mha", "mlp")}, "positions"),
        ({"positions": ()}, "positions"),
        ({"layers": ()}, "layers"),
        ({"layers": ("a",)}, "layers"),
        ({"activation": "sine"}, "activation"),
        ({"dropout": 1.0}, "dropout"),
        ({"scaling": 0}, "scaling"),
        ({"method": "compacter", "bottleneck": 6}, "bottleneck"),
        ({"lora_r": 0}, "lora_r"),
        ({"lora_targets": ("q", "x")}, "lora_targets"),
        ({"target_modules": "("}, "target_modules"),
        ({"tune_layernorm": "yes"}, "tune_layernorm"),
    ],
)
def test_bad_fields_name_the_field(changes: dict, field: str) -> None:
    with pytest.raises(SpecError, match=f"AdapterSpec.{field}"):
        AdapterSpec(**changes)


def test_unknown_keys_and_types() -> None:
    with pytest.raises(SpecError, match="unknown AdapterSpec field"):
        AdapterSpec.from_dict({"botleneck": 8})
    with pytest.raises(SpecError, match="preset"):
        as_spec("hulsby")
    with pytest.raises(SpecError):
        as_spec(42)  # type: ignore[arg-type]


_values = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 300), st.floats(allow_nan=True),
    st.text(max_size=6), st.lists(st.sampled_from([*POSITIONS, "x", 0, -1]), max_size=3),
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from([
    "method", "bottleneck", "reduction_factor", "positions", "layers", "activation", "dropout",
    "scaling", "phm_dim", "lora_r", "lora_alpha", "lora_targets", "target_modules",
]), _values, max_size=5), st.sampled_from(METHODS))
def test_from_dict_either_builds_a_valid_spec_or_raises_spec_error(data: dict, method: str) -> None:
    data = {"method": method, **data}
    try:
        spec = AdapterSpec.from_dict(data)
    except SpecError as exc:
        assert "AdapterSpec" in str(exc) or "method" in str(exc)
        return
    assert AdapterSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


@settings(max_examples=100, deadline=None)
@given(
    bottleneck=st.integers(1, 512),
    positions=st.lists(st.sampled_from(POSITIONS), min_size=1, max_size=2, unique=True),
    layers=st.none() | st.lists(st.integers(-12, 11), min_size=1, max_size=4),
    dropout=st.floats(0, 0.99),
)
def test_valid_specs_round_trip(bottleneck, positions, layers, dropout) -> None:
    spec = AdapterSpec(bottleneck=bottleneck, positions=positions, layers=layers, dropout=dropout)
    assert AdapterSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert hash(spec) == hash(AdapterSpec.from_dict(spec.to_dict()))
