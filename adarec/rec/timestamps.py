"""Timestamps as sortable numbers: parse what a user meant, or refuse with the row named.

Sorting raw values goes wrong silently: ``"9" < "10"`` is False for strings, and a ``NaN`` key
makes ``list.sort`` leave whole stretches unsorted. So every timestamp becomes a float first:
numbers as they are, numeric strings as numbers, dates (``datetime`` objects, pandas
``Timestamp``\\s, ISO 8601 strings) as POSIX seconds, naive dates read as UTC.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from numbers import Real
from typing import Any

from adarec.errors import DataError


def is_missing(value: Any) -> bool:
    """``None``, NaN/NaT (the values that are not equal to themselves) or a blank string."""
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    try:
        return bool(value != value)
    except (TypeError, ValueError):  # e.g. an array-like value: not a missing scalar
        return False


class TimestampParser:
    """Turns each timestamp into a float; remembers whether numbers and dates were mixed.

    Numbers (``1700000000``) and dates (``"2024-05-01"``) cannot be compared meaningfully, so a
    data set holding both is refused by `check` (after all rows, so the message can name an
    example of each).
    """

    def __init__(self) -> None:
        self.first: dict[str, str] = {}  # kind -> where it was first seen

    def parse(self, value: Any, where: str) -> float:
        if is_missing(value):
            raise DataError(
                f"{where}: missing timestamp ({value!r}); drop or fill such rows before loading, "
                "or load without a time column if the rows are already in order"
            )
        if isinstance(value, bool):
            raise DataError(f"{where}: timestamp {value!r} is a boolean, not a time")
        if isinstance(value, datetime):
            return self._seen("date", where, _posix(value))
        if isinstance(value, Real):
            number = float(value)
            if not math.isfinite(number):
                raise DataError(f"{where}: timestamp {value!r} is not a finite number")
            return self._seen("number", where, number)
        if isinstance(value, str):
            text = value.strip()
            try:
                number = float(text)
            except ValueError:
                pass
            else:
                if not math.isfinite(number):
                    raise DataError(f"{where}: timestamp {value!r} is not a finite number")
                return self._seen("number", where, number)
            try:
                date = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                raise DataError(
                    f"{where}: cannot read timestamp {value!r}: expected a number (e.g. Unix "
                    "seconds) or an ISO 8601 date such as 2024-05-01 or 2024-05-01T12:30:00"
                ) from None
            return self._seen("date", where, _posix(date))
        raise DataError(f"{where}: timestamp {value!r} of type {type(value).__name__} is neither "
                        "a number nor a date")

    def _seen(self, kind: str, where: str, key: float) -> float:
        self.first.setdefault(kind, where)
        return key

    def check(self) -> None:
        """Refuse a mix of numbers and dates (call once after parsing every row)."""
        if len(self.first) > 1:
            raise DataError(
                f"timestamps mix numbers ({self.first['number']}) and dates "
                f"({self.first['date']}); they cannot be ordered against each other"
            )


def _posix(value: datetime) -> float:
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.timestamp()


__all__ = ["TimestampParser", "is_missing"]
