"""Assertions shared by the mixed-precision tests."""

from __future__ import annotations

from collections.abc import Mapping

import torch


def assert_fp32_grads(params: Mapping[str, torch.nn.Parameter]) -> None:
    """After a bf16-autocast backward: the weights and their gradients stay float32, every
    gradient is finite, and at least one is non-zero (the adapters are in the graph)."""
    for name, p in params.items():
        assert p.dtype == torch.float32, name
        assert p.grad is not None and p.grad.dtype == torch.float32, name
        assert torch.isfinite(p.grad).all(), name
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params.values())
