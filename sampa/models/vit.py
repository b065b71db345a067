r"""ViT-B/16 for the paper's image fine-tuning (Table 5), through timm (the ``vision`` extra).

Checkpoint: timm's ``vit_base_patch16_224.orig_in21k``, the original ImageNet-21k ViT-B/16 of
Dosovitskiy et al. (2021) converted by timm, i.e. the ``ViT-B_16.npz`` (imagenet21k) that the
PyTorch ViT fine-tuning code of the paper's time loads. ``augreg_in21k`` (Steiner et al., 2022) is a
later retraining with stronger augmentation and regularisation: better, but not the paper's weights;
pass ``tag="augreg_in21k"`` to use it. Both are ImageNet-21k-only (no ImageNet-1k fine-tuning).

Weights come from a local file (``.safetensors``/``.pth``/``.bin``/``.npz``) or from the Hugging
Face hub cache; nothing is downloaded unless ``allow_download``. The classifier head is new
(``num_classes`` outputs, zero-initialised as timm does for a changed head).

CIFAR images (32x32) are resized to 224x224 on the device, inside the model (:class:`Resize`): the
data pipeline and every method stay as they are for CIFAR.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch.nn.functional as F
from torch import Tensor, nn

from sampa.data.cifar import WeightsUnavailableError, damaged_files, unreadable_weights
from sampa.extras import require

ARCHITECTURE = "vit_base_patch16_224"
DEFAULT_TAG = "orig_in21k"
TAGS = ("orig_in21k", "augreg_in21k")
IMAGE_SIZE = 224
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class Resize(nn.Module):
    """Bilinear resize of a float image batch to ``size`` x ``size`` (no-op when already that size)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2:] == (self.size, self.size):
            return x
        return F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)


def vit_b16(
    num_classes: int,
    weights: str | os.PathLike | None = "hub",
    *,
    tag: str = DEFAULT_TAG,
    allow_download: bool = False,
    local_dir: str | os.PathLike | None = None,
) -> nn.Module:
    """Pretrained ViT-B/16 with a new ``num_classes`` head, preceded by a resize to 224.

    ``weights``: a local file or a directory holding ``model.safetensors``, ``"hub"`` (the hub cache of
    timm's ``vit_base_patch16_224.<tag>``) or ``None`` (random initialisation, e.g. to time steps).
    ``local_dir``: where the caller looks for local weights, named by the error when none are found.
    """
    if tag not in TAGS:
        raise ValueError(f"unknown ViT-B/16 checkpoint tag {tag!r}; choose one of: {', '.join(TAGS)}")
    timm = require("vision", "timm")
    name = f"{ARCHITECTURE}.{tag}"
    if weights is None:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    else:
        overlay = _weights_overlay(name, weights, allow_download, local_dir)
        where = str(overlay["file"]) if overlay else f"the hub cache's timm/{name}"
        with damaged_files(functools.partial(unreadable_weights, f"the ViT-B/16 weights {name}", where)):
            model = timm.create_model(
                name, pretrained=True, num_classes=num_classes, pretrained_cfg_overlay=overlay
            )
    return nn.Sequential(Resize(IMAGE_SIZE), model)


def _weights_overlay(
    name: str, weights: str | os.PathLike, allow_download: bool, local_dir: str | os.PathLike | None
) -> dict[str, object] | None:
    """timm's ``pretrained_cfg_overlay`` pointing at a local file (None: let timm download)."""
    if str(weights) != "hub":
        path = _weights_file(Path(weights).expanduser())
        if not path.is_file():
            raise WeightsUnavailableError(_missing(name, f"no file {path}", path.parent))
        return {"file": str(path), "custom_load": path.suffix == ".npz"}
    cached = _hub_cached_file(f"timm/{name}")
    if cached is not None:
        return {"file": cached, "custom_load": False}
    if allow_download:
        return None
    raise WeightsUnavailableError(_missing(name, "not in the hugging face hub cache", local_dir))


def _weights_file(path: Path) -> Path:
    """``path``, or the weights file inside a directory (a hub download with ``--local-dir``)."""
    if not path.is_dir():
        return path
    found = [path / f for f in WEIGHT_FILES if (path / f).is_file()]
    return found[0] if found else path / WEIGHT_FILES[0]


def _hub_cached_file(repo_id: str) -> str | None:
    """The cached weights file of hub repository ``repo_id``, if any (never downloads)."""
    from huggingface_hub import try_to_load_from_cache

    for filename in WEIGHT_FILES:
        found = try_to_load_from_cache(repo_id, filename)
        if isinstance(found, str):
            return found
    return None


def _missing(name: str, reason: str, local_dir: str | os.PathLike | None) -> str:
    where = local_dir or "DIR"
    return (
        f"ViT-B/16 weights {name} unavailable ({reason}); put model.safetensors of "
        f"https://huggingface.co/timm/{name} into {where} (huggingface-cli download timm/{name} "
        f"--local-dir {where}) or fill the hub cache (huggingface-cli download timm/{name})"
    )


def vit_tiny(num_classes: int, image_size: int = 32) -> nn.Module:
    """A small randomly initialised ViT (patch 8, width 32, 2 blocks) for tests and toy runs."""
    timm = require("vision", "timm")
    from timm.models.vision_transformer import VisionTransformer

    del timm  # imported for the extra check only
    return VisionTransformer(
        img_size=image_size,
        patch_size=8,
        embed_dim=32,
        depth=2,
        num_heads=2,
        mlp_ratio=2.0,
        num_classes=num_classes,
    )
