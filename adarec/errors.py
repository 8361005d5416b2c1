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
class NonFiniteScoreError(EvaluationError):
    """User or item vectors hold NaN/inf, so no honest score or ranking exists."""


class RegistrationError(AdarecError, ValueError):
    """A method, spec field or layout cannot be registered (name taken, incomplete definition)."""


# ----------------------------------------------------------------------- recommender side
# Each also subclasses the builtin type the code raised before, so `except ValueError` (or
# `KeyError`, `FileNotFoundError`) written against older versions keeps working.
class ConfigError(AdarecError, ValueError):
    """A recommender setting (objective, loss, policy, k, sizes, ...) is unknown, out of range or
    inconsistent with another one."""


class DataError(AdarecError, ValueError):
    """Input data is not what it claims to be: a missing column, an unparsable or missing
    timestamp, an item with two different texts, an item index outside the catalogue."""


class DataFileNotFoundError(DataError, FileNotFoundError):
    """A data folder or file does not exist where it was looked for."""


class UnknownItemError(DataError, KeyError):
    """A raw item id (or index) is not in the model's or the data set's item map."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0]) if self.args else ""


class StateMismatchError(AdarecError, KeyError):
    """A state dict does not hold the tensors the model expects (missing or unexpected keys)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class TrainingError(AdarecError, RuntimeError):
    """Training cannot go on to a meaningful model: the loss became NaN/inf, or validation
    scores are all tied (a collapsed model); stopped so that no such model is kept as best."""
