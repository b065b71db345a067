"""Vector arithmetic on parameter-aligned lists of tensors (foreach kernels, no host synchronisation).

Every method treats "all trainable parameters" as one vector; norms are the **global** L2 norm over
the concatenation of all tensors (not per tensor). When every operand is a
:class:`~sampa.optim.flat.FlatVector` of one layout (flat buffers), each helper runs on the buffers
(one kernel) and returns a FlatVector; otherwise it works per tensor and returns a list.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from sampa.optim.flat import FlatVector, shared_layout

#: a parameter-aligned vector: a list of tensors, or a FlatVector (flat buffers)
TensorList = list[Tensor] | FlatVector


def global_norm(xs: Sequence[Tensor]) -> Tensor:
    """||x||_2 over the concatenation of all tensors (0-d tensor, stays on the device)."""
    if isinstance(xs, FlatVector):
        return torch.linalg.vector_norm(xs.flat, 2)
    norms = torch._foreach_norm(list(xs), 2)
    return torch.linalg.vector_norm(torch.stack(norms), 2)


def dot(xs: Sequence[Tensor], ys: Sequence[Tensor]) -> Tensor:
    """<x, y> over the concatenation of all tensors."""
    if shared_layout(xs, ys):
        return torch.dot(xs.flat, ys.flat)
    return torch.stack([torch.sum(x * y) for x, y in zip(xs, ys, strict=True)]).sum()


def scaled(xs: Sequence[Tensor], scale: Tensor | float) -> TensorList:
    """scale * x (new tensors)."""
    if isinstance(xs, FlatVector):
        return xs.like(xs.flat * scale)
    return torch._foreach_mul(list(xs), scale)


def add(xs: Sequence[Tensor], ys: Sequence[Tensor], alpha: Tensor | float = 1.0) -> TensorList:
    """x + alpha * y (new tensors)."""
    if shared_layout(xs, ys):
        return xs.like(
            xs.flat + ys.flat * alpha if isinstance(alpha, Tensor) else xs.flat.add(ys.flat, alpha=alpha)
        )
    if isinstance(alpha, Tensor):
        return torch._foreach_add(list(xs), torch._foreach_mul(list(ys), alpha))
    return torch._foreach_add(list(xs), list(ys), alpha=alpha)


def combine(xs: Sequence[Tensor], ys: Sequence[Tensor], a: float, b: float) -> TensorList:
    """a * x + b * y (new tensors)."""
    if shared_layout(xs, ys):
        return xs.like((xs.flat * a).add_(ys.flat, alpha=b))
    return torch._foreach_add(torch._foreach_mul(list(xs), a), list(ys), alpha=b)


def normalized(xs: Sequence[Tensor], radius: float, eps: float) -> TensorList:
    """radius * x / (||x|| + eps) with the global norm; eps keeps x = 0 finite (gives 0)."""
    scale = radius / (global_norm(xs) + eps)
    return scaled(xs, scale)


def clone(xs: Sequence[Tensor]) -> TensorList:
    """Detached copies."""
    if isinstance(xs, FlatVector):
        return xs.like(xs.flat.detach().clone())
    return [x.detach().clone() for x in xs]


def cosine(xs: Sequence[Tensor], ys: Sequence[Tensor], eps: float = 1e-12) -> Tensor:
    """Cosine similarity of the two concatenated vectors."""
    return dot(xs, ys) / (global_norm(xs) * global_norm(ys) + eps)


def distance(xs: Sequence[Tensor], ys: Sequence[Tensor]) -> Tensor:
    """||x - y||_2 over the concatenation."""
    if shared_layout(xs, ys):
        return torch.linalg.vector_norm(xs.flat - ys.flat, 2)
    return global_norm(torch._foreach_sub(list(xs), list(ys)))


def reject(xs: Sequence[Tensor], ys: Sequence[Tensor]) -> TensorList:
    """x - (<x, y> / ||y||^2) y: the part of x orthogonal to y (x itself where y = 0).

    The projection is exact (no stabiliser in ||y||^2): a stabiliser would leave a residual along y.
    """
    y_sq = dot(ys, ys)
    coef = torch.where(y_sq > 0, dot(xs, ys) / torch.where(y_sq > 0, y_sq, 1.0), 0.0)
    return add(xs, ys, alpha=-coef)


def weighted_sum(vectors: Sequence[Sequence[Tensor]], weights: Sequence[float]) -> TensorList:
    """sum_j w_j v_j over parameter-aligned vectors (new tensors)."""
    if shared_layout(*vectors):
        flat = vectors[0].flat * weights[0]
        for v, w in zip(vectors[1:], weights[1:], strict=True):
            flat.add_(v.flat, alpha=w)
        return vectors[0].like(flat)
    out = scaled(vectors[0], weights[0])
    for v, w in zip(vectors[1:], weights[1:], strict=True):
        torch._foreach_add_(out, list(v), alpha=w)
    return out
