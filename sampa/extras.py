"""Optional dependencies (``pip install -e '.[vision]'`` / ``'.[nlp]'``), imported only where needed.

Importing :mod:`sampa` never needs an extra; code that does calls :func:`require` first, which stops
with one line naming the extra to install.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

#: extra -> the modules it provides (pyproject.toml ``[project.optional-dependencies]``)
EXTRAS: dict[str, tuple[str, ...]] = {
    "vision": ("timm", "PIL"),
    "nlp": ("transformers", "pyarrow"),
}


class MissingExtraError(RuntimeError):
    """An optional dependency is not installed (message: one line)."""

    plain_message = True  # a launcher reports it by its message (sampa.rundir.one_line)


def require(extra: str, module: str) -> ModuleType:
    """Import ``module`` of optional extra ``extra``, or raise :class:`MissingExtraError`."""
    if extra not in EXTRAS or module not in EXTRAS[extra]:
        valid = ", ".join(f"{e}: {'/'.join(m)}" for e, m in EXTRAS.items())
        raise ValueError(f"unknown extra/module {extra!r}/{module!r}; valid: {valid}")
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(f"needs the {extra} extra: pip install -e '.[{extra}]'") from None


def available(extra: str) -> bool:
    """Whether every module of ``extra`` can be imported."""
    try:
        return all(importlib.util.find_spec(m) is not None for m in EXTRAS[extra])
    except ValueError:  # a module set to None in sys.modules (blocked)
        return False
