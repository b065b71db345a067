"""Datasets held entirely on the training device as uint8, with a seeded train/val split and label noise."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from sampa.data.cifar import read_cifar
from sampa.data.seeding import STREAM_NOISE, STREAM_SPLIT, cpu_generator
from sampa.data.synthetic import DISTRACTOR, IMAGE_SIZE, NOISE, make_synthetic

DATASET_NAMES = ("cifar10", "cifar100", "synthetic", "synthetic100")
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "synthetic": 10, "synthetic100": 100}
SPLIT_NAMES = ("train", "val", "test")
#: side of the (square) images in pixels: CIFAR is 32x32, the synthetic generator matches it
IMAGE_SIZES = {"cifar10": 32, "cifar100": 32, "synthetic": IMAGE_SIZE, "synthetic100": IMAGE_SIZE}

Stats = tuple[float, float, float]


@dataclass
class ImageSplit:
    """Images (uint8 [N, 3, H, W], NCHW) and labels (int64 [N]) on one device."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[1] != 3:
            shape = list(self.images.shape)
            raise ValueError(f"images must be uint8 [N, 3, H, W], got {self.images.dtype} {shape}")
        if self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]:
            raise ValueError(
                f"labels must be int64 [{self.images.shape[0]}], got {self.labels.dtype} "
                f"{list(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: str | torch.device) -> ImageSplit:
        """A copy of this split on ``device``."""
        return ImageSplit(self.images.to(device), self.labels.to(device))


@dataclass
class Dataset:
    """A classification dataset with train/val/test splits and its own normalisation statistics.

    ``mean``/``std`` are per-channel statistics of this dataset's train split in [0, 1] pixel units.
    ``label_noise`` is the symmetric noise rate applied and ``noisy_train_labels`` the number of
    corrupted labels in the original training set (train + val).
    """

    name: str
    num_classes: int
    train: ImageSplit
    val: ImageSplit
    test: ImageSplit
    mean: Stats
    std: Stats
    synthetic: bool
    label_noise: float
    noisy_train_labels: int

    def split(self, name: str) -> ImageSplit:
        """The split called ``name`` (one of ``SPLIT_NAMES``)."""
        if name not in SPLIT_NAMES:
            raise ValueError(f"unknown split {name!r}; choose one of {', '.join(SPLIT_NAMES)}")
        return getattr(self, name)

    @property
    def device(self) -> torch.device:
        return self.train.images.device


def check_dataset_args(name: str, val_fraction: float, label_noise: float) -> None:
    """Validate dataset arguments without any I/O; raise a one-line ``ValueError`` on bad input."""
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if not 0.0 <= label_noise < 1.0:
        raise ValueError(f"label_noise must be in [0, 1), got {label_noise}")


def check_cutout(name: str, cutout: int) -> None:
    """Cutout needs one of these datasets (the others have their own input pipeline without it) and a
    patch no larger than the image: a bigger one never fits (it is clipped at every centre), masks more
    of the image the larger it is, and all of it at every centre from twice the side less one. One-line
    ``ValueError``."""
    if cutout == 0:
        return
    if name not in IMAGE_SIZES:
        raise ValueError(
            f"cutout {cutout} does not apply to dataset {name!r} (Cutout is implemented for "
            f"{', '.join(IMAGE_SIZES)} only); use cutout 0"
        )
    side = IMAGE_SIZES[name]
    if not 0 < cutout <= side:
        raise ValueError(
            f"cutout {cutout} must be 0 (off) or a patch side of 1 to {side} pixels for the "
            f"{side}x{side} images of {name}"
        )


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted (train, val) indices of a seeded random split of ``range(n)``; val has round(fraction*n)."""
    n_val = round(val_fraction * n)
    if not 0 < n_val < n:
        raise ValueError(f"val_fraction={val_fraction} of {n} samples leaves an empty split; use more data")
    perm = torch.randperm(n, generator=cpu_generator(seed, STREAM_SPLIT))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def corrupt_labels(
    labels: torch.Tensor, num_classes: int, rate: float, seed: int
) -> tuple[torch.Tensor, int]:
    """Symmetric label noise: exactly round(rate*N) labels, chosen at random, each moved to a uniformly
    random *different* class. Returns (new labels, number corrupted); the input is not modified."""
    count = round(rate * labels.numel())
    if count == 0:
        return labels.clone(), 0
    gen = cpu_generator(seed, STREAM_NOISE)
    which = torch.randperm(labels.numel(), generator=gen)[:count]
    offset = torch.randint(1, num_classes, (count,), generator=gen)
    noisy = labels.clone()
    noisy[which] = (labels[which] + offset) % num_classes
    return noisy, count


def channel_stats(images: torch.Tensor, chunk: int = 2048) -> tuple[Stats, Stats]:
    """Per-channel mean and (population) std of uint8 NCHW images in [0, 1] units, computed in float64."""
    total = torch.zeros(3, dtype=torch.float64)
    total_sq = torch.zeros(3, dtype=torch.float64)
    for start in range(0, images.shape[0], chunk):
        part = images[start : start + chunk].to(torch.float64)
        total += part.sum(dim=(0, 2, 3)).cpu()
        total_sq += part.square().sum(dim=(0, 2, 3)).cpu()
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0).sqrt()
    return _triple(mean / 255.0), _triple(std / 255.0)


def _triple(x: torch.Tensor) -> Stats:
    a, b, c = (float(v) for v in x.tolist())
    return a, b, c


def _raw_splits(
    name: str,
    root: str | os.PathLike | None,
    download: bool,
    sizes: tuple[int, int],
    weights: dict[str, float],
) -> tuple[ImageSplit, ImageSplit]:
    """The unsplit training set and the test set of ``name`` on CPU (synthetic: ``sizes`` of the two
    splits and the generator's ``weights``)."""
    if name.startswith("synthetic"):
        num_classes = NUM_CLASSES[name]
        return ImageSplit(*make_synthetic(num_classes, sizes[0], "train", **weights)), ImageSplit(
            *make_synthetic(num_classes, sizes[1], "test", **weights)
        )
    (train_x, train_y), (test_x, test_y) = read_cifar(name, root, download)
    return ImageSplit(train_x, train_y), ImageSplit(test_x, test_y)


def load_dataset(
    name: str,
    *,
    seed: int,
    root: str | os.PathLike | None = None,
    val_fraction: float = 0.1,
    label_noise: float = 0.0,
    device: str | torch.device = "cpu",
    download: bool = True,
    synthetic_train_size: int = 5000,
    synthetic_test_size: int = 1000,
    synthetic_distractor: float = DISTRACTOR,
    synthetic_noise: float = NOISE,
) -> Dataset:
    """Load ``name`` onto ``device`` as uint8, split off a validation set and optionally corrupt labels.

    - Split: a random permutation fixed by ``seed`` puts round(val_fraction*N) training samples into
      ``val`` and the rest into ``train`` (disjoint, covering, each kept in original order).
    - Label noise: before splitting, exactly round(label_noise*N) labels of the whole training set are
      changed to a uniformly random different class (seeded), so validation labels are noisy too, as a
      practitioner would have them; test labels are never corrupted.
    - CIFAR data come from ``root`` > ``$SAMPA_DATA`` > ``./data`` (see ``sampa.data.cifar``); synthetic
      images are independent of ``seed`` (only the split and the noise depend on it);
      ``synthetic_distractor``/``synthetic_noise`` set their difficulty (``sampa.data.synthetic``).
    """
    check_dataset_args(name, val_fraction, label_noise)
    if min(synthetic_train_size, synthetic_test_size) < 1:
        sizes = f"train={synthetic_train_size} test={synthetic_test_size}"
        raise ValueError(f"synthetic sizes must be >= 1, got {sizes}")
    weights = {"distractor": synthetic_distractor, "noise": synthetic_noise}
    full, test = _raw_splits(name, root, download, (synthetic_train_size, synthetic_test_size), weights)
    num_classes = NUM_CLASSES[name]
    labels, n_noisy = corrupt_labels(full.labels, num_classes, label_noise, seed)
    train_idx, val_idx = split_indices(len(full), val_fraction, seed)
    train = ImageSplit(full.images[train_idx], labels[train_idx])
    mean, std = channel_stats(train.images)
    return Dataset(
        name=name,
        num_classes=num_classes,
        train=train.to(device),
        val=ImageSplit(full.images[val_idx], labels[val_idx]).to(device),
        test=test.to(device),
        mean=mean,
        std=std,
        synthetic=name.startswith("synthetic"),
        label_noise=float(label_noise),
        noisy_train_labels=n_noisy,
    )
