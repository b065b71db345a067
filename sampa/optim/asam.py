r"""ASAM: adaptive SAM (Kwon et al., ICML 2021), and ASAM+SAMPa (SAMPa paper §5.5, Table 8).

Perturbation rule (written once, :class:`ASAMRule`; g is the gradient the host method perturbs along):
    T       <- |x_t| + \eta  elementwise on every tensor except biases, 1 on biases
    e       <- \rho T^2 g / (||T g|| + \xi)          # global L2 norm of T g
ASAM = SAM with this e (g = \nabla f(x_t; B_t)); ASAM+SAMPa = SAMPa-\lambda with this e applied to
g_t = \nabla f(y_t; B_t). Passes and cost: those of the host (SAM: 2 forward, 2 backward, temporal cost 2;
SAMPa: 2 forward, 2 backward, temporal cost 1). Memory: the host's plus T (+1xP, temporary).

Defaults (SAMPa paper App. B.4): \rho = 0.5 for ASAM, \rho = 1.0 for ASAM+SAMPa ("\rho x 2 for SAMPa"),
\lambda = 0.2; \eta = 0.01 (the official class default; the official CIFAR script passes 0.0).

Choices and deviations (optimizers.md §2.13):
* Which tensors T scales: the official code scales tensors whose name contains "weight" (conv, linear
  and BatchNorm weights) and leaves biases alone. We scale every tensor whose own name (the part
  after the last dot) is not "bias", which agrees on every torch layer and needs no substring match.
* ASAM+SAMPa takes T at x_t, not at y_t: T defines the neighbourhood {x_t + e : ||T^{-1} e|| <= \rho}
  of the point being perturbed, and x~_t = x_t + e perturbs x_t; y_t only supplies the direction.
* \xi = 1e-12 (the official code uses 1e-16); it matters only when ||T g|| is ~0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from sampa.optim.checks import Hyperparameters, check_range
from sampa.optim.sam import SAM, SAMHparams
from sampa.optim.sampa import SAMPa, SAMPaHparams
from sampa.optim.tensors import TensorList, global_norm, normalized, scaled


class ASAMRule:
    """Mixin for a SAM-family host: e = rho T^2 g / ||T g|| with T = |x_t| + eta (biases: 1)."""

    hp: Any
    params: list[Tensor]
    param_names: list[str]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.scaled_indices = [i for i, n in enumerate(self.param_names) if n.rsplit(".", 1)[-1] != "bias"]

    def ascent(self, g: TensorList) -> TensorList:
        """e = rho T^2 g / (||T g|| + xi), T taken at the current point x_t (foreach kernels)."""
        idx = self.scaled_indices
        if not idx:  # biases only: T = 1, SAM's perturbation
            return normalized(g, self.hp.rho, self.hp.eps)
        t = torch._foreach_add(torch._foreach_abs([self.params[i].detach() for i in idx]), self.hp.eta)
        tg = _replaced(g, idx, torch._foreach_mul([g[i] for i in idx], t))  # T g
        e = scaled(tg, self.hp.rho / (global_norm(tg) + self.hp.eps))  # rho T g / ||T g||
        return _replaced(e, idx, torch._foreach_mul([e[i] for i in idx], t))  # rho T^2 g / ||T g||


def _replaced(xs: TensorList, indices: list[int], values: TensorList) -> TensorList:
    """A copy of the list ``xs`` with ``xs[indices[k]] = values[k]``."""
    out = list(xs)
    for i, v in zip(indices, values, strict=True):
        out[i] = v
    return out


@dataclass(frozen=True)
class ASAMRuleHparams(Hyperparameters):
    """eta: T = |x| + eta (0.01); added to the host's hyperparameters, checked after them."""

    eta: float = 0.01

    def check(self) -> None:
        super().check()
        check_range("eta", self.eta, 0.0)


@dataclass(frozen=True)
class ASAMHparams(ASAMRuleHparams, SAMHparams):
    """rho: radius in the T-scaled norm (App. B.4: 0.5); eta: T = |x| + eta (0.01); eps: stabiliser."""

    rho: float = 0.5


@dataclass(frozen=True)
class SAMPaASAMHparams(ASAMRuleHparams, SAMPaHparams):
    """SAMPa-lambda's hyperparameters with ASAM's rule; rho twice ASAM's (App. B.4)."""

    rho: float = 2 * ASAMHparams.rho


class ASAM(ASAMRule, SAM):
    """SAM with ASAM's scale-invariant perturbation."""

    name = "asam"
    display_name = "ASAM"
    Hparams = ASAMHparams


class SAMPaASAM(ASAMRule, SAMPa):
    """SAMPa-lambda with ASAM's perturbation of grad f(y_t)."""

    name = "sampa-asam"
    display_name = "ASAM+SAMPa"
    Hparams = SAMPaASAMHparams
