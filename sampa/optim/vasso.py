r"""VaSSO: variance-suppressed sharpness-aware optimization (Li & Giannakis, NeurIPS 2023), and
VaSSO+SAMPa (SAMPa paper §5.5, Table 8).

Perturbation rule (written once, :class:`VaSSORule`; the state d persists across steps, checkpointed):
    d_t     <- (1 - \theta) d_{t-1} + \theta g      (d_0 = the first g)
    e       <- \rho d_t / (||d_t|| + \xi)           # global L2 norm
VaSSO = SAM with this e (g = \nabla f(x_t; B_t)); VaSSO+SAMPa = SAMPa-\lambda with this e, d being an
EMA of g_t = \nabla f(y_t; B_t) (SAMPa's first step, a plain base step, does not touch d).
\theta = 1 is the host itself (SAM, SAMPa). Passes and cost: the host's (SAM: 2 forward, 2 backward,
temporal cost 2; SAMPa: temporal cost 1). Memory: the host's plus d (+1xP, persistent).

Defaults (SAMPa paper App. B.4): \theta = 0.4; \rho = SAM's 0.05 for VaSSO ("hyperparameters mostly
consistent with Table 1") and twice that, 0.1, for VaSSO+SAMPa; \lambda = 0.2.
\theta weights the new gradient, as in the official code (optimizers.md §2.15).

Deviations from the official code: \xi = 1e-12 (official 1e-7), only relevant when ||d|| is ~0; the
official code keeps d per tensor in the optimizer state, here it is one list in the method's state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from sampa.optim.checks import Hyperparameters, check_range
from sampa.optim.sam import SAM, SAMHparams
from sampa.optim.sampa import SAMPa, SAMPaHparams
from sampa.optim.tensors import TensorList, clone, combine, normalized


class VaSSORule:
    """Mixin for a SAM-family host: perturb along an EMA d of the gradients it is given."""

    hp: Any
    params: list[Tensor]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.d: TensorList | None = None  # d_{t-1}

    def ascent(self, g: TensorList) -> TensorList:
        """d_t = (1 - theta) d_{t-1} + theta g, then e = rho d_t / (||d_t|| + xi)."""
        theta = self.hp.theta
        self.d = clone(g) if self.d is None else combine(self.d, g, 1 - theta, theta)
        return normalized(self.d, self.hp.rho, self.hp.eps)

    def method_state(self) -> dict[str, Any]:
        return {**super().method_state(), "vasso_d": self.d}

    def load_method_state(self, state: dict[str, Any]) -> None:
        super().load_method_state(state)
        self.d = self.load_vector(state["vasso_d"])


@dataclass(frozen=True)
class VaSSORuleHparams(Hyperparameters):
    """theta: EMA weight of the new gradient in (0, 1] (App. B.4: 0.4); checked after the host's."""

    theta: float = 0.4

    def check(self) -> None:
        super().check()
        check_range("theta", self.theta, 0.0, 1.0, low_open=True)


@dataclass(frozen=True)
class VaSSOHparams(VaSSORuleHparams, SAMHparams):
    """rho: radius (SAM's 0.05); theta: EMA weight of the new gradient in (0, 1] (App. B.4: 0.4)."""


@dataclass(frozen=True)
class SAMPaVaSSOHparams(VaSSORuleHparams, SAMPaHparams):
    """SAMPa-lambda's hyperparameters with VaSSO's rule; rho twice VaSSO's (App. B.4)."""

    rho: float = 2 * VaSSOHparams.rho


class VaSSO(VaSSORule, SAM):
    """SAM perturbing along an EMA of its ascent gradients."""

    name = "vasso"
    display_name = "VaSSO"
    Hparams = VaSSOHparams


class SAMPaVaSSO(VaSSORule, SAMPa):
    """SAMPa-lambda perturbing along an EMA of grad f(y_t)."""

    name = "sampa-vasso"
    display_name = "VaSSO+SAMPa"
    Hparams = SAMPaVaSSOHparams
