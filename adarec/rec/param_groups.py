"""Optimizer parameter groups by role: adapters, heads, pre-trained base weights.

Fine-tuning a pre-trained encoder wants a small learning rate, everything learnt from scratch a
normal one. Telling them apart by parameter-name substrings breaks when a layout or an adapter
method names things differently, so the roles come from the module structure: adapter layers
(`adarec.adapters.base.is_adapter`, as `adarec.adapter_parameters` sees them), decoupled modules
(``decoupled = True``: side networks, which are learnt from scratch), and the item encoder's
transformers (``item_encoder.hf_models()``: the pre-trained weights).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from adarec.errors import ConfigError
from adarec.freezing import adapter_parameters

GROUPS = ("adapters", "heads", "base")
"""Group names, in the order `param_groups` returns them."""


def _decoupled_params(model: nn.Module) -> set[int]:
    return {id(p) for m in model.modules() if getattr(m, "decoupled", False) is True
            for p in m.parameters()}


def _base_roots(model: nn.Module) -> list[nn.Module]:
    """The pre-trained transformers: a TransRec-style model's item-encoder transformers, or the
    whole module when it has no ``item_encoder`` (a bare Hugging Face model)."""
    item = getattr(model, "item_encoder", None)
    if item is None:
        return [model]
    hf_models = getattr(item, "hf_models", None)
    return list(hf_models()) if callable(hf_models) else []


def parameter_roles(model: nn.Module) -> dict[str, str]:
    """Every trainable parameter's role (``"adapters"``, ``"heads"`` or ``"base"``) by name.

    adapters: adapter layers (in either tower); heads: what is learnt from scratch (DTL /
    adaptor, user encoder, ID embeddings and fusion, side networks); base: the pre-trained
    transformer weights being fine-tuned (biases, norms, whole blocks)."""
    decoupled = _decoupled_params(model)
    adapters = {id(p) for p in adapter_parameters(model).values()} - decoupled
    base = {id(p) for root in _base_roots(model) for p in root.parameters()}
    roles: dict[str, str] = {}
    for name, p in model.named_parameters():  # shared parameters are listed once
        if not p.requires_grad:
            continue
        if id(p) in adapters:
            roles[name] = "adapters"
        elif id(p) in base and id(p) not in decoupled:
            roles[name] = "base"
        else:
            roles[name] = "heads"
    return roles


def param_groups(model: nn.Module, lr: float, head_lr: float | None = None,
                 base_lr: float | None = None, weight_decay: float = 0.0
                 ) -> list[dict[str, Any]]:
    """Torch optimizer groups of the trainable parameters, each in exactly one group.

    ``lr`` is the adapters' learning rate, ``head_lr`` the heads' and ``base_lr`` the
    pre-trained weights' (both default to ``lr``); empty groups are left out. Each group carries
    its ``"name"`` (one of `GROUPS`), which torch optimizers keep::

        torch.optim.AdamW(param_groups(model, lr=1e-3, base_lr=5e-5))
    """
    rates = {"adapters": lr, "heads": lr if head_lr is None else head_lr,
             "base": lr if base_lr is None else base_lr}
    for role, rate in rates.items():
        if not rate > 0:
            raise ConfigError(f"param_groups: the {role} learning rate must be > 0, got {rate}")
    if weight_decay < 0:
        raise ConfigError(f"param_groups: weight_decay must be >= 0, got {weight_decay}")
    roles = parameter_roles(model)
    if not roles:
        raise ConfigError("param_groups: the model has no trainable parameter (set a policy "
                          "or inject adapters first)")
    named = dict(model.named_parameters())
    groups = []
    for role in GROUPS:
        params = [named[n] for n, r in roles.items() if r == role]
        if params:
            groups.append({"name": role, "params": params, "lr": rates[role],
                           "weight_decay": weight_decay})
    return groups


__all__ = ["GROUPS", "param_groups", "parameter_roles"]
