r"""AE-SAM: An Adaptive Policy to Employ Sharpness-Aware Minimization (Jiang et al., ICLR 2023).

Algorithm (our reading of the paper's policy; see "Choices" below):
    input: radius \rho, forgetting rate \delta in (0, 1), threshold endpoints \lambda_1, \lambda_2,
           total updates T, stabiliser \xi, base optimizer BaseOpt
    g        <- \nabla f(x_t; B_t)                         # every step, updates BN running statistics
    s_t      <- ||g||^2                                    # global squared gradient norm
    \mu_t    <- \delta \mu_{t-1} + (1 - \delta) s_t            # EMA mean of s
    \sigma_t^2 <- \delta \sigma_{t-1}^2 + (1 - \delta) (s_t - \mu_t)^2   # EMA variance (fresh \mu_t)
    c_t      <- (t/T) \lambda_1 + (1 - t/T) \lambda_2         # linear threshold schedule
    if s_t >= \mu_t + c_t \sigma_t:                          # sharp region: SAM step
        G    <- \nabla f(x_t + \rho g / (||g|| + \xi); B_t)  # same batch, BN running statistics frozen
    else:                                                  # flat region: ERM step
        G    <- g
    x_{t+1} <- BaseOpt(x_t, G)
Passes per step: 1 forward/backward, plus 1 sequential forward/backward on SAM steps; the average
is 1 + (fraction of SAM steps), recorded per step (``sam_step``) and per epoch.

Defaults: \rho = 0.2, \delta = 0.9 (SAMPa paper, App. B.4); \lambda_1 = -1, \lambda_2 = 1.

Choices (no official code exists and only the paper's abstract was reachable; optimizers.md §2.7):
* \lambda_1 = -1, \lambda_2 = 1 (recalled, UNVERIFIED): c_t goes from +1 to -1, so SAM steps become
  more frequent as training proceeds.
* Initialisation \mu_{-1} = s_0, \sigma_{-1}^2 = 0: the statistics start at the first observation
  (\mu_{-1} = 0 would bias the early decisions towards SAM); so the first update is a SAM step.
* The comparison is ">=", \mu and \sigma^2 are updated every step (SAM or not), \sigma^2 uses the freshly
  updated \mu_t, and t/T count updates: t = ``step_count``, T = epochs x steps_per_epoch from
  ``start_epoch``. A training loop that never calls ``start_epoch`` keeps c_t = \lambda_2.
* On a data-parallel backend g is the all-reduced gradient, so every replica takes the same decision.
The decision needs s_t on the host: one device synchronisation per step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from sampa.batch import Inputs
from sampa.optim.checks import check_range
from sampa.optim.contract import GradResult
from sampa.optim.sam import SAM, SAMHparams
from sampa.optim.tensors import TensorList, global_norm


@dataclass(frozen=True)
class AESAMHparams(SAMHparams):
    """delta: forgetting rate of the gradient-norm statistics in (0, 1); lam1, lam2: threshold
    coefficient at the end and at the start of training."""

    rho: float = 0.2
    delta: float = 0.9
    lam1: float = -1.0
    lam2: float = 1.0

    def check(self) -> None:
        super().check()
        check_range("delta", self.delta, 0.0, 1.0, low_open=True, high_open=True)
        check_range("lam1", self.lam1)
        check_range("lam2", self.lam2)


class AESAM(SAM):
    """SAM only on steps whose squared gradient norm is large relative to its running statistics."""

    name = "aesam"
    display_name = "AE-SAM"
    Hparams = AESAMHparams
    trace_keys = ("sam_step", "grad_norm_sq", "threshold")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.mu: float | None = None  # EMA mean of ||g||^2 (None before the first step)
        self.var = 0.0  # EMA variance of ||g||^2

    def threshold_coefficient(self) -> float:
        """c_t = (t/T) lam1 + (1 - t/T) lam2; T = 0 (start_epoch never called) keeps lam2."""
        total = self.epochs * self.steps_per_epoch
        progress = min(self.step_count / total, 1.0) if total > 0 else 0.0
        return progress * self.hp.lam1 + (1 - progress) * self.hp.lam2

    def update_statistics(self, s: float) -> float:
        """Update mu and sigma^2 with s_t; return the threshold mu_t + c_t sigma_t."""
        delta = self.hp.delta
        self.mu = s if self.mu is None else delta * self.mu + (1 - delta) * s
        self.var = delta * self.var + (1 - delta) * (s - self.mu) ** 2
        return self.mu + self.threshold_coefficient() * math.sqrt(self.var)

    def direction(self, inputs: Inputs, targets: Tensor) -> tuple[TensorList, GradResult, dict[str, Any]]:
        clean = self.gradient(inputs, targets, update_bn=True)  # g = grad f(x_t; B_t)
        s = float(global_norm(clean.grads)) ** 2  # s_t = ||g||^2 (host synchronisation)
        threshold = self.update_statistics(s)
        sam_step = s >= threshold
        stats = {"sam_step": float(sam_step), "grad_norm_sq": s, "threshold": threshold}
        if not sam_step:
            return clean.grads, clean, stats  # ERM step: G = g
        return self.sam_gradient(inputs, targets, clean.grads).grads, clean, stats

    def method_state(self) -> dict[str, Any]:
        return {"mu": self.mu, "var": self.var}

    def load_method_state(self, state: dict[str, Any]) -> None:
        self.mu, self.var = state["mu"], state["var"]
