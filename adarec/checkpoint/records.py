"""What a load reports: `LoadResult`, the one record both loaders return."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(repr=False)
class LoadResult:
    """What a load did not match. Empty lists everywhere means an exact load."""

    missing: list[str] = field(default_factory=list)
    """Tensors the model expects (adapter parameters of the loaded sets) that the file lacks."""
    unexpected: list[str] = field(default_factory=list)
    """Tensors in the file with no parameter of that name in the model."""
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    """``(name, shape in the file, shape in the model)``; these tensors were not loaded."""
    conflicts: list[str] = field(default_factory=list)
    """Base-model fingerprint, base-weight, spec or site differences."""
    loaded: list[str] = field(default_factory=list)
    sets: list[str] = field(default_factory=list)
    active: list[str] = field(default_factory=list)
    """The adapter sets switched on after the load."""
    other_base_weights: list[str] = field(default_factory=list)
    """Base tensors whose values (or dtype) differ from the ones the checkpoint was saved with
    (listed even when ``allow_other_base_weights=True`` let the load go ahead)."""

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched or self.conflicts)

    def __repr__(self) -> str:
        """A short summary (counts and the first few names), not every tensor name."""

        def few(names: Sequence[Any]) -> str:
            shown = ", ".join(str(n[0] if isinstance(n, tuple) else n) for n in names[:3])
            return f"{len(names)} [{shown}{', ...' if len(names) > 3 else ''}]"

        parts = [f"ok={self.ok}", f"sets={self.sets}", f"loaded={few(self.loaded)}"]
        for name in ("missing", "unexpected", "mismatched", "conflicts"):
            if getattr(self, name):
                parts.append(f"{name}={few(getattr(self, name))}")
        return f"LoadResult({', '.join(parts)})"

    def describe(self) -> str:
        parts = [f"base model differs: {c}" for c in self.conflicts]
        parts += [f"missing tensor: {n}" for n in self.missing]
        parts += [f"unexpected tensor: {n}" for n in self.unexpected]
        parts += [
            f"shape mismatch: {n}: checkpoint {list(a)}, model {list(b)}"
            for n, a, b in self.mismatched
        ]
        return "\n  ".join(parts)
