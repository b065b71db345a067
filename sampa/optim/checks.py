"""One-line range checks for method hyperparameters (raised before any training starts)."""

from __future__ import annotations

import math

from sampa.optim.base import HyperparameterError


def check_range(
    name: str,
    value: float,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Raise ``HyperparameterError('name must be in [low, high] (got value)')`` when out of range."""
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise HyperparameterError(f"{name} must be a number (got {value!r})")
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        raise HyperparameterError(f"{name} must be in {lo}{_fmt(low)}, {_fmt(high)}{hi} (got {value!r})")


def check_int(name: str, value: int, low: int) -> None:
    """Raise unless ``value`` is an integer >= low."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise HyperparameterError(f"{name} must be an integer >= {low} (got {value!r})")


def _fmt(x: float) -> str:
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:g}"
