"""`ImageItemEncoder`: a Hugging Face vision encoder over a pixel table, with side networks
over cached hidden states (`adarec.rec.side_encoding`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
import transformers
from torch import Tensor, nn

from adarec.errors import ConfigError, DataError
from adarec.rec.data import refuse_identical_items
from adarec.rec.item_encoder import (
    ItemEncoderBase,
    check_pooling,
    dtype_name,
    hf_config,
    last_hidden,
)
from adarec.rec.kinds import PartSource, register_kind
from adarec.rec.side_encoding import SideEncoding
from adarec.rec.state_cache import HiddenStateCache


def _pixels(processor: Any, images: Sequence[Any]) -> Tensor:
    return cast(Tensor, processor(images=list(images), return_tensors="pt")["pixel_values"])


@register_kind("image")
class ImageItemEncoder(SideEncoding, ItemEncoderBase):
    """A Hugging Face vision encoder (ViT, ViTMAE, DeiT, ...) over a pixel table
    ``[n_items + 1, 3, H, W]`` (row 0 = padding item).

    ViTMAE masks and shuffles patches at random in its forward pass; here ``mask_ratio`` is set
    to 0 on the model's config and a fixed ``noise`` (the identity order) is passed, so every
    patch is kept in place and the item embedding is deterministic.

    Side networks and their hidden-state cache (``cache_states``, ``cache_dtype``,
    ``cache_dir``) work as in `TextItemEncoder`.
    """

    transferable = True
    pixel_values: Tensor

    def __init__(
        self,
        hf_vision_model: nn.Module,
        pixel_values: Tensor,
        pooling: str = "cls",
        chunk_size: int | None = 256,
        cache_states: bool = True,
        cache_dtype: torch.dtype | None = None,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        if pixel_values.dim() != 4:
            raise DataError(f"pixel_values must be [n_items + 1, C, H, W], got "
                             f"{tuple(pixel_values.shape)}")
        refuse_identical_items(pixel_values, "pixels")
        self.model = hf_vision_model
        self.pooling = check_pooling(pooling)
        self.chunk_size = chunk_size
        config = hf_config(hf_vision_model)
        self.dim = int(config.hidden_size)
        self.is_mae = getattr(config, "model_type", "") == "vit_mae"
        if self.is_mae:
            config.mask_ratio = 0.0
        self.register_buffer("pixel_values", pixel_values, persistent=False)
        self.cache_states, self.cache_dtype, self.cache_dir = cache_states, cache_dtype, cache_dir
        self._state_cache: HiddenStateCache | None = None
        self._n_tokens: int | None = None
        self.processor: Any = None
        """The image processor the pixel table was made with, when known (`from_images` keeps
        it): used by `add_items` and saved by `TransRec.save_pretrained`."""

    @classmethod
    def from_images(cls, hf_vision_model: nn.Module, processor: Any, images: Sequence[Any],
                    **kwargs: Any) -> ImageItemEncoder:
        """Preprocess the images of items ``1..n`` (``images[0]`` is item 1) with the model's
        own image processor; the padding row is all zeros."""
        pixels = _pixels(processor, images)
        encoder = cls(hf_vision_model, torch.cat([pixels[:1] * 0, pixels]), **kwargs)
        encoder.processor = processor
        return encoder

    def add_items(self, inputs: Sequence[Any], preprocessor: Any = None) -> None:
        """Append items from their images, preprocessed like the table."""
        processor = preprocessor if preprocessor is not None else self.processor
        if processor is None:
            raise ConfigError("no image processor: pass the one the pixel table was made with")
        if not inputs:
            return
        pixels = _pixels(processor, inputs).to(self.pixel_values)
        if pixels.shape[1:] != self.pixel_values.shape[1:]:
            raise DataError(f"the processor gives pixels {tuple(pixels.shape[1:])}, the table "
                            f"holds {tuple(self.pixel_values.shape[1:])}")
        self.pixel_values = torch.cat([self.pixel_values, pixels])
        self.invalidate_cache()

    def to_config(self) -> dict[str, Any]:
        return {"pooling": self.pooling, "chunk_size": self.chunk_size,
                "cache_states": self.cache_states, "cache_dtype": dtype_name(self.cache_dtype)}

    def features(self) -> dict[str, Tensor]:
        return {"pixel_values": self.pixel_values}

    def preprocessors(self) -> dict[str, Any]:
        return {"processor": self.processor}

    @classmethod
    def from_config(cls, config: dict[str, Any], source: PartSource) -> ImageItemEncoder:
        dtype = config.get("cache_dtype")
        encoder = cls(source.model("model"), source.feature("pixel_values"),
                      pooling=config.get("pooling", "cls"), chunk_size=config.get("chunk_size"),
                      cache_states=bool(config.get("cache_states", True)),
                      cache_dtype=getattr(torch, dtype) if dtype else None)
        encoder.processor = source.preprocessor("processor", transformers.AutoImageProcessor)
        return encoder

    @property
    def n_items(self) -> int:
        return self.pixel_values.size(0) - 1

    def hf_models(self) -> list[nn.Module]:
        return [self.model]

    def _encode(self, ids: Tensor) -> Tensor:
        return self._pool(self._backbone(ids)[0], None)

    # what SideEncoding needs
    def _pool(self, hidden: Tensor, mask: Tensor | None) -> Tensor:
        return hidden[:, 0] if self.pooling == "cls" else hidden[:, 1:].mean(1)

    def _features(self) -> list[Tensor]:
        return [self.pixel_values]

    def _mask(self, ids: Tensor, width: int) -> Tensor | None:
        return None

    def _order(self, ids: Tensor) -> Tensor:
        return torch.arange(ids.numel(), device=ids.device)

    def _width(self, ids: Tensor) -> int:
        if self._n_tokens is None:
            with torch.no_grad():
                self._n_tokens = int(self._backbone(ids[:1])[0].size(1))
        return self._n_tokens

    def _backbone(self, ids: Tensor) -> tuple[Tensor, Tensor | None]:
        pixels = self.pixel_values[ids]
        kwargs: dict[str, Tensor] = {}
        if self.is_mae:
            patch = hf_config(self.model).patch_size
            ph, pw = (patch, patch) if isinstance(patch, int) else patch
            n = (pixels.size(-2) // ph) * (pixels.size(-1) // pw)
            kwargs["noise"] = torch.arange(n, device=pixels.device, dtype=torch.float).expand(
                pixels.size(0), n
            )
        return last_hidden(self.model(pixel_values=pixels, **kwargs)), None

    def forward(self, item_ids: Tensor) -> Tensor:
        ids = item_ids.reshape(-1).to(self.pixel_values.device)
        if ids.numel() == 0:
            return self.pixel_values.new_zeros(0, self.dim)
        sides = self.side_networks()
        if sides:
            return cast(Tensor, self.side_encode(ids, sides))
        return torch.cat([self._encode(c) for c in ids.split(self.chunk_size or ids.numel())])


__all__ = ["ImageItemEncoder"]
