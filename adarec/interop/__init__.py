"""Interoperability with other adapter libraries (peft), through their on-disk formats only."""

from __future__ import annotations

from .peft import export_peft_lora, import_peft_lora

__all__ = ["export_peft_lora", "import_peft_lora"]
