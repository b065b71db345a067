"""The paper's names of the CIFAR model zoo (:mod:`sampa.models`), in a leaf module without torch, so
the report (table and figure axes, :func:`sampa.experiments.axis_label`) names models without importing
them. ``sampa.models.DISPLAY_NAMES`` is this table (tests/test_models.py checks it covers the registry).
Likewise the registered optimizers' names, for checking a planned spec without importing the methods."""

from __future__ import annotations

MODEL_DISPLAY: dict[str, str] = {
    "densenet121": "DenseNet-121",
    "pyramidnet110": "PyramidNet-110",
    "resnet18": "ResNet-18",
    "resnet20": "ResNet-20",
    "resnet32": "ResNet-32",
    "resnet56": "ResNet-56",
    "tinycnn": "TinyCNN",
    "vgg19bn": "VGG19-BN",
    "wrn28-10": "WRN-28-10",
    "wrn28-2": "WRN-28-2",
}

#: ``sampa.optim.METHOD_NAMES`` without torch (tests/test_experiments.py checks they agree)
METHOD_NAMES: tuple[str, ...] = (
    *("aesam", "asam", "bisam", "esam", "gnp", "looksam", "mesa", "msam", "optsam", "randsam", "saf"),
    *("sam", "samdb", "samon", "sampa", "sampa-asam", "sampa-bisam", "sampa-msam", "sampa-samon"),
    *("sampa-vasso", "sgd", "vasso", "vsam"),
)
