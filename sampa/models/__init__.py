"""CIFAR model zoo (32x32 inputs) for the SAM/SAMPa benchmarks.

``build_model(name, num_classes)`` constructs a freshly initialised model from the registry;
``MODEL_NAMES`` lists the registry keys and ``DISPLAY_NAMES`` maps them to the names used in
the SAMPa paper's tables. Every model uses only ``torch.nn.BatchNorm2d`` for normalisation and
no in-place ops, so it works with ``torch.func.functional_call``/``vmap`` and ``torch.compile``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from sampa.names import MODEL_DISPLAY

from .densenet import densenet121
from .pyramidnet import pyramidnet110
from .resnet18 import resnet18
from .resnet_cifar import resnet20, resnet32, resnet56
from .tinycnn import tinycnn
from .vgg import vgg19bn
from .wide_resnet import wrn28_2, wrn28_10

__all__ = ["DISPLAY_NAMES", "MODEL_NAMES", "build_model", "count_parameters"]

_REGISTRY: dict[str, Callable[[int], nn.Module]] = {
    "densenet121": densenet121,
    "pyramidnet110": pyramidnet110,
    "resnet18": resnet18,
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet56": resnet56,
    "tinycnn": tinycnn,
    "vgg19bn": vgg19bn,
    "wrn28-10": wrn28_10,
    "wrn28-2": wrn28_2,
}

MODEL_NAMES: tuple[str, ...] = tuple(sorted(_REGISTRY))

DISPLAY_NAMES: dict[str, str] = MODEL_DISPLAY  # the paper's names (sampa.names: no torch)


def build_model(name: str, num_classes: int) -> nn.Module:
    """Build registry model ``name`` with a ``num_classes``-way classifier (initialised from torch's RNG)."""
    choices = ", ".join(MODEL_NAMES)
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose one of: {choices}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(
            f"invalid num_classes {num_classes!r} for model {name!r}; choose an integer >= 2 "
            f"(valid models: {choices})"
        )
    return _REGISTRY[name](num_classes)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable (``requires_grad``) parameter elements in ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
