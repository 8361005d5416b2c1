"""Adapter tuning must not pay for gradients of frozen weights.

The speed-up of adapter tuning over fine-tuning comes from autograd skipping weight gradients of
the frozen base model, and, with adapters only in the top blocks, from not running the backward
through the blocks below them at all. These tests read the autograd graph to prove both.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from tiny_models import L, build, inputs
from torch import nn

import adarec

METHODS = ("houlsby", "lora")


def _graph_leaves(root: torch.autograd.graph.Node | None) -> list[torch.Tensor]:
    """The tensors of every ``AccumulateGrad`` node reachable from ``root``."""
    seen: set[torch.autograd.graph.Node] = set()
    stack, leaves = [root], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__ == "AccumulateGrad":
            leaves.append(node.variable)
        stack.extend(fn for fn, _ in node.next_functions)
    return leaves


def _loss(model: nn.Module) -> torch.Tensor:
    model.train()
    return model(**inputs("bert")).last_hidden_state.pow(2).mean()


@pytest.mark.parametrize("method", METHODS)
def test_only_trainable_tensors_get_weight_gradient_nodes(method: str) -> None:
    model = build("bert")
    adarec.inject_adapters(model, method)
    loss = _loss(model)
    leaves = _graph_leaves(loss.grad_fn)
    trainable = adarec.trainable_parameters(model)
    assert len(leaves) == len({id(t) for t in leaves}) == len(trainable)
    assert {id(t) for t in leaves} == {id(p) for p in trainable.values()}
    loss.backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name


@pytest.mark.parametrize("method", METHODS)
def test_top_layer_adapters_do_not_backprop_into_lower_blocks(method: str) -> None:
    model = build("bert")
    adarec.inject_adapters(model, adarec.AdapterSpec.preset(method, layers=(-1,)))
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, out: object) -> None:
            seen[name] = out[0] if isinstance(out, tuple) else out  # type: ignore[index]

        return hook

    model.embeddings.register_forward_hook(keep("embeddings"))
    for i, block in enumerate(model.encoder.layer):
        block.register_forward_hook(keep(f"block{i}"))
    loss = _loss(model)
    assert seen["embeddings"].grad_fn is None and not seen["embeddings"].requires_grad
    for i in range(L - 1):
        assert seen[f"block{i}"].grad_fn is None, f"block {i} is below the adapters"
    assert seen[f"block{L - 1}"].requires_grad
    leaves = _graph_leaves(loss.grad_fn)
    assert {id(t) for t in leaves} == {id(p) for p in adarec.trainable_parameters(model).values()}
    loss.backward()
    assert all(p.grad is None for p in model.embeddings.parameters())
