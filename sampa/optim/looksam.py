r"""LookSAM: Towards Efficient and Scalable Sharpness-Aware Minimization (Liu et al., CVPR 2022).

Algorithm (Alg. 1, global form: one projection over all parameters, not per tensor):
    input: radius \rho, period k, scaling \alpha, stabiliser \xi, base optimizer BaseOpt
    g        <- \nabla f(x_t; B_t)                           # every step, updates BN running statistics
    if t mod k == 0:                                         # SAM step (the first of every k steps)
        g_s  <- \nabla f(x_t + \rho g / (||g|| + \xi); B_t)  # same batch, BN running statistics frozen
        g_v  <- g_s - (<g_s, g> / ||g||^2) g                 # component of g_s orthogonal to g, kept
        G    <- g_s
    else:                                                    # reuse step
        G    <- g + \alpha (||g|| / (||g_v|| + \xi)) g_v     # flatness direction of norm \alpha ||g||
    x_{t+1} <- BaseOpt(x_t, G)
Passes per step: 2 forward/backward on SAM steps, 1 otherwise; on average 1 + 1/k sequential gradients.
Memory: g_v (1 x P) between steps.

Defaults: k = 5, \alpha = 0.7 (SAMPa paper, App. B.4), \rho = 0.05 (SAM's CIFAR-10 radius).
t counts the method's updates from 0 over the whole run (``step_count``, checkpointed): the first
update is a SAM step, so g_v always exists on reuse steps.

No official code exists (optimizers.md §2.6). Deliberate choices against the unofficial ports:
cos(theta) and the norms are global (rollovd/kozistr project per tensor); the phase does not restart
every epoch (rollovd uses the batch index); the first SAM step is at t = 0, not t = k (torch-unified);
the projection uses the exact ||g||^2 (see ``tensors.reject``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from sampa.batch import Inputs
from sampa.optim.checks import check_int, check_range
from sampa.optim.contract import GradResult
from sampa.optim.sam import SAM, SAMHparams
from sampa.optim.tensors import TensorList, add, global_norm, reject


@dataclass(frozen=True)
class LookSAMHparams(SAMHparams):
    """k: SAM-step period (>= 1; k = 1 is SAM); alpha: scaling of the reused direction in [0, 1]."""

    k: int = 5
    alpha: float = 0.7

    def check(self) -> None:
        super().check()
        check_int("k", self.k, 1)
        check_range("alpha", self.alpha, 0.0, 1.0)


class LookSAM(SAM):
    """SAM every k-th step; in between, reuse the orthogonal part g_v of the last SAM gradient."""

    name = "looksam"
    display_name = "LookSAM"
    Hparams = LookSAMHparams
    trace_keys = ("sam_step",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.g_v: TensorList | None = None  # orthogonal component from the last SAM step

    def direction(self, inputs: Inputs, targets: Tensor) -> tuple[TensorList, GradResult, dict[str, Any]]:
        clean = self.gradient(inputs, targets, update_bn=True)  # g = grad f(x_t; B_t)
        g = clean.grads
        if self.step_count % self.hp.k == 0 or self.g_v is None:
            g_s = self.sam_gradient(inputs, targets, g).grads  # g_s = grad f(x_t + e; B_t)
            self.g_v = reject(g_s, g)  # g_v = g_s - (<g_s, g>/||g||^2) g
            return g_s, clean, {"sam_step": 1.0}
        scale = self.hp.alpha * global_norm(g) / (global_norm(self.g_v) + self.hp.eps)
        return add(g, self.g_v, alpha=scale), clean, {"sam_step": 0.0}  # G = g + alpha ||g||/||g_v|| g_v

    def method_state(self) -> dict[str, Any]:
        return {"g_v": self.g_v}

    def load_method_state(self, state: dict[str, Any]) -> None:
        self.g_v = self.load_vector(state["g_v"])
