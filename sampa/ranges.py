"""Numeric ranges, written one way in every error message and help text: ``[0, 1]``, ``(0, inf)``.

A leaf module (no torch, no other sampa module), so the run configuration (:mod:`sampa.config`), the
methods' hyperparameter checks (:mod:`sampa.optim.checks`) and the command line share it. An infinite
end is always open: every value is a finite number (inf and nan are errors of their own).
"""

from __future__ import annotations

import math
from typing import Any

#: the ranges of the hyperparameters the command line sets by name (``--rho``, ``--lam``), as a
#: :func:`sampa.config.setting`'s metadata: the methods check them with these (``check_range(..., **RHO)``)
RHO: dict[str, Any] = {"low": 0.0}
SAMPA_LAM: dict[str, Any] = {"low": 0.0, "high": 1.0}


def interval(
    low: float | None = None, high: float | None = None, *, low_open: bool = False, high_open: bool = False
) -> str:
    """``[low, high]`` with ``(``/``)`` at open ends; a missing or infinite end is ``-inf``/``inf``, open."""
    low = -math.inf if low is None else low
    high = math.inf if high is None else high
    lo = "(" if low_open or math.isinf(low) else "["
    hi = ")" if high_open or math.isinf(high) else "]"
    return f"{lo}{number(low)}, {number(high)}{hi}"


def number(x: float) -> str:
    """A bound as written in a range: integers in full, other numbers short (``%g``), ``inf``/``-inf``."""
    if isinstance(x, int):
        return str(x)
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:g}"
