"""Adapter layers against their defining formulas."""

from __future__ import annotations

import torch

from adarec.adapters.bottleneck import BottleneckAdapter, zero_linear
from adarec.adapters.compacter import PHMLinear, new_rule
from adarec.adapters.lora import LoRAAdapter


def test_phm_weight_is_a_sum_of_kronecker_products() -> None:
    torch.manual_seed(0)
    layer = PHMLinear(24, 8, n=4, rank=2, rule=new_rule(4))
    ref = sum(torch.kron(layer.rule[i], layer.s[i] @ layer.t[i]) for i in range(4))
    torch.testing.assert_close(layer.weight(), ref)
    x = torch.randn(3, 24)
    torch.testing.assert_close(layer(x), x @ ref + layer.bias)


def test_zero_init_phm_is_zero_but_trainable() -> None:
    layer = PHMLinear(8, 24, n=4, rank=1, rule=new_rule(4), zero_init=True)
    assert torch.count_nonzero(layer.weight()) == 0
    layer(torch.randn(2, 8)).sum().backward()
    assert layer.s.grad is not None and layer.s.grad.abs().sum() > 0


def test_bottleneck_formula_serial_and_parallel() -> None:
    torch.manual_seed(0)
    down, up = torch.nn.Linear(6, 3), torch.nn.Linear(3, 6)
    serial = BottleneckAdapter(down, up, "relu", scaling=2.0)
    x, y = torch.randn(4, 5), torch.randn(4, 6)
    torch.testing.assert_close(serial(x, y), y + 2.0 * up(torch.relu(down(y))))
    par = BottleneckAdapter(torch.nn.Linear(5, 3), zero_linear(3, 6), "relu", parallel=True)
    assert torch.equal(par(x, y), y)


def test_lora_delta_matches_forward() -> None:
    torch.manual_seed(0)
    lora = LoRAAdapter(6, 4, r=2, alpha=8.0, dropout=0.0)
    torch.nn.init.normal_(lora.lora_B.weight)
    x, y = torch.randn(3, 6), torch.zeros(3, 4)
    torch.testing.assert_close(lora(x, y), x @ lora.delta_weight().T)
    assert lora.scaling == 4.0
