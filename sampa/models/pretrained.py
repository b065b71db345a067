"""Models of Tables 3, 5 and 6 (ImageNet, fine-tuning), beside the CIFAR zoo of :mod:`sampa.models`.

``build_source_model(name, num_classes, data_root)``: ``resnet50`` (torchvision, random init),
``vit-b16`` and ``bert-base`` (pretrained: ``<data root>/weights/...`` or the hub cache, see
:data:`sampa.data.sources.WEIGHTS`), and small random ``vit-tiny`` / ``bert-tiny`` for toy runs and tests.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from torch import nn

SOURCE_MODEL_NAMES = ("bert-base", "bert-tiny", "resnet50", "vit-b16", "vit-tiny")
#: the models that read tokenised text (every other model reads images)
TEXT_MODEL_NAMES = ("bert-base", "bert-tiny")
DISPLAY_NAMES = {
    "bert-base": "BERT-base",
    "bert-tiny": "BERT-tiny",
    "resnet50": "ResNet-50",
    "vit-b16": "ViT-B/16",
    "vit-tiny": "ViT-tiny",
}


def build_source_model(name: str, num_classes: int, data_root: str | os.PathLike | None = None) -> nn.Module:
    """Model ``name`` with ``num_classes`` outputs (1: regression); pretrained weights from ``data_root``."""
    if name not in SOURCE_MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(SOURCE_MODEL_NAMES)}")
    return _builders(data_root)[name](num_classes)


def _builders(data_root: str | os.PathLike | None) -> dict[str, Callable[[int], nn.Module]]:
    from sampa.data.sources import local_weights, weights_location
    from sampa.models import bert, vit
    from sampa.models.resnet50 import resnet50

    def where(model: str) -> dict[str, object]:
        return {"weights": weights_location(model, data_root), "local_dir": local_weights(model, data_root)}

    return {
        "bert-base": lambda n: bert.bert_base(n, **where("bert-base")),
        "bert-tiny": lambda n: bert.bert_tiny(n),
        "resnet50": resnet50,
        "vit-b16": lambda n: vit.vit_b16(n, **where("vit-b16")),
        "vit-tiny": lambda n: vit.vit_tiny(n),
    }
