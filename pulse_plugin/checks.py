"""Typed field checks for user input: each returns the value or raises naming the field."""

from __future__ import annotations

import math
import numbers
from typing import Any, Optional, Sequence, Type


class FieldError(ValueError):
    """A value does not have the type or range its field expects; the message names the field."""


def _show(bound: float) -> str:
    return str(bound) if isinstance(bound, int) else f"{bound:g}"


def _range(lo: float, hi: float) -> str:
    if lo == -math.inf and hi == math.inf:
        return ""
    if hi == math.inf:
        return f" >= {_show(lo)}"
    if lo == -math.inf:
        return f" <= {_show(hi)}"
    return f" in [{_show(lo)}, {_show(hi)}]"


def number(
    name: str,
    value: Any,
    lo: float = -math.inf,
    hi: float = math.inf,
    error: Type[ValueError] = FieldError,
) -> float:
    """value as a float: a real number (not a bool), finite, lo <= value <= hi."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise error(f"{name}: expected a number{_range(lo, hi)}, got {value!r}")
    if not math.isfinite(value) or not lo <= value <= hi:
        raise error(f"{name}: expected a finite number{_range(lo, hi)}, got {value!r}")
    return float(value)


def integer(
    name: str,
    value: Any,
    lo: float = -math.inf,
    hi: float = math.inf,
    error: Type[ValueError] = FieldError,
) -> int:
    """value as an int: an integer (not a bool, not 2.5), lo <= value <= hi."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or not lo <= value <= hi
    ):
        raise error(f"{name}: expected an integer{_range(lo, hi)}, got {value!r}")
    return int(value)


def boolean(name: str, value: Any, error: Type[ValueError] = FieldError) -> bool:
    """value itself when it is true or false (never "no" read as true)."""
    if not isinstance(value, bool):
        raise error(f"{name}: expected true or false, got {value!r}")
    return value


def text(
    name: str, value: Any, empty: bool = True, error: Type[ValueError] = FieldError
) -> str:
    """value when it is a string (non-blank unless empty=True)."""
    if not isinstance(value, str) or (not empty and not value.strip()):
        kind = "a string" if empty else "some text"
        raise error(f"{name}: expected {kind}, got {value!r}")
    return value


def choice(
    name: str, value: Any, options: Sequence[str], error: Type[ValueError] = FieldError
) -> str:
    """value when it is one of options."""
    if not isinstance(value, str) or value not in options:
        raise error(f"{name}: expected one of {list(options)}, got {value!r}")
    return value


def optional(check, name: str, value: Any, *args, **kwargs) -> Optional[Any]:
    """None, or check(name, value, ...)."""
    return None if value is None else check(name, value, *args, **kwargs)
