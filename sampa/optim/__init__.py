"""Optimizer methods behind one contract (see :mod:`sampa.optim.contract`).

>>> base = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
>>> method = build_method("sampa", model, loss_fn, base, rho=0.1, lam=0.2)
>>> model.train()
>>> record = method.step(inputs, targets)  # one complete update; inputs on the model's device

``loss_fn(logits, targets)`` returns per-sample losses (``reduction="none"``). Hyperparameters are keyword
arguments (``METHODS[name].Hparams`` lists them with their defaults); a wrong name or value is a one-line
``HyperparameterError``. Schedule the learning rate on ``base`` as usual; checkpoint with
``method.state_dict()`` beside ``model.state_dict()``. README "Use it in your own training loop" covers
frozen parameters, parameter groups, gradient clipping (``method.clip_norm``), mixed precision
(``method.autocast``) and epoch-dependent methods (``method.start_epoch``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sampa.optim.aesam import AESAM
from sampa.optim.asam import ASAM, SAMPaASAM
from sampa.optim.bisam import BiSAM, SAMPaBiSAM
from sampa.optim.checks import make_hparams
from sampa.optim.contract import (
    Executor,
    GradJob,
    GradResult,
    HyperparameterError,
    Hyperparameters,
    LossFn,
    Method,
    SequentialExecutor,
    StepRecord,
)
from sampa.optim.esam import ESAM
from sampa.optim.gnp import GNP
from sampa.optim.looksam import LookSAM
from sampa.optim.msam import MSAM, MSAMPa
from sampa.optim.naive import OptSAM, RandSAM
from sampa.optim.sam import SAM
from sampa.optim.samdb import SAMdb
from sampa.optim.samon import SAMON, SAMPaSAMON
from sampa.optim.sampa import SAMPa
from sampa.optim.sgd import SGD
from sampa.optim.trajectory import MESA, SAF
from sampa.optim.vasso import SAMPaVaSSO, VaSSO
from sampa.optim.vsam import VSAM

METHOD_CLASSES: tuple[type[Method], ...] = (
    *(SGD, SAM, SAMPa, RandSAM, OptSAM),
    *(LookSAM, AESAM, SAF, MESA, ESAM, MSAM, VSAM, MSAMPa),  # efficient variants
    *(SAMdb, GNP, ASAM, SAMON, VaSSO, BiSAM, SAMPaASAM, SAMPaSAMON, SAMPaVaSSO, SAMPaBiSAM),  # baselines
)
METHODS: dict[str, type[Method]] = {cls.name: cls for cls in METHOD_CLASSES}
METHOD_NAMES: tuple[str, ...] = tuple(sorted(METHODS))


def method_class(name: str) -> type[Method]:
    """The class registered under ``name``; one-line error listing the valid names otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown optimizer {name!r}; choose one of: {', '.join(METHOD_NAMES)}") from None


def check_method(name: str, hparams: dict[str, Any]) -> Hyperparameters:
    """Validate a method name and its hyperparameters without building anything."""
    cls = method_class(name)
    return make_hparams(cls.Hparams, cls.name, hparams)


def build_method(
    name: str,
    model: nn.Module,
    loss_fn: LossFn,
    base_optimizer: torch.optim.Optimizer,
    *,
    executor: Executor | None = None,
    seed: int = 0,
    **hparams: Any,
) -> Method:
    """Build the method registered under ``name`` (one of :data:`METHOD_NAMES`) around ``model``.

    ``loss_fn(logits, targets)`` returns per-sample losses (``reduction="none"``); ``base_optimizer`` holds
    parameters of ``model`` (those with ``requires_grad`` are trained); ``hparams`` are the method's keyword
    arguments (``METHODS[name].Hparams``); ``seed`` seeds the method's own random draws; ``executor``
    (default: :class:`SequentialExecutor`) is where gradients run. A wrong name is a ``ValueError``, a
    wrong hyperparameter a :class:`HyperparameterError`, an argument of the wrong kind a ``TypeError``,
    each one line naming the value and the valid choices. Then ``method.step(inputs, targets)`` with the
    model in training mode performs one update (:class:`Method`).
    """
    return method_class(name)(model, loss_fn, base_optimizer, executor=executor, seed=seed, **hparams)


#: the registry, the contract and every method class (tests/test_api.py checks that none is missing)
__all__ = [
    "AESAM",
    "ASAM",
    "ESAM",
    "GNP",
    "MESA",
    "METHODS",
    "METHOD_CLASSES",
    "METHOD_NAMES",
    "MSAM",
    "SAF",
    "SAM",
    "SAMON",
    "SGD",
    "VSAM",
    "BiSAM",
    "Executor",
    "GradJob",
    "GradResult",
    "HyperparameterError",
    "Hyperparameters",
    "LookSAM",
    "LossFn",
    "MSAMPa",
    "Method",
    "OptSAM",
    "RandSAM",
    "SAMPa",
    "SAMPaASAM",
    "SAMPaBiSAM",
    "SAMPaSAMON",
    "SAMPaVaSSO",
    "SAMdb",
    "SequentialExecutor",
    "StepRecord",
    "VaSSO",
    "build_method",
    "check_method",
    "method_class",
]
