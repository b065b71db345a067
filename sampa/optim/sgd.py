r"""Plain base-optimizer step (the paper's SGD baseline; with AdamW as base it is plain AdamW).

Algorithm:
    g       <- \nabla f(x_t; B_t)          # one pass, updates BN running statistics
    x_{t+1} <- BaseOpt(x_t, g)
Passes per step: 1 forward, 1 backward; temporal cost 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from sampa.batch import Inputs
from sampa.optim.contract import GradResult, Hyperparameters, Method
from sampa.optim.tensors import TensorList


@dataclass(frozen=True)
class SGDHparams(Hyperparameters):
    """No hyperparameters beyond the base optimizer's."""


class SGD(Method):
    """The base optimizer alone."""

    name = "sgd"
    display_name = "SGD"
    Hparams = SGDHparams

    def direction(self, inputs: Inputs, targets: Tensor) -> tuple[TensorList, GradResult, dict[str, Any]]:
        clean = self.gradient(inputs, targets, update_bn=True)  # g = grad f(x_t; B_t)
        return clean.grads, clean, {}
