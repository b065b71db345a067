r"""Gradient clipping by global norm, on a list of tensors (a method's update direction).

``clip_by_global_norm(vectors, max_norm)`` scales every tensor by ``min(1, max_norm / (||v|| + 1e-6))``
where ``||v||`` is the Euclidean norm of all of them concatenated: the same rule and constant as
``torch.nn.utils.clip_grad_norm_``, without reading the norm on the host (no synchronisation).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

EPS = 1e-6  # torch.nn.utils.clip_grad_norm_'s constant


def global_norm(vectors: Sequence[Tensor]) -> Tensor:
    """Euclidean norm of the concatenation of ``vectors`` (a 0-d float32-or-wider tensor)."""
    if not vectors:
        raise ValueError("global_norm needs at least one tensor, got an empty list")
    norms = torch._foreach_norm([v.detach() for v in vectors])
    return torch.linalg.vector_norm(torch.stack([n.float() for n in norms]))


def clip_by_global_norm(vectors: Sequence[Tensor], max_norm: float) -> tuple[list[Tensor], Tensor]:
    """(``vectors`` scaled so that their global norm is at most ``max_norm``, the norm before clipping).

    Returns new tensors; the inputs are not modified. ``max_norm`` must be > 0.
    """
    coef, norm = _clip_coefficient(vectors, max_norm)
    return [v * coef.to(v.dtype) for v in vectors], norm


def clip_by_global_norm_(vectors: Sequence[Tensor], max_norm: float) -> Tensor:
    """In-place :func:`clip_by_global_norm`; returns the norm before clipping."""
    coef, norm = _clip_coefficient(vectors, max_norm)
    for dtype in {v.dtype for v in vectors}:
        torch._foreach_mul_([v for v in vectors if v.dtype == dtype], coef.to(dtype))
    return norm


def _clip_coefficient(vectors: Sequence[Tensor], max_norm: float) -> tuple[Tensor, Tensor]:
    if isinstance(max_norm, bool) or not isinstance(max_norm, int | float) or not max_norm > 0:
        raise ValueError(f"max_norm must be a number > 0 (the global norm to clip at), got {max_norm!r}")
    norm = global_norm(vectors)
    return torch.clamp(max_norm / (norm + EPS), max=1.0), norm
