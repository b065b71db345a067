r"""BiSAM: bilevel SAM with a lower bound of the 0-1 loss as ascent objective (Xie, Latorre,
Antonakopoulos, Pethick, Cevher, ICML 2024), -log variant, and BiSAM+SAMPa (SAMPa paper §5.5, Table 8).

Surrogate (per sample, logits z, label y; written once, :func:`bisam_log_loss`):
    Q(x; B) = mean_i log sum_j exp(\mu \phi(z_ij - z_iy)),   \phi(m) = 1 - log(1 + e^{\gamma - m}),
    \gamma = log(e - 1)   (so \phi(0) = 0: the true class contributes exp(0) = 1)

BiSAM (SAM with the ascent taken on Q):
    q       <- \nabla Q(x_t; B_t)                   # pass 1 at x_t, updates BN statistics
    e       <- \rho q / (||q|| + \xi)
    g_sam   <- \nabla f(x_t + e; B_t)               # pass 2, the training loss f, BN statistics frozen
    x_{t+1} <- BaseOpt(x_t, g_sam)
Passes per step: 2 forward, 2 backward, sequential; temporal cost 2 (as SAM).

BiSAM+SAMPa (SAMPa-\lambda whose perturbation follows \nabla Q at the extrapolated point):
    x~_t    <- x_t + \rho q_t / (||q_t|| + \xi)        # q_t = \nabla Q(y_t; B_t), kept from the last step
    y_{t+1} <- ModelUpdate_{m_t}(x_t, g_t)            # g_t = \nabla f(y_t; B_t) still drives y (SAMPa)
    g~_t    <- \nabla f(x~_t; B_t)                    # worker 1: 1 forward, 1 backward
    g_{t+1}, q_{t+1} <- \nabla f, \nabla Q (y_{t+1}; B_{t+1})   # worker 2: ONE forward, TWO backwards
    G_t     <- (1 - \lambda) g~_t + \lambda g_{t+1};  x_{t+1} <- BaseOpt(x_t, G_t)
Passes per step: 2 forward, 3 backward; temporal cost 1 round of two parallel jobs, but the y-worker's
job is 1F+2B (about 5/3 of a gradient computation with B = 2F), so the ideal step is ~5/3 of SAMPa's.
The first step (a base step with g_0) also computes q_0: 1 forward, 2 backward.

Defaults (SAMPa paper App. B.4): -log variant, \mu = 1; \rho = SAM's 0.05 for BiSAM and 0.1 for
BiSAM+SAMPa; \lambda = 0.2. The tanh variant is not implemented.

Choices and deviations (optimizers.md §2.16):
* How the authors combined BiSAM with SAMPa is not published. Both \nabla f(y) (for \lambda and y_{t+2})
  and \nabla Q(y) (for the next perturbation) are needed at y_{t+1}; we take both from one forward with
  two backwards (``GradJob.losses``), and count both backwards.
* The reported training loss is the training loss f (smoothed cross-entropy) from the same forward as
  \nabla Q; the official code logs Q. Like the official code we drop the 1/\mu factor of the paper's Q
  (it cancels in the normalisation). The margin is vectorised (the official code loops over samples).
* \phi is evaluated as 1 + logsigmoid(m - \gamma), which equals the official
  1 + softplus(m - \gamma, beta=-1) without its linear cut-off for very negative margins.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from sampa.batch import Inputs
from sampa.optim.checks import Hyperparameters, check_range
from sampa.optim.contract import GradJob, GradResult
from sampa.optim.sam import SAM, SAMHparams
from sampa.optim.sampa import Batch, SAMPa, SAMPaHparams
from sampa.optim.tensors import TensorList, normalized

GAMMA = math.log(math.e - 1)  # phi(0) = 0


def bisam_log_loss(logits: Tensor, targets: Tensor, mu: float = 1.0) -> Tensor:
    """Per-sample log sum_j exp(mu phi(z_j - z_y)), phi(m) = 1 - log(1 + e^{gamma - m}) (-log variant)."""
    z = logits.to(torch.promote_types(logits.dtype, torch.float32))  # at least float32 (as the loss)
    margins = z - z.gather(1, targets[:, None])  # z_j - z_y; 0 for the true class
    phi = 1 + F.logsigmoid(margins - GAMMA)
    return torch.logsumexp(mu * phi, dim=1)


class BiSAMRule:
    """Mixin: the host perturbs along the gradient of BiSAM's surrogate Q (``self.surrogate``)."""

    hp: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.surrogate = partial(bisam_log_loss, mu=self.hp.mu)


@dataclass(frozen=True)
class BiSAMRuleHparams(Hyperparameters):
    """mu: the surrogate's temperature (App. B.4: 1); checked after the host's hyperparameters."""

    mu: float = 1.0

    def check(self) -> None:
        super().check()
        check_range("mu", self.mu, 0.0, low_open=True)


@dataclass(frozen=True)
class BiSAMHparams(BiSAMRuleHparams, SAMHparams):
    """rho: radius (SAM's 0.05); mu: the surrogate's temperature (App. B.4: 1); eps: stabiliser."""


@dataclass(frozen=True)
class SAMPaBiSAMHparams(BiSAMRuleHparams, SAMPaHparams):
    """SAMPa-lambda's hyperparameters with BiSAM's ascent; rho twice BiSAM's (App. B.4)."""

    rho: float = 2 * BiSAMHparams.rho


class BiSAM(BiSAMRule, SAM):
    """SAM whose ascent gradient is that of the surrogate Q."""

    name = "bisam"
    display_name = "BiSAM"
    Hparams = BiSAMHparams

    def ascent_job(self, inputs: Inputs, targets: Tensor) -> GradJob:
        """q = grad Q(x_t; B_t); the pass still reports the training loss f."""
        return GradJob(inputs, targets, update_bn=True, losses=(self.surrogate,))


class SAMPaBiSAM(BiSAMRule, SAMPa):
    """SAMPa-lambda whose perturbation follows grad Q(y_t) instead of grad f(y_t)."""

    name = "sampa-bisam"
    display_name = "BiSAM+SAMPa"
    Hparams = SAMPaBiSAMHparams

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.q_y: TensorList | None = None  # q_t = grad Q(y_t; B_t)

    def extrapolation_job(self, inputs: Inputs, targets: Tensor, point: TensorList | None) -> GradJob:
        """grad f and grad Q at y_{t+1} from one forward (two backwards)."""
        job = super().extrapolation_job(inputs, targets, point)
        return dataclasses.replace(job, losses=(self.loss_fn, self.surrogate))

    def remember(self, report: GradResult, extrapolated: Sequence[GradResult], batch: Batch) -> None:
        super().remember(report, extrapolated, batch)
        self.q_y = report.extra_grads[0]

    def ascent(self, g_y: TensorList) -> TensorList:
        """e = rho q_t / (||q_t|| + xi); g_t = grad f(y_t) (the argument) only drives y_{t+1}."""
        if self.q_y is None:
            raise RuntimeError("BiSAM+SAMPa perturbs along grad Q(y_t), which the first step computes")
        return normalized(self.q_y, self.hp.rho, self.hp.eps)

    def method_state(self) -> dict[str, Any]:
        return {**super().method_state(), "q_y": self.q_y}

    def load_method_state(self, state: dict[str, Any]) -> None:
        super().load_method_state(state)
        self.q_y = self.load_vector(state["q_y"])
