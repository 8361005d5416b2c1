"""Every built-in item encoder kind, importable from one place (each lives in its own file;
the protocol they share is `adarec.rec.item_encoder`)."""

from __future__ import annotations

from adarec.rec.audio_items import AudioItemEncoder
from adarec.rec.image_items import ImageItemEncoder
from adarec.rec.item_encoder import POOLINGS, ItemEncoder, ItemEncoderBase
from adarec.rec.multimodal_items import FUSIONS, InterModalSide, MultimodalItemEncoder
from adarec.rec.table_items import IDItemEncoder, PrecomputedItemEncoder
from adarec.rec.text_items import TextItemEncoder

__all__ = [
    "FUSIONS",
    "POOLINGS",
    "AudioItemEncoder",
    "IDItemEncoder",
    "ImageItemEncoder",
    "InterModalSide",
    "ItemEncoder",
    "ItemEncoderBase",
    "MultimodalItemEncoder",
    "PrecomputedItemEncoder",
    "TextItemEncoder",
]
