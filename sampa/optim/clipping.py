r"""Gradient clipping by global norm, on a list of tensors (a method's update direction).

``clip_by_global_norm(vectors, max_norm)`` scales every tensor by ``min(1, max_norm / (||v|| + 1e-6))``
where ``||v||`` is the Euclidean norm of all of them concatenated: the same rule and constant as
``torch.nn.utils.clip_grad_norm_``, without reading the norm on the host (no synchronisation). Flat
vectors (``sampa.optim.flat``) stay flat.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from sampa.optim.tensors import TensorList, global_norm, scaled

EPS = 1e-6  # torch.nn.utils.clip_grad_norm_'s constant


def clip_coefficient(vectors: Sequence[Tensor], max_norm: float) -> tuple[Tensor, Tensor]:
    """(``min(1, max_norm / (||v|| + 1e-6))``, ``||v||``) as 0-d device tensors; ``max_norm`` must be > 0."""
    if isinstance(max_norm, bool) or not isinstance(max_norm, int | float) or not max_norm > 0:
        raise ValueError(f"max_norm must be a number > 0 (the global norm to clip at), got {max_norm!r}")
    if len(vectors) == 0:
        raise ValueError("clipping needs at least one tensor, got an empty list")
    norm = global_norm([v.detach() for v in vectors] if isinstance(vectors, list) else vectors)
    return torch.clamp(max_norm / (norm + EPS), max=1.0), norm


def clip_by_global_norm(vectors: Sequence[Tensor], max_norm: float) -> tuple[TensorList, Tensor]:
    """(``vectors`` scaled so that their global norm is at most ``max_norm``, the norm before clipping).

    Returns new tensors; the inputs are not modified.
    """
    coef, norm = clip_coefficient(vectors, max_norm)
    return scaled(vectors, coef), norm


def clip_by_global_norm_(vectors: Sequence[Tensor], max_norm: float) -> Tensor:
    """In-place :func:`clip_by_global_norm` of a list of tensors; returns the norm before clipping."""
    coef, norm = clip_coefficient(vectors, max_norm)
    torch._foreach_mul_(list(vectors), coef)
    return norm
