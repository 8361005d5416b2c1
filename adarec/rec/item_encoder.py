"""The item-encoder protocol: ``encoder(item_ids [N]) -> [N, dim]``, owning its item features.

`ItemEncoder` is everything `TransRec` calls on an item encoder; `ItemEncoderBase` gives the
defaults (no transformer, no cache, no features, cannot grow), so a new kind implements
``forward``, ``dim``, ``n_items`` and ``to_config``/``from_config`` and registers itself with
`adarec.rec.kinds.register_kind`.

Features (token ids, pixels, fixed tables) are non-persistent buffers: ``.to(device)`` moves
them, but ``state_dict()`` holds only weights, so a checkpoint does not carry the data set and
the weights of a text/image encoder transfer to another item catalogue unchanged. Parts whose
parameters are tied to one catalogue (ID embeddings, a trainable table) set
``transferable = False``; `TransRec.transferable_state_dict` leaves them out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, cast, runtime_checkable

from torch import Tensor, nn

from adarec.errors import ConfigError

POOLINGS = ("cls", "mean")


@runtime_checkable
class ItemEncoder(Protocol):
    """What `TransRec` may call on an item encoder."""

    dim: int
    transferable: bool

    @property
    def n_items(self) -> int: ...

    def __call__(self, item_ids: Tensor) -> Tensor: ...

    def hf_models(self) -> list[nn.Module]:
        """The transformers adapters go into (none for ID or table encoders)."""
        ...

    def invalidate_cache(self) -> None:
        """Drop every cache the encoder owns (after writes no version counter sees)."""
        ...

    def add_items(self, inputs: Sequence[Any], preprocessor: Any = None) -> None:
        """Append items ``n_items + 1 ..`` from their raw inputs (texts, images)."""
        ...

    def to_config(self) -> dict[str, Any]: ...


class ItemEncoderBase(nn.Module):
    """Defaults of the `ItemEncoder` protocol for a new encoder kind."""

    transferable = True
    dim: int

    def __init__(self) -> None:
        super().__init__()

    @property
    def n_items(self) -> int:
        raise NotImplementedError

    def hf_models(self) -> list[nn.Module]:
        return []

    def invalidate_cache(self) -> None:
        return None

    def add_items(self, inputs: Sequence[Any], preprocessor: Any = None) -> None:
        raise ConfigError(f"{type(self).__name__} cannot encode items it has not seen; new "
                          "items need an encoder that reads their content (text, images)")

    def features(self) -> dict[str, Tensor]:
        return {}

    def preprocessors(self) -> dict[str, Any]:
        return {}

    def to_config(self) -> dict[str, Any]:
        raise NotImplementedError


def hf_config(model: nn.Module) -> Any:
    """A Hugging Face model's ``config`` (``nn.Module`` attributes type as ``Tensor | Module``)."""
    return cast(Any, model).config


def check_pooling(pooling: str, allowed: Sequence[str] = POOLINGS) -> str:
    if pooling not in allowed:
        raise ConfigError(f"pooling={pooling!r} is not one of {list(allowed)}")
    return pooling


def last_hidden(output: Any) -> Tensor:
    hidden = getattr(output, "last_hidden_state", None)
    return hidden if hidden is not None else output[0]


def dtype_name(dtype: Any) -> str | None:
    return None if dtype is None else str(dtype).removeprefix("torch.")


__all__ = ["POOLINGS", "ItemEncoder", "ItemEncoderBase", "check_pooling", "dtype_name",
           "hf_config", "last_hidden"]
