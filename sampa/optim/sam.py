r"""Sharpness-Aware Minimization (Foret et al., ICLR 2021), global-norm form.

Algorithm:
    input: radius \rho, stabiliser \xi, base optimizer BaseOpt
    g       <- \nabla f(x_t; B_t)                 # pass 1, clean, updates BN running statistics
    e       <- \rho g / (||g||_2 + \xi)           # global L2 norm over all parameters
    g_sam   <- \nabla f(x_t + e; B_t)             # pass 2, same batch, BN running statistics frozen
    x_{t+1} <- BaseOpt(x_t, g_sam)                # the step is taken from x_t, not from x_t + e
Passes per step: 2 forward, 2 backward, sequential; temporal cost 2.

\xi = 1e-12 as in davda54/sam and the official SAMPa code (it only matters when ||g|| is ~0, where it
makes e = 0 instead of NaN). Weight decay enters only the base step (PyTorch convention), not the
ascent direction (official JAX SAM puts L2 in the loss; optimizers.md §1.2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from sampa.batch import Inputs
from sampa.optim.checks import check_range
from sampa.optim.contract import GradJob, GradResult, Hyperparameters, Method
from sampa.optim.tensors import TensorList, add, normalized
from sampa.ranges import RHO


@dataclass(frozen=True)
class SAMHparams(Hyperparameters):
    """rho: perturbation radius (paper: 0.05 on CIFAR-10, 0.1 on CIFAR-100); eps: norm stabiliser."""

    rho: float = 0.05
    eps: float = 1e-12

    def check(self) -> None:
        check_range("rho", self.rho, **RHO)  # also --rho's help
        check_range("eps", self.eps, 0.0)


class SAM(Method):
    """SAM. Variants change :meth:`ascent` (the perturbation e computed from a gradient), and where
    needed :meth:`ascent_job` (which gradient feeds it) or the batches given to :meth:`sam_passes`."""

    name = "sam"
    display_name = "SAM"
    Hparams = SAMHparams

    def ascent(self, g: TensorList) -> TensorList:
        """e = rho g / (||g|| + xi)."""
        return normalized(g, self.hp.rho, self.hp.eps)

    def ascent_job(self, inputs: Inputs, targets: Tensor) -> GradJob:
        """The clean pass at x_t whose gradient g feeds :meth:`ascent` (updates BN statistics)."""
        return GradJob(inputs, targets, update_bn=True)

    def sam_passes(
        self, ascent_batch: tuple[Inputs, Tensor], update_batch: tuple[Inputs, Tensor]
    ) -> tuple[GradResult, GradResult]:
        """The two sequential passes: g at x_t on ``ascent_batch``, then the gradient at x_t + e."""
        clean = self.gradients([self.ascent_job(*ascent_batch)])[0]  # g = grad f(x_t; B_t)
        perturbed = self.sam_gradient(*update_batch, clean.grads)  # g_sam = grad f(x_t + e; B_t)
        return clean, perturbed

    def sam_gradient(self, inputs: Inputs, targets: Tensor, g: TensorList) -> GradResult:
        """g_sam = grad f(x_t + e(g); B) with BN running statistics frozen (the second pass alone, for
        variants that decide after the clean pass whether to take it: LookSAM, AE-SAM, vSAM)."""
        x_adv = add(self.current_point(), self.ascent(g))  # x_t + e, e = rho g / ||g||
        return self.gradient(inputs, targets, point=x_adv)

    def direction(self, inputs: Inputs, targets: Tensor) -> tuple[TensorList, GradResult, dict[str, Any]]:
        clean, perturbed = self.sam_passes((inputs, targets), (inputs, targets))  # same batch twice
        return perturbed.grads, clean, {}
