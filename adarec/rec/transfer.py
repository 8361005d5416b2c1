"""Transfer checkpoints: the weights that carry over to another item catalogue, in one folder.

Pre-train on a source data set, start a target model from it: the DTL / adaptor, the user
encoder, side networks and adapters carry over; item tables and ID embeddings do not (they
belong to the source's items; `TransRec.transferable_state_dict` decides). The folder holds
``transferable.safetensors`` and ``transfer_config.json`` (the tensor layout), written
atomically; the JSON's sha256 is bound into the safetensors metadata and the weights' sha256 into
the JSON, so an edited or truncated folder is refused, and a model whose layout differs (another
adaptor, other adapters, other widths) is refused with the differences named.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from torch import Tensor

from adarec.checkpoint import (
    _safetensors_metadata,
    config_digest,
    read_json,
    read_weights,
    write_json,
    write_weights,
)
from adarec.errors import CheckpointError, StateMismatchError
from adarec.folders import atomic_folder

CONFIG = "transfer_config.json"
WEIGHTS = "transferable.safetensors"
FORMAT = 1


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
                                          metadata={"config_sha256": config_digest(config)})
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
    state = read_weights(folder / WEIGHTS, sha256=config["weights"].get("sha256"))
    header = _safetensors_metadata((folder / WEIGHTS).read_bytes(), folder / WEIGHTS)
    if header.get("config_sha256") != config_digest(config):
        raise CheckpointError(f"{folder / CONFIG} does not match the digest bound into {WEIGHTS}: "
                              "the folder was edited or mixed; save it again")
    if _layout(state) != config["layout"]:
        raise CheckpointError(f"{folder / WEIGHTS} does not hold the tensors {CONFIG} lists")
    diff = _differences(config["layout"], _layout(model.transferable_state_dict()))
    if diff:
        raise StateMismatchError(f"{folder} was saved from a model of another layout: "
                                 + "; ".join(diff) + " (build the same adaptor, widths and "
                                 "adapter sets as the source before loading)")
    model.load_transferable_state_dict(state, strict=True)
    return model


__all__ = ["load_transferable", "save_transferable"]
