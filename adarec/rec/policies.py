"""Training policies: what trains in a TransRec-style model (item encoder, adaptor, user encoder).

A policy is a function ``policy(model, tune_layernorm, **options)`` that sets ``requires_grad``
with the freezing vocabulary of the core (`adarec.freezing`); `register_policy` adds one, and
`apply_policy` (what `TransRec.set_policy` calls) runs it and returns the parameter summary. The
adaptor (DTL) trains under every built-in policy.

**LayerNorms.** The choice has one name, ``tune_layernorm``, here and in `AdapterSpec`. The
defaults differ on purpose: `inject_adapters` on a bare Hugging Face model trains the adapters
alone (``AdapterSpec.tune_layernorm=False``, peft's convention and the smallest trainable set),
while TransRec's adapter policies train the norms from the lowest adapted block upwards
(``tune_layernorm=True``), as Houlsby et al. and Fu et al. did for the results this library
reproduces; the norms add 0.02 % of BERT-base's parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from torch import nn

from adarec.errors import ConfigError
from adarec.freezing import (
    ParameterSummary,
    adapter_parameters,
    mark_adapters_and_upper_norms_trainable,
    parameter_summary,
)
from adarec.layouts import iter_blocks


class PolicyModel(Protocol):
    """What a policy may touch: the two towers (the item encoder lists its transformers)."""

    item_encoder: Any
    user_encoder: nn.Module

    def requires_grad_(self, requires_grad: bool = True) -> Any: ...
    def named_modules(self) -> Any: ...
    def parameters(self) -> Any: ...


Policy = Callable[..., None]
_POLICIES: dict[str, tuple[Policy, frozenset[str]]] = {}


def register_policy(name: str, options: tuple[str, ...] = ()) -> Callable[[Policy], Policy]:
    """Decorator: register ``fn(model, tune_layernorm, **options)`` as policy ``name``;
    ``options`` are the keyword arguments it accepts beyond ``tune_layernorm``."""

    def add(fn: Policy) -> Policy:
        if name in _POLICIES:
            raise ConfigError(f"policy {name!r} is already registered")
        _POLICIES[name] = (fn, frozenset(options))
        return fn

    return add


def unregister_policy(name: str) -> None:
    _POLICIES.pop(name, None)


def policy_names() -> tuple[str, ...]:
    return tuple(_POLICIES)


def apply_policy(model: PolicyModel, name: str, tune_layernorm: bool = True,
                 **options: Any) -> ParameterSummary:
    """Run policy ``name`` on ``model``; options it does not take (or None) are refused."""
    if name not in _POLICIES:
        raise ConfigError(f"policy={name!r} is not one of {list(_POLICIES)}")
    fn, accepted = _POLICIES[name]
    given = {k: v for k, v in options.items() if v is not None}
    extra = sorted(set(given) - accepted)
    if extra:
        raise ConfigError(f"policy {name!r} takes no option(s) {extra}"
                          + (f" (it takes {sorted(accepted)})" if accepted else ""))
    fn(model, tune_layernorm, **given)
    return parameter_summary(model)  # type: ignore[arg-type]


def has_adapters(module: nn.Module) -> bool:
    """Adapters injected, or a decoupled module (side network, inter-modal stream) inside."""
    return bool(adapter_parameters(module)) or any(
        getattr(m, "decoupled", False) is True for m in module.modules())


def _need_adapters(model: PolicyModel, name: str, item: bool, user: bool) -> None:
    where = " and ".join(w for w, on in (("item", item), ("user", user)) if on)
    found = (item and has_adapters(model.item_encoder)) or (user and has_adapters(
        model.user_encoder))
    if not found:
        raise ConfigError(f"policy {name!r} needs adapters in the {where} encoder; call "
                          "inject_adapters first")


@register_policy("full")
def full(model: PolicyModel, tune_layernorm: bool) -> None:
    """Everything trains: base weights, adapters, DTL, user encoder."""
    model.requires_grad_(True)


@register_policy("adapters")
def adapters(model: PolicyModel, tune_layernorm: bool) -> None:
    """The paper's adapter tuning: in each encoder that holds adapters, only its adapters (and
    norms from the lowest adapted block up); an encoder without adapters (a SASRec learnt from
    scratch) trains fully."""
    _need_adapters(model, "adapters", item=True, user=True)
    model.requires_grad_(True)
    for tower in (model.item_encoder, model.user_encoder):
        if has_adapters(tower):
            mark_adapters_and_upper_norms_trainable(tower, tune_layernorm)


@register_policy("item_adapters")
def item_adapters(model: PolicyModel, tune_layernorm: bool) -> None:
    """Item-encoder adapters (+ norms); the user encoder trains fully."""
    _need_adapters(model, "item_adapters", item=True, user=False)
    model.requires_grad_(True)
    mark_adapters_and_upper_norms_trainable(model.item_encoder, tune_layernorm)


@register_policy("user_adapters")
def user_adapters(model: PolicyModel, tune_layernorm: bool) -> None:
    """Item encoder frozen; user-encoder adapters (+ norms)."""
    _need_adapters(model, "user_adapters", item=False, user=True)
    model.requires_grad_(True)
    model.item_encoder.requires_grad_(False)
    mark_adapters_and_upper_norms_trainable(model.user_encoder, tune_layernorm)


@register_policy("frozen")
def frozen(model: PolicyModel, tune_layernorm: bool) -> None:
    """Linear probe: item encoder frozen (its adapters too); DTL and user encoder train."""
    model.requires_grad_(True)
    model.item_encoder.requires_grad_(False)


@register_policy("top_blocks", options=("top",))
def top_blocks(model: PolicyModel, tune_layernorm: bool, top: int | None = None) -> None:
    """The top ``top`` transformer blocks of the item encoder train (whatever they hold);
    embeddings and lower blocks stay frozen (so a prefix cache can skip them)."""
    if top is None:
        raise ConfigError("policy 'top_blocks' needs top=k (how many blocks train)")
    keep = top_block_prefixes(model, top)
    model.requires_grad_(True)
    for pname, p in model.item_encoder.named_parameters():
        p.requires_grad_(any(pname.startswith(k) for k in keep))


def top_block_prefixes(model: PolicyModel, top: int) -> list[str]:
    """Parameter-name prefixes (relative to the item encoder) of its top ``top`` blocks."""
    encoder = model.item_encoder
    models = encoder.hf_models()
    if not models:
        raise ConfigError(f"policy 'top_blocks' needs a transformer item encoder; "
                          f"{type(encoder).__name__} has none")
    names = {id(m): n for n, m in encoder.named_modules()}
    prefixes = []
    for hf in models:
        blocks = list(iter_blocks(hf))
        if not 1 <= top <= len(blocks):
            raise ConfigError(f"top={top}: {type(hf).__name__} has {len(blocks)} blocks")
        root = names[id(hf)]
        prefixes += [f"{root}.{b.stack}.{b.index}." if root else f"{b.stack}.{b.index}."
                     for b in blocks[-top:]]
    return prefixes


__all__ = ["Policy", "apply_policy", "has_adapters", "policy_names", "register_policy",
           "top_block_prefixes", "unregister_policy"]
