r"""The naive one-gradient attempts of the SAMPa paper, Section 2.2 (they fail on f(x) = ||x||^2).

RandSAM (random perturbation instead of the worst case):
    e_t     <- \rho n / ||n||,  n ~ N(0, I) over all parameters (one isotropic Gaussian, global norm)
    x_{t+1} <- BaseOpt(x_t, \nabla f(x_t + e_t; B_t))

OptSAM (the previous perturbed gradient as ascent direction, in the spirit of optimistic methods):
    e_t     <- \rho g~_{t-1} / (||g~_{t-1}|| + \xi)     (e_0 = 0)
    g~_t    <- \nabla f(x_t + e_t; B_t)
    x_{t+1} <- BaseOpt(x_t, g~_t)

Passes per step: 1 forward, 1 backward; temporal cost 1. Their single pass is at a perturbed point
and is also the pass that updates BatchNorm running statistics (they have no other).
The Gaussian is drawn on the method's CPU generator (seeded, checkpointed), then moved to the device.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from sampa.batch import Inputs
from sampa.optim.contract import GradResult, Method
from sampa.optim.sam import SAMHparams
from sampa.optim.tensors import TensorList, add, clone, normalized


class RandSAM(Method):
    """SAM with a random direction of length rho."""

    name = "randsam"
    display_name = "RandSAM"
    Hparams = SAMHparams

    def direction(self, inputs: Inputs, targets: Tensor) -> tuple[TensorList, GradResult, dict[str, Any]]:
        noise = [torch.randn(p.shape, generator=self.rng, dtype=p.dtype).to(p.device) for p in self.params]
        e = normalized(noise, self.hp.rho, self.hp.eps)  # e_t = rho n / ||n||
        perturbed = self.gradient(inputs, targets, point=add(self.current_point(), e), update_bn=True)
        return perturbed.grads, perturbed, {}


class OptSAM(Method):
    """SAM whose ascent direction is the previous step's perturbed gradient."""

    name = "optsam"
    display_name = "OptSAM"
    Hparams = SAMHparams

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.g_prev: TensorList | None = None  # g~_{t-1}

    def direction(self, inputs: Inputs, targets: Tensor) -> tuple[TensorList, GradResult, dict[str, Any]]:
        x = self.current_point()
        point = x if self.g_prev is None else add(x, normalized(self.g_prev, self.hp.rho, self.hp.eps))
        perturbed = self.gradient(inputs, targets, point=point, update_bn=True)  # g~_t
        self.g_prev = clone(perturbed.grads)
        return perturbed.grads, perturbed, {}

    def method_state(self) -> dict[str, Any]:
        return {"g_prev": self.g_prev}

    def load_method_state(self, state: dict[str, Any]) -> None:
        self.g_prev = self.load_vector(state["g_prev"])
