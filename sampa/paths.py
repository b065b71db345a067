"""Where data and weights live under the data root: names shared by the data modules and
:mod:`sampa.requirements` (a leaf module: it imports nothing of sampa, and no torch)."""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "SAMPA_DATA"
DEFAULT_ROOT = "data"
IMAGENET_FOLDER = "imagenet"
IMAGENET_SPLITS = ("train", "val")
#: pretrained weights under the data root: a ``save_pretrained`` directory (BERT) or a hub
#: ``--local-dir`` download holding ``model.safetensors`` (ViT)
WEIGHTS = {"bert-base": "weights/bert-base-uncased", "vit-b16": "weights/vit-b16-imagenet21k"}


def data_root(root: str | os.PathLike | None = None) -> Path:
    """Data root: explicit ``root`` > environment variable ``SAMPA_DATA`` > ``./data``."""
    if root is None:
        root = os.environ.get(ENV_VAR) or DEFAULT_ROOT
    return Path(root).expanduser().absolute()
