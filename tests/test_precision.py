"""bf16 autocast on CPU: training and evaluation with adapters injected.

Autocast runs matmuls in bf16 while the parameters (and so the optimizer) stay float32; adapter
code must not mix the two dtypes itself (e.g. adding a float32 delta to a bf16 activation in a
way autocast does not cover) and gradients must come back to the float32 adapter weights.
"""

from __future__ import annotations

import pytest
import torch
from grad_checks import assert_fp32_grads
from tiny_models import build, inputs, output

import adarec
from adarec.rec.metrics import full_ranking_ranks, topk_chunked
from adarec.spec import METHODS

BF16 = torch.bfloat16


def _watch_dtypes(model: torch.nn.Module) -> list[torch.dtype]:
    """Record the output dtype of the first block's query projection (BERT's last op is a
    LayerNorm, which autocast keeps in float32, so the final output does not show it)."""
    seen: list[torch.dtype] = []
    query = model.encoder.layer[0].attention.self.query
    query.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    return seen


def _perturb(model: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in adarec.adapter_parameters(model).values():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


@pytest.mark.parametrize("method", METHODS)
def test_bf16_autocast_training_step(method: str) -> None:
    model = build("bert")
    adarec.inject_adapters(model, method)
    _perturb(model)
    model.train()
    params = adarec.adapter_parameters(model)
    opt = torch.optim.AdamW(params.values(), lr=1e-3)
    before = {n: p.detach().clone() for n, p in params.items()}
    seen = _watch_dtypes(model)
    with torch.autocast("cpu", dtype=BF16):
        loss = output(model, inputs("bert")).float().pow(2).mean()
    assert seen == [BF16]
    assert torch.isfinite(loss)
    loss.backward()
    assert_fp32_grads(params)
    opt.step()
    assert any(not torch.equal(before[n], p) for n, p in params.items())


@pytest.mark.parametrize("method", METHODS)
def test_bf16_autocast_evaluation_matches_float32(method: str) -> None:
    model = build("bert")
    adarec.inject_adapters(model, method)
    _perturb(model)
    batch = inputs("bert")
    seen = _watch_dtypes(model)
    with torch.no_grad():
        ref = output(model, batch)
        with torch.autocast("cpu", dtype=BF16):
            low = output(model, batch)
    assert seen == [torch.float32, BF16] and torch.isfinite(low).all()
    torch.testing.assert_close(low.float(), ref, atol=0.1, rtol=0.05)


def test_bf16_autocast_full_ranking() -> None:
    g = torch.Generator().manual_seed(0)
    users, items = torch.randn(20, 8, generator=g), torch.randn(41, 8, generator=g)
    targets = torch.randint(1, 41, (20,), generator=g)
    history = torch.randint(0, 41, (20, 5), generator=g)
    with torch.autocast("cpu", dtype=BF16):
        ranks = full_ranking_ranks(users, items, targets, history, batch_size=7)
        values, indices = topk_chunked(users, items, 5, item_chunk=16, exclude=history)
    assert ranks.shape == (20,) and bool(((ranks >= 1) & (ranks <= 40)).all())
    assert torch.isfinite(values).all() and indices.shape == (20, 5)
