"""Argument checks shared by the cost models: each error names the argument and the allowed range.

check_int("pp", 0)       -> ValueError: pp must be an integer >= 1, got 0
check_real("f", -1.0)    -> ValueError: f must be a finite number >= 0.0, got -1.0
"""

import math
from numbers import Integral, Real


def check_int(name: str, value: object, lo: int = 1) -> int:
    """value as an int, if it is an integer (not a bool) >= lo; else a ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
    return int(value)


def check_real(name: str, value: object, lo: float = 0.0, strict: bool = False) -> float:
    """value as a float, if it is a finite real number >= lo (> lo when strict); else a
    ValueError naming `name`."""
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < lo or (strict and value == lo):
        rel = ">" if strict else ">="
        raise ValueError(f"{name} must be a finite number {rel} {lo}, got {value!r}")
    return float(value)
