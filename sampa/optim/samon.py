r"""SAM-ON: SAM that perturbs only the normalisation layers (Mueller et al., NeurIPS 2023), and
SAM-ON+SAMPa (SAMPa paper §5.5, Table 8).

Perturbation rule (written once, :class:`SAMONRule`; N = the affine parameters of normalisation layers):
    e_N     <- \rho g_N / (||g_N|| + \xi)           # norm over the normalisation tensors only
    e_i     <- 0 for every other tensor
SAM-ON = SAM with this e (g = \nabla f(x_t; B_t)); its first backward computes only g_N (the weight
gradients are not needed). SAM-ON+SAMPa = SAMPa-\lambda with this e applied to g_t = \nabla f(y_t; B_t)
(its extrapolated pass needs the full gradient anyway, for the \lambda term and y_{t+2}). In both, the
perturbed pass is a full forward/backward and every parameter is updated.
Passes and cost: the host's (SAM: 2 forward, 2 backward, temporal cost 2; SAMPa: temporal cost 1).

Defaults (SAMPa paper App. B.4): \rho = 0.5 for SAM-ON, 1.0 for SAM-ON+SAMPa, \lambda = 0.2. This is the
plain (non-adaptive) SAM-ON, the official code's ``SAM_BN`` with ``only_bn`` (optimizers.md §2.14);
ASAM-ON (elementwise T, the script's default minimizer) is not implemented.

Deviations from the official code, on purpose:
* Normalisation parameters are selected by module type (``_NormBase``, i.e. BatchNorm/InstanceNorm,
  and ``LayerNorm``, ``GroupNorm``, ``RMSNorm``), not by the substrings "norm"/"bn" in the parameter
  name, which silently misses e.g. a BatchNorm inside ``nn.Sequential`` (``features.1.weight``).
* The first backward is restricted to the normalisation parameters (``GradJob.wrt``); the official code
  has this saving only as commented-out code. The result is the same perturbation.
* BatchNorm running statistics follow the project policy (clean pass only); the official ``train.py``
  updates them in both passes. \xi = 1e-12 (official: 1e-16).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from sampa.batch import Inputs
from sampa.optim.contract import GradJob
from sampa.optim.sam import SAM, SAMHparams
from sampa.optim.sampa import SAMPa, SAMPaHparams
from sampa.optim.tensors import TensorList, normalized

#: layers whose affine parameters SAM-ON perturbs
NORM_LAYERS: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
)


def normalization_indices(model: nn.Module, params: list[Tensor]) -> list[int]:
    """Indices in ``params`` of the parameters owned by normalisation layers (selected by module type)."""
    owned = {
        id(p) for m in model.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters(recurse=False)
    }
    return [i for i, p in enumerate(params) if id(p) in owned]


class SAMONRule:
    """Mixin for a SAM-family host: perturb only the normalisation parameters, e_N = rho g_N / ||g_N||."""

    hp: Any
    model: nn.Module
    params: list[Tensor]
    name: str

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.norm_indices = normalization_indices(self.model, self.params)
        if not self.norm_indices:
            raise ValueError(
                f"method {self.name!r} perturbs only normalisation layers, but the model has no trainable "
                f"parameter in one ({', '.join(t.__name__ for t in NORM_LAYERS)})"
            )

    def ascent(self, g: TensorList) -> TensorList:
        """e_N = rho g_N / (||g_N|| + xi) on the normalisation tensors, 0 elsewhere."""
        e_norm = normalized([g[i] for i in self.norm_indices], self.hp.rho, self.hp.eps)
        e = list(torch._foreach_mul(list(g), 0.0))
        torch._foreach_zero_(e)  # exact zeros (also where g is not finite), in two multi-tensor kernels
        for i, e_i in zip(self.norm_indices, e_norm, strict=True):
            e[i] = e_i
        return e


@dataclass(frozen=True)
class SAMONHparams(SAMHparams):
    """rho: radius over the normalisation parameters (App. B.4: 0.5); eps: stabiliser."""

    rho: float = 0.5


@dataclass(frozen=True)
class SAMPaSAMONHparams(SAMPaHparams):
    """SAMPa-lambda's hyperparameters with SAM-ON's rule; rho twice SAM-ON's (App. B.4)."""

    rho: float = 2 * SAMONHparams.rho


class SAMON(SAMONRule, SAM):
    """SAM perturbing only the normalisation layers."""

    name = "samon"
    display_name = "SAM-ON"
    Hparams = SAMONHparams

    def ascent_job(self, inputs: Inputs, targets: Tensor) -> GradJob:
        """The clean pass differentiates only the normalisation parameters (all the ascent uses)."""
        return GradJob(inputs, targets, update_bn=True, wrt=self.norm_indices)


class SAMPaSAMON(SAMONRule, SAMPa):
    """SAMPa-lambda perturbing only the normalisation layers, along grad f(y_t)."""

    name = "sampa-samon"
    display_name = "SAM-ON+SAMPa"
    Hparams = SAMPaSAMONHparams
