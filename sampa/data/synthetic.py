"""A deterministic, learnable, CIFAR-shaped synthetic image classification dataset (no download).

Each class has a smooth random colour prototype (4x4 and 8x8 Gaussian patterns upsampled to 42x42).
A sample is a 32x32 window of its class prototype at a random offset (translation by up to 5 pixels),
plus a fainter distractor window of a random class's prototype, plus smooth per-sample noise, with a
random contrast and brightness, quantised to uint8. With the default weights (distractor 0.8, noise 1)
raw-pixel linear classifiers reach roughly 60-80 % (10 classes), so the task is learnable but not
trivial; smaller weights make it easier (the smoke profile's short runs use distractor 0, noise 0.3).
Images depend only on (num_classes, split, n, distractor, noise); the random draws do not depend on the
weights, so changing a weight changes every image in the same way.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sampa.data.seeding import STREAM_SYNTHETIC, cpu_generator

SYNTHETIC_DATA_SEED = 20240917  # fixed: the images are the same for every run seed, like a real dataset
IMAGE_SIZE = 32
MAX_SHIFT = 5  # per-sample translation in pixels
DISTRACTOR = 0.8  # default weight of the distractor prototype (the true class has weight 1)
NOISE = 1.0  # default weight of the per-sample smooth noise
SPLIT_IDS = {"train": 0, "test": 1}


def _upsample(x: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def class_prototypes(num_classes: int) -> torch.Tensor:
    """One smooth random float pattern per class, [C, 3, 32 + 2*MAX_SHIFT, 32 + 2*MAX_SHIFT]."""
    gen = cpu_generator(SYNTHETIC_DATA_SEED, STREAM_SYNTHETIC, num_classes)
    size = IMAGE_SIZE + 2 * MAX_SHIFT
    coarse = torch.randn(num_classes, 3, 4, 4, generator=gen)
    fine = torch.randn(num_classes, 3, 8, 8, generator=gen)
    return _upsample(coarse, size) + 0.5 * _upsample(fine, size)


def _windows(protos: torch.Tensor, classes: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Cut one 32x32 window per sample from its prototype at a random offset (vectorised gather)."""
    offsets = torch.randint(0, 2 * MAX_SHIFT + 1, (classes.numel(), 2), generator=gen)
    ar = torch.arange(IMAGE_SIZE)
    rows = (offsets[:, 0, None] + ar)[:, None, :, None]
    cols = (offsets[:, 1, None] + ar)[:, None, None, :]
    return protos[classes[:, None, None, None], torch.arange(3)[None, :, None, None], rows, cols]


def _smooth_noise(n: int, gen: torch.Generator) -> torch.Tensor:
    """Per-sample smooth noise [n, 3, 32, 32]: 8x8 plus 4x4 Gaussian patterns, upsampled."""
    fine = torch.randn(n, 3, 8, 8, generator=gen)
    coarse = torch.randn(n, 3, 4, 4, generator=gen)
    return _upsample(fine + _upsample(coarse, 8), IMAGE_SIZE)


def make_synthetic(
    num_classes: int, n: int, split: str, *, distractor: float = DISTRACTOR, noise: float = NOISE
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate ``n`` images (uint8 [n, 3, 32, 32]) and balanced labels (int64 [n]) of one split on CPU;
    ``distractor`` and ``noise`` weigh the distractor prototype and the per-sample noise (difficulty)."""
    if split not in SPLIT_IDS:
        raise ValueError(f"unknown synthetic split {split!r}; choose one of {sorted(SPLIT_IDS)}")
    if n < 1:
        raise ValueError(f"synthetic split size must be >= 1, got {n}")
    if not (math.isfinite(distractor) and math.isfinite(noise) and min(distractor, noise) >= 0):
        raise ValueError(f"synthetic distractor and noise must be finite and >= 0, got {distractor}, {noise}")
    gen = cpu_generator(SYNTHETIC_DATA_SEED, STREAM_SYNTHETIC, num_classes, SPLIT_IDS[split], n)
    labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=gen)]
    protos = class_prototypes(num_classes)
    images = _windows(protos, labels, gen)
    distractors = torch.randint(0, num_classes, (n,), generator=gen)
    images.add_(_windows(protos, distractors, gen), alpha=distractor)
    images.add_(_smooth_noise(n, gen), alpha=noise)
    contrast = 0.7 + 0.6 * torch.rand(n, 1, 1, 1, generator=gen)
    brightness = 0.4 * torch.randn(n, 1, 1, 1, generator=gen)
    images.mul_(contrast).add_(brightness).mul_(45.0).add_(128.5).clamp_(0, 255)
    return images.to(torch.uint8), labels  # +0.5 then truncation = rounding
