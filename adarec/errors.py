"""The library's own error types, so callers can catch adarec failures precisely."""

from __future__ import annotations


class AdarecError(Exception):
    """Base class of every error adarec raises on purpose."""


class SpecError(AdarecError, ValueError):
    """An `AdapterSpec` field is missing, of the wrong type or out of range."""


class TargetNotFoundError(AdarecError, LookupError):
    """No module of the model matched what the spec asked to adapt."""


class UnsupportedModuleError(AdarecError, TypeError):
    """A matched module cannot be adapted correctly (e.g. it is read through `F.linear`)."""


class AdapterStateError(AdarecError, RuntimeError):
    """An operation does not fit the adapters present (unknown name, duplicate set, merged)."""


class CheckpointError(AdarecError, RuntimeError):
    """A checkpoint is missing, corrupted, truncated or made for another model."""


class EvaluationError(AdarecError, ValueError):
    """An evaluation input would give a number that is not what it claims to measure (a NaN
    score, a cut-off below 1, an unknown tie rule or metric)."""
