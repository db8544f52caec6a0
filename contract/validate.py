"""The checks both config modules (supervisor/config.py, worker/config.py)
make of a TOML value. Each returns the value (converted where it says) or
raises Invalid with what is expected instead, which the caller puts after
"FILE: KEY = VALUE: expected "."""
from __future__ import annotations

import math
from typing import Any


class Invalid(ValueError):
    """A value is not what its key takes; the message says what is expected."""


def boolean(v: Any) -> bool:
    if not isinstance(v, bool):
        raise Invalid("true or false")
    return v


def integer(v: Any, low: int, high: int, what: str | None = None) -> int:
    """A whole number in [low, high] (true/false are not numbers)."""
    if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
        raise Invalid(what or f"a whole number from {low} to {high}")
    return v


def seconds(v: Any, zero: bool = False, finite: bool = True) -> float:
    """A duration: > 0 (or >= 0 with `zero`), finite unless `finite` is False."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v > 0 or (zero and v == 0)) \
            or (finite and not math.isfinite(v)):
        raise Invalid(f"a number of seconds {'>=' if zero else '>'} 0")
    return float(v)


def strings(v: Any) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise Invalid("an array of strings")
    return v


def choice(v: Any, options: tuple[str, ...]) -> str:
    if v not in options:
        raise Invalid("one of " + ", ".join(f'"{o}"' for o in options))
    return v


# -- the wording both config files' errors share --------------------------------

def format_value(v: Any) -> str:
    """A value as it would be written in TOML, for error messages."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(format_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {format_value(x)}" for k, x in v.items()) + "}"
    return str(v)


def unknown_key(path: str, dotted: str, known) -> str:
    """`FILE: KEY: unknown key; expected one of A, B, C`."""
    return f"{path}: {dotted}: unknown key; expected one of {', '.join(known)}"


def bad_value(path: str, dotted: str, value: Any, expected: str) -> str:
    """`FILE: KEY = VALUE: expected ...`."""
    return f"{path}: {dotted} = {format_value(value)}: expected {expected}"
