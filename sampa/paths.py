"""Where data and weights live under the data root: names shared by the data modules and
:mod:`sampa.requirements` (a leaf module: it imports nothing of sampa, and no torch)."""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "SAMPA_DATA"
DEFAULT_ROOT = "data"
IMAGENET_FOLDER = "imagenet"
IMAGENET_SPLITS = ("train", "val")
#: the generated toy ImageFolder (dataset name and folder): ImageNet's layout, never ImageNet's name
TOY_IMAGEFOLDER = "imagefolder-toy"
#: pretrained weights under the data root: a ``save_pretrained`` directory (BERT) or a hub
#: ``--local-dir`` download holding ``model.safetensors`` (ViT)
WEIGHTS = {"bert-base": "weights/bert-base-uncased", "vit-b16": "weights/vit-b16-imagenet21k"}


def data_root(root: str | os.PathLike | None = None) -> Path:
    """Data root: explicit ``root`` > environment variable ``SAMPA_DATA`` > ``./data``."""
    if root is None:
        root = os.environ.get(ENV_VAR) or DEFAULT_ROOT
    return Path(root).expanduser().absolute()


def generated_data(dataset: str) -> bool:
    """Whether ``dataset`` is made up by sampa (synthetic images or text, the toy ImageFolder): its
    numbers are never compared with the paper's or taken as evidence for a claim."""
    return dataset.startswith("synthetic") or dataset == TOY_IMAGEFOLDER
