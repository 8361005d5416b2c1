"""Many adapter sets in one batch (`adarec.mixed`): each row equals that row served alone."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_models import build, inputs, output

import adarec
from adarec import AdapterStateError, ConfigError, mixed_batch

SETS = {"h": "houlsby", "p": "pfeiffer", "pa": "parallel", "c": "compacter", "l": "lora",
        "i": "ia3"}
ROWS = 4


def _perturb(model: torch.nn.Module, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adarec.adapter_parameters(model).values():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)


@pytest.fixture(scope="module")
def bert() -> torch.nn.Module:
    model = build("bert")
    for name, method in SETS.items():
        adarec.inject_adapters(model, method, name=name, activate=False)
    _perturb(model)
    return model


def _alone(model: torch.nn.Module, batch: dict[str, torch.Tensor], row: int,
           name: str | None) -> torch.Tensor:
    adarec.set_active_adapters(model, name)
    return output(model, {k: v[row : row + 1] for k, v in batch.items()})[0]


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from([None, *SETS]), min_size=ROWS, max_size=ROWS))
@torch.no_grad()
def test_mixed_batch_equals_each_row_alone(bert: torch.nn.Module,
                                          names: list[str | None]) -> None:
    batch = inputs("bert", batch=ROWS, seed=5)
    adarec.set_active_adapters(bert, "h")
    with mixed_batch(bert, names):
        mixed = output(bert, batch)
    assert adarec.active_adapters(bert) == ["h"]  # restored
    for row, name in enumerate(names):
        torch.testing.assert_close(mixed[row], _alone(bert, batch, row, name),
                                   rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_sets_really_differ_per_row(bert: torch.nn.Module) -> None:
    """The equality above is not vacuous: every set changes its rows."""
    batch = inputs("bert", batch=2, seed=5)
    adarec.set_active_adapters(bert, None)
    base = output(bert, batch)
    for name in SETS:
        with mixed_batch(bert, [name, None]):
            out = output(bert, batch)
        assert not torch.allclose(out[0], base[0], atol=1e-3), name
        assert torch.allclose(out[1], base[1], atol=1e-6), name


def test_gradients_reach_only_the_sets_in_the_batch() -> None:
    model = build("bert")
    for name in ("a", "b", "c"):
        adarec.inject_adapters(model, "lora", name=name, activate=False)
    _perturb(model)
    with mixed_batch(model, ["a", "b"]):
        out = output(model, inputs("bert", batch=2))
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(0))
    (out * weights).sum().backward()  # a plain sum is ~constant after the final LayerNorm

    def reached(set_name: str) -> bool:
        return any(p.grad is not None and bool(p.grad.abs().sum() > 0)
                   for n, p in model.named_parameters() if f".{set_name}.lora_" in n)

    assert reached("a") and reached("b") and not reached("c")


@pytest.mark.parametrize("method", ["prefix", "prompt", "side"])
def test_methods_that_act_on_the_whole_batch_are_refused(method: str) -> None:
    model = build("bert")
    adarec.inject_adapters(model, "houlsby", name="ok")
    adarec.inject_adapters(model, method, name="whole", activate=False)
    refused = pytest.raises(AdapterStateError, match=rf"'whole' \({method}\).*whole batch")
    with refused, mixed_batch(model, ["ok", "whole"]):
        pass
    with mixed_batch(model, ["ok", None]):  # the refused set is not asked for: fine
        output(model, inputs("bert"))
    assert adarec.active_adapters(model) == ["ok"]


def test_bad_requests_are_refused_with_the_reason() -> None:
    model = build("bert")
    adarec.inject_adapters(model, "lora", name="a")
    unknown = pytest.raises(AdapterStateError, match=r"no adapter set named \['zz'\]")
    with unknown, mixed_batch(model, ["a", "zz"]):
        pass
    not_a_name = pytest.raises(ConfigError, match=r"set_names\[1\]=3")
    with not_a_name, mixed_batch(model, ["a", 3]):  # type: ignore[list-item]
        pass
    wrong_rows = pytest.raises(AdapterStateError, match="mixed batch of 3 rows")
    with wrong_rows, mixed_batch(model, ["a", None, "a"]):
        output(model, inputs("bert", batch=2))
    assert adarec.active_adapters(model) == ["a"]  # restored after the error
    adarec.merge_adapters(model, "a")
    merged = pytest.raises(AdapterStateError, match="merged into the base weights")
    with merged, mixed_batch(model, ["a", None]):
        pass
