"""Method hyperparameters: the base record, its one-line errors and range checks (raised before any
training starts)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from sampa.ranges import interval


class HyperparameterError(ValueError):
    """A method hyperparameter is invalid (one-line message naming the value and the valid range)."""


@dataclass(frozen=True)
class Hyperparameters:
    """Base for a method's hyperparameters; subclasses add fields and ``check`` ranges."""

    def check(self) -> None:
        """Raise :class:`HyperparameterError` for an invalid value."""

    def __post_init__(self) -> None:
        self.check()


def make_hparams(
    hparams_class: type[Hyperparameters], method: str, values: dict[str, Any]
) -> Hyperparameters:
    """``hparams_class(**values)`` for method ``method``, with one-line errors for unknown names."""
    valid = [f.name for f in dataclasses.fields(hparams_class)]
    unknown = sorted(set(values) - set(valid))
    if unknown:
        choices = ", ".join(valid) if valid else "(none)"
        raise HyperparameterError(
            f"unknown hyperparameter {unknown[0]!r} for method {method!r}; valid: {choices}"
        )
    return hparams_class(**values)


def check_range(
    name: str,
    value: float,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Raise ``HyperparameterError('name must be in [low, high] (got value)')`` when out of range (the
    range as :func:`sampa.ranges.interval` writes it); a value that is not a finite number (a string, a
    bool, nan, inf) is an error too."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise HyperparameterError(f"{name} must be a finite number (got {value!r})")
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        span = interval(low, high, low_open=low_open, high_open=high_open)
        raise HyperparameterError(f"{name} must be in {span} (got {value!r})")


def check_int(name: str, value: int, low: int) -> None:
    """Raise unless ``value`` is an integer >= low."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise HyperparameterError(f"{name} must be an integer >= {low} (got {value!r})")
