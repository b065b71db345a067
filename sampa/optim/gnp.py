r"""Gradient norm penalization (Zhao, Zhang, Hu, ICML 2022), the "Penalizing" baseline of SAMPa App. B.6.

The penalised loss f + \lambda ||\nabla f|| is differentiated by a finite difference of step r, which
interpolates the clean and the perturbed gradient with \alpha = \lambda / r:

Algorithm:
    input: step r (``rho``), interpolation \alpha in [0, 1], stabiliser \xi, base optimizer BaseOpt
    g       <- \nabla f(x_t; B_t)                       # pass 1, clean, updates BN statistics
    e       <- r g / (||g|| + \xi)                      # global L2 norm (SAM's ascent)
    g_p     <- \nabla f(x_t + e; B_t)                   # pass 2, same batch, BN statistics frozen
    G       <- (1 - \alpha) g + \alpha g_p              # \alpha = 1 is SAM, \alpha = 0 is SGD
    x_{t+1} <- BaseOpt(x_t, G)
Passes per step: 2 forward, 2 backward, sequential; temporal cost 2. Memory: SAM's plus g (+1xP).

SAMPa App. B.6 reads it as x_{t+1} = (1 - \lambda) SAM(x_t) + \lambda SGD(x_t) and runs it "with the same
hyperparameters as SAMPa-0.2"; we take that literally: r = \rho of SAMPa-0.2 (0.1 on CIFAR-10) and
\alpha = 1 - \lambda = 0.8. Both values are also the official recipes' (r = 0.1, \alpha = 0.8 for
ResNet/WRN on CIFAR, optimizers.md §2.5). The difference to SAMPa-0.2 is then only that both gradients
come from one batch at x_t, which is the comparison App. B.6 makes.

Deviations from the official (JAX) code, on purpose:
* The interpolation uses the raw clean gradient g, as in the GNP paper and in SAMPa's reading of it.
  The official config default (``gnp.norm_perturbations=True``) interpolates the *normalised* g/||g||;
  ``normalized_clean=True`` selects that variant.
* Weight decay enters only the base step (PyTorch convention); the official code has L2 in the loss,
  so it also enters both gradients. No gradient clipping (the official code clips by global norm).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from sampa.batch import Inputs
from sampa.optim.checks import check_range
from sampa.optim.contract import GradResult, HyperparameterError
from sampa.optim.sam import SAM, SAMHparams
from sampa.optim.tensors import TensorList, combine, normalized


@dataclass(frozen=True)
class GNPHparams(SAMHparams):
    """rho: the finite-difference step r (0.1: SAMPa-0.2's rho); alpha: weight of the perturbed gradient
    (0.8 = 1 - lambda of SAMPa-0.2); normalized_clean: interpolate g/||g|| (official default) not g."""

    rho: float = 0.1
    alpha: float = 0.8
    normalized_clean: bool = False

    def check(self) -> None:
        super().check()
        check_range("alpha", self.alpha, 0.0, 1.0)
        if not isinstance(self.normalized_clean, bool):
            raise HyperparameterError(
                f"normalized_clean must be true or false (got {self.normalized_clean!r})"
            )


class GNP(SAM):
    """Interpolation of the clean and the SAM-perturbed gradient on one batch."""

    name = "gnp"
    display_name = "Penalizing"
    Hparams = GNPHparams

    def direction(self, inputs: Inputs, targets: Tensor) -> tuple[TensorList, GradResult, dict[str, Any]]:
        clean, perturbed = self.sam_passes((inputs, targets), (inputs, targets))  # g, g_p on B_t
        g = normalized(clean.grads, 1.0, self.hp.eps) if self.hp.normalized_clean else clean.grads
        alpha = self.hp.alpha
        return combine(g, perturbed.grads, 1 - alpha, alpha), clean, {}  # G = (1-a) g + a g_p
