"""Functions that torch.compile never traces: ``torch.compiler.disable``, applied on first use.

``torch.compiler.disable`` imports ``torch._dynamo`` (about 1.4 s of CPU). As a decorator at import time
it made every ``import sampa.optim`` pay that, including the workflow's plan, which only needs the method
registry. :func:`never_compiled` creates the disabled function when it is first needed: on its first
call, or for all of them at once by :func:`prepare_for_compile`, which the compiled fast path calls
before ``torch.compile`` (``sampa.backends.fastpath``), so a traced step only ever meets the disabled
function, exactly as with the decorator.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])
_PREPARERS: list[Callable[[], None]] = []


def never_compiled(fn: F) -> F:
    """``fn`` wrapped so that it always runs eagerly (``torch.compiler.disable``, made on first use)."""
    disabled: Callable[..., Any] | None = None

    def prepare() -> None:
        nonlocal disabled
        if disabled is None:
            disabled = torch.compiler.disable(fn)

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        prepare()
        return disabled(*args, **kwargs)

    _PREPARERS.append(prepare)
    return call  # type: ignore[return-value]


def prepare_for_compile() -> None:
    """Create every disabled function now (before ``torch.compile`` traces code that calls them)."""
    for prepare in _PREPARERS:
        prepare()
