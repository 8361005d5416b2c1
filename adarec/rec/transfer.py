"""What carries over from one item catalogue to another: the item encoder's weights (not ID or
fixed tables), the adaptor, the user encoder and any adapters. Modules tied to one catalogue
declare ``transferable = False`` (ID embeddings, a trainable table, ID fusion); item features
are never in a state dict.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from adarec.errors import StateMismatchError


def item_specific_prefixes(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if getattr(m, "transferable", True) is False]


def transferable_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """``model``'s state dict without the item-specific modules."""
    skip = item_specific_prefixes(model)
    return {k: v for k, v in model.state_dict().items()
            if not any(k.startswith(p + ".") for p in skip)}


def load_transferable_state_dict(model: nn.Module, state: Mapping[str, Tensor],
                                 strict: bool = True) -> list[str]:
    """Load `transferable_state_dict` weights; returns the keys left at their current value
    (the item-specific ones). With ``strict`` any other missing or unknown key raises."""
    result = model.load_state_dict(dict(state), strict=False)
    expected = set(transferable_state_dict(model))
    missing = [k for k in result.missing_keys if k in expected]
    if strict and (missing or result.unexpected_keys):
        raise StateMismatchError(f"transferable state mismatch: missing {missing}, unexpected "
                                 f"{result.unexpected_keys} (inject the same adapter sets before "
                                 "loading a state that has adapters)")
    return list(result.missing_keys)


__all__ = ["item_specific_prefixes", "load_transferable_state_dict", "transferable_state_dict"]
