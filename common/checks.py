"""Range checks for numbers: every float is finite and in range, every count is a whole number.

A NaN compares false with everything, so `x <= 0` lets it through; these checks are written so that
NaN and infinities always fail. Each raises ConfigError naming the setting and the range expected.
"""
from __future__ import annotations

import math
import numbers

from common.errors import ConfigError


def _range_text(lo, hi, lo_open, hi_open) -> str:
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo:g}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {hi:g}")
    return " and ".join(parts)


def finite(name: str, value, *, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
           hi_open: bool = False) -> float:
    """`value` as a float that is finite and within [lo, hi] (ends open where asked)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    v = float(value)
    ok = math.isfinite(v)
    if ok and lo is not None:
        ok = v > lo if lo_open else v >= lo
    if ok and hi is not None:
        ok = v < hi if hi_open else v <= hi
    if not ok:
        bounds = _range_text(lo, hi, lo_open, hi_open)
        raise ConfigError(f"{name} must be a finite number{' ' + bounds if bounds else ''}, got {value!r}")
    return v


def whole(name: str, value, *, lo: int | None = None, hi: int | None = None) -> int:
    """`value` as an int (not a bool, not a float) within [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name} must be a whole number, got {value!r}")
    v = int(value)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ConfigError(f"{name} must be a whole number {_range_text(lo, hi, False, False)}, got {v}")
    return v
