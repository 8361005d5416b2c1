"""`MultimodalItemEncoder`: a text and an image encoder over the same items, fused by concat,
sum, mean or IISAN's inter-modal side stream (`InterModalSide`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn

from adarec.adapters.side import SideBlock
from adarec.errors import AdapterStateError, ConfigError, DataError
from adarec.layouts import iter_blocks
from adarec.rec.item_encoder import ItemEncoder, ItemEncoderBase
from adarec.rec.kinds import PartSource, config_of, register_kind
from adarec.rec.side_encoding import SideEncoding

FUSIONS = ("concat", "sum", "mean", "side")


@register_kind("multimodal")
class MultimodalItemEncoder(ItemEncoderBase):
    """Fuse a text and an image encoder over the same item indices (``concat``, ``sum``,
    ``mean``; the last two need equal widths). Each part decides its own transferability.

    ``fusion="side"`` (IISAN's intra- + inter-modal side networks, Fu et al. SIGIR 2024): each
    encoder has its own side network (inject method ``"side"`` into both, e.g. through
    `TransRec.inject_adapters`), and a small `InterModalSide` stream of width ``side_width``
    reads both modalities' pooled tapped states, ``side_levels`` of them from the top of each;
    the output is ``[text representation; image representation; inter-modal stream]``.
    ``side_levels=None``: half the blocks (rounded up) of the shallower encoder, as many as a
    default side network taps.
    """

    def __init__(self, text: nn.Module, image: nn.Module, fusion: str = "concat",
                 side_width: int = 64, side_levels: int | None = None) -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ConfigError(f"fusion={fusion!r} is not one of {list(FUSIONS)}")
        t, v = cast(ItemEncoder, text), cast(ItemEncoder, image)
        if t.n_items != v.n_items:
            raise DataError(f"text has {t.n_items} items, image has {v.n_items}")
        if fusion in ("sum", "mean") and t.dim != v.dim:
            raise ConfigError(f"fusion={fusion!r} needs equal widths, got {t.dim} and "
                             f"{v.dim}; use 'concat'")
        self.text, self.image, self.fusion = text, image, fusion
        self.side_width, self.side_levels = side_width, side_levels
        self.dim = t.dim + v.dim if fusion == "concat" else t.dim
        if fusion == "side":
            if not (isinstance(text, SideEncoding) and isinstance(image, SideEncoding)):
                raise ConfigError("fusion='side' needs a text and an image encoder over Hugging "
                                 "Face models (TextItemEncoder, ImageItemEncoder)")
            if side_levels is None:
                depth = [len(list(iter_blocks(e.model))) for e in (text, image)]
                side_levels = (min(depth) + 1) // 2
            self.side_levels = side_levels
            self.inter = InterModalSide(t.dim, v.dim, side_levels, side_width)
            self.dim = t.dim + v.dim + side_width

    @property
    def n_items(self) -> int:
        return int(cast(ItemEncoder, self.text).n_items)

    def hf_models(self) -> list[nn.Module]:
        t, v = cast(ItemEncoder, self.text), cast(ItemEncoder, self.image)
        return [*t.hf_models(), *v.hf_models()]

    def invalidate_cache(self) -> None:
        cast(ItemEncoder, self.text).invalidate_cache()
        cast(ItemEncoder, self.image).invalidate_cache()

    def add_items(self, inputs: Sequence[Any], preprocessor: Any = None) -> None:
        """Append items from ``(text, image)`` pairs; ``preprocessor``: ``(tokenizer,
        image processor)``, by default those the two encoders kept."""
        tok, proc = preprocessor if preprocessor is not None else (None, None)
        pairs = list(inputs)
        cast(ItemEncoder, self.text).add_items([t for t, _ in pairs], tok)
        cast(ItemEncoder, self.image).add_items([v for _, v in pairs], proc)

    def to_config(self) -> dict[str, Any]:
        return {"fusion": self.fusion, "side_width": self.side_width,
                "side_levels": self.side_levels, "text": config_of(self.text, "text encoder"),
                "image": config_of(self.image, "image encoder")}

    @classmethod
    def from_config(cls, config: dict[str, Any], source: PartSource) -> MultimodalItemEncoder:
        return cls(source.build(config["text"], "text"), source.build(config["image"], "image"),
                   fusion=config.get("fusion", "concat"), side_width=int(config["side_width"]),
                   side_levels=config.get("side_levels"))

    def forward(self, item_ids: Tensor) -> Tensor:
        if self.fusion == "side":
            return self._side(item_ids)
        t, v = self.text(item_ids), self.image(item_ids)
        if self.fusion == "concat":
            return torch.cat([t, v], dim=-1)
        return t + v if self.fusion == "sum" else (t + v) / 2

    def _side(self, item_ids: Tensor) -> Tensor:
        parts = []
        for name in ("text", "image"):
            encoder = cast(SideEncoding, getattr(self, name))
            ids = item_ids.reshape(-1).to(encoder._features()[0].device)
            if not encoder.side_networks():
                raise AdapterStateError(
                    f"fusion='side' needs an active side network in the {name} encoder; inject "
                    "method 'side' into both (TransRec.inject_adapters(item='side'))")
            parts.append(encoder.side_encode(ids, with_states=True))
        (t, t_states), (v, v_states) = parts
        m = self.inter(t_states, v_states)
        return torch.cat([t, v, m.to(t.dtype)], dim=-1)


class InterModalSide(nn.Module):
    """IISAN's inter-modal side stream at a narrow width ``r``: for the top ``levels`` tapped
    states of each modality (paired from the top), ``m_i = block_i(m_{i-1} + g_i * dv_i(v_i) +
    (1 - g_i) * dt_i(t_i))`` with learnable gates ``g_i = sigmoid(a_i / 0.1)`` (0.5 at init),
    per-modality down-projections and `SideBlock` MLPs; returns ``norm(m_levels)`` ``[B, r]``.

    Not an adapter inside a model but a trainable part of `MultimodalItemEncoder`; it declares
    ``decoupled = True`` so `TransRec`'s adapter policies train it with the side networks.
    """

    decoupled = True

    def __init__(self, text_hidden: int, image_hidden: int, levels: int, width: int,
                 expansion: int = 2, activation: str = "gelu", dropout: float = 0.0,
                 gate_temperature: float = 0.1) -> None:
        super().__init__()
        if levels < 1:
            raise ConfigError(f"InterModalSide needs levels >= 1, got {levels}")
        self.levels, self.gate_temperature = levels, gate_temperature
        self.text_downs = nn.ModuleList(nn.Linear(text_hidden, width) for _ in range(levels))
        self.image_downs = nn.ModuleList(nn.Linear(image_hidden, width) for _ in range(levels))
        self.gates = nn.Parameter(torch.zeros(levels))
        self.blocks = nn.ModuleList(SideBlock(width, expansion, activation, dropout)
                                    for _ in range(levels))
        self.norm = nn.LayerNorm(width)

    def forward(self, text_states: Tensor, image_states: Tensor) -> Tensor:
        """``text_states [B, S_t, H_t]``, ``image_states [B, S_v, H_v]``: tapped states, bottom
        to top; each needs at least ``levels``."""
        for name, states in (("text", text_states), ("image", image_states)):
            if states.size(1) < self.levels:
                raise AdapterStateError(
                    f"the inter-modal side stream reads {self.levels} levels, but the {name} "
                    f"side network taps {states.size(1)} block(s); tap more blocks or build "
                    f"MultimodalItemEncoder(side_levels={states.size(1)})")
        dtype = self.norm.weight.dtype
        t, v = text_states[:, -self.levels:].to(dtype), image_states[:, -self.levels:].to(dtype)
        gates = torch.sigmoid(self.gates / self.gate_temperature)
        m: Tensor | None = None
        for i in range(self.levels):
            x = gates[i] * self.image_downs[i](v[:, i]) + (1 - gates[i]) * self.text_downs[i](
                t[:, i])
            m = self.blocks[i](x if m is None else m + x)
        assert m is not None
        return self.norm(m)


__all__ = ["FUSIONS", "InterModalSide", "MultimodalItemEncoder"]
