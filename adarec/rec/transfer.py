"""What carries over from one item catalogue to another, and transfer checkpoints.

The item encoder's weights (not ID or fixed tables), the adaptor, the user encoder, side
networks and adapters carry over; modules tied to one catalogue declare ``transferable = False``
(ID embeddings, a trainable table, ID fusion) and item features are never in a state dict.
`save_transferable` writes those weights as ``transferable.safetensors`` + ``transfer_config.json``
(the tensor layout), atomically; the JSON's sha256 is bound into the safetensors metadata and the
weights' sha256 into the JSON, so an edited or truncated folder is refused, and a model whose
layout differs (another adaptor, other adapters, other widths) is refused with the differences
named.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from torch import Tensor, nn

from adarec.checkpoint import (
    CONFIG_DIGEST,
    config_digest,
    read_json,
    write_json,
    write_weights,
)
from adarec.checkpoint.files import (
    _check_sha256,
    config_is_bound,
    read_weights_bytes,
    weights_from_bytes,
)
from adarec.errors import CheckpointError, StateMismatchError
from adarec.folders import atomic_folder

CONFIG = "transfer_config.json"
WEIGHTS = "transferable.safetensors"
FORMAT = 1


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


class Transferable(Protocol):
    """What `save_transferable` / `load_transferable` need (TransRec has both)."""

    def transferable_state_dict(self) -> dict[str, Tensor]: ...
    def load_transferable_state_dict(self, state: dict[str, Tensor],
                                     strict: bool = True) -> list[str]: ...


def _layout(state: dict[str, Tensor]) -> dict[str, list[Any]]:
    return {k: [str(v.dtype).removeprefix("torch."), list(v.shape)] for k, v in state.items()}


def save_transferable(model: Transferable, path: str | Path) -> Path:
    """Write ``model``'s transferable weights to the folder ``path`` (replaced atomically)."""
    state = model.transferable_state_dict()
    if not state:
        raise CheckpointError("save_transferable: the model has no transferable weights")
    config: dict[str, Any] = {"format": FORMAT, "layout": _layout(state)}
    with atomic_folder(path, CONFIG) as tmp:
        config["weights"] = write_weights(tmp, WEIGHTS, state,
                                          metadata={CONFIG_DIGEST: config_digest(config)})
        write_json(tmp / CONFIG, config)
    return Path(path)


def _differences(saved: dict[str, list[Any]], now: dict[str, list[Any]]) -> list[str]:
    def few(keys: list[str]) -> str:
        return ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")

    out = []
    if missing := sorted(set(now) - set(saved)):
        out.append(f"the model has {len(missing)} tensor(s) the checkpoint lacks: {few(missing)}")
    if extra := sorted(set(saved) - set(now)):
        out.append(f"the checkpoint has {len(extra)} tensor(s) the model lacks: {few(extra)}")
    if shaped := sorted(k for k in set(saved) & set(now) if saved[k] != now[k]):
        out.append("other dtype/shape: " + ", ".join(
            f"{k} {saved[k]} saved, {now[k]} here" for k in shaped[:4]))
    return out


def load_transferable(model: Transferable, path: str | Path) -> Transferable:
    """Load a `save_transferable` folder into ``model`` (in place; its item-specific weights
    keep their values). Refuses an edited or truncated folder, and a model of another layout."""
    folder = Path(path)
    config = read_json(folder / CONFIG)
    if config.get("format") != FORMAT or not isinstance(config.get("layout"), dict) \
            or not isinstance(config.get("weights"), dict):
        raise CheckpointError(f"{folder / CONFIG} is not a transfer checkpoint (format "
                              f"{config.get('format')!r}; expected {FORMAT}, with a layout and "
                              "weights record)")
    data = read_weights_bytes(folder / WEIGHTS)  # read once: sha256, binding, tensors
    _check_sha256(data, config["weights"], folder / WEIGHTS)
    if not config_is_bound(data, config, folder / WEIGHTS):
        raise CheckpointError(f"{folder / CONFIG} does not match the digest bound into {WEIGHTS}: "
                              "the folder was edited or mixed; save it again")
    state = weights_from_bytes(data, folder / WEIGHTS)
    if _layout(state) != config["layout"]:
        raise CheckpointError(f"{folder / WEIGHTS} does not hold the tensors {CONFIG} lists")
    diff = _differences(config["layout"], _layout(model.transferable_state_dict()))
    if diff:
        raise StateMismatchError(f"{folder} was saved from a model of another layout: "
                                 + "; ".join(diff) + " (build the same adaptor, widths and "
                                 "adapter sets as the source before loading)")
    model.load_transferable_state_dict(state, strict=True)
    return model


__all__ = ["item_specific_prefixes", "load_transferable", "load_transferable_state_dict",
           "save_transferable", "transferable_state_dict"]
