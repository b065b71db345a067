r"""ImageNet-1K (Table 3) from the standard ImageFolder layout, decoded and augmented on worker processes.

Layout under the data root (``--data-root`` > ``$SAMPA_DATA`` > ``./data``)::

    imagenet/train/<wnid>/*.JPEG     1,281,167 images in 1000 class folders
    imagenet/val/<wnid>/*.JPEG       50,000 images, sorted into the same 1000 class folders

Training batches: RandomResizedCrop(224) + horizontal flip (the standard ResNet recipe); evaluation:
resize to 256, centre crop 224. Workers decode JPEGs with torchvision (libjpeg-turbo) and return uint8
tensors (4x less to copy than float); normalisation with the ImageNet statistics runs on the device.
Each sample's augmentation is drawn from a generator seeded by (seed, epoch, index) and the order
(``torch.randperm``) from one seeded by (seed, epoch), so an epoch's batches are the same whatever the
number of workers or processes, and after a resume. ``val/`` is the paper's test set: its table
reports the best top-1/top-5 over epochs ("maximum test accuracies"); the engine's validation split is
the same folder.

Several processes (``rows``, from ``Backend.input_rows``): a process decodes only the rows of each
global batch its gradients read (a :class:`BatchRows` batch sampler gives the workers their indices).
The batch keeps its global size, with all labels and indices; the other rows' images are NaN, so a
computation that read them by mistake could not go unnoticed. 2k data-parallel ranks decode 1/(2k) of
each batch each; SAMPa's two groups of k ranks 1/k (each batch is B_{t+1} of group 1, then B_t of
group 0, and rank i of a group computes on part i of both).

A file the decoder rejects (cut off, corrupt, not an image) ends the run with one line naming it
(:class:`UnreadableImageError`, a ``RunError``): the worker returns an :class:`Unreadable` in place of
its sample (an exception raised in a worker would reach the reader as a multi-line traceback) and the
process reading the batches raises it.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from sampa.data.cifar import ENV_VAR, DataUnavailableError, resolve_root
from sampa.data.seeding import STREAM_EPOCH, cpu_generator, derive_seed
from sampa.io import first_line
from sampa.paths import IMAGENET_FOLDER, IMAGENET_SPLITS
from sampa.rundir import RunError

FOLDER, SPLITS = IMAGENET_FOLDER, IMAGENET_SPLITS
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
CROP = 224
RESIZE = 256
MAX_DEFAULT_WORKERS = 8  # the default worker count: this many, or fewer where the machine has fewer CPUs
EXTENSIONS = (".jpeg", ".jpg", ".png")


def loader_workers(requested: int | None = None) -> int:
    """Decoding processes for ``requested`` (the run's ``num_workers``): ``None`` means
    min(8, CPUs of this machine); 0 decodes in the calling process."""
    if requested is None:
        return min(MAX_DEFAULT_WORKERS, os.cpu_count() or 1)
    if requested < 0:
        raise ValueError(f"num_workers must be >= 0 or None (got {requested})")
    return requested


def imagenet_folder(root: str | os.PathLike | None = None) -> Path:
    """``<root>/imagenet`` with ``train/`` and ``val/`` class folders, or a one-line error saying so."""
    folder = resolve_root(root) / FOLDER
    missing = [s for s in SPLITS if not (folder / s).is_dir()]
    if missing:
        raise DataUnavailableError(
            f"ImageNet-1K not found: put the ImageFolder layout at {folder}/train/<class>/*.JPEG and "
            f"{folder}/val/<class>/*.JPEG (val sorted into the same class folders), or set {ENV_VAR} to the "
            f"folder above imagenet/ (missing: {', '.join(missing)})"
        )
    return folder


def list_samples(
    split_dir: Path, classes: list[str] | None = None
) -> tuple[list[tuple[str, int]], list[str]]:
    """(path, class index) of every image under ``split_dir/<class>/`` (sorted) and the class names."""
    if classes is None:
        classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
    samples = [
        (str(path), label)
        for label, name in enumerate(classes)
        if (split_dir / name).is_dir()
        for path in sorted((split_dir / name).iterdir())
        if path.suffix.lower() in EXTENSIONS
    ]
    if not classes or not samples:
        flat = sum(1 for path in split_dir.iterdir() if path.suffix.lower() in EXTENSIONS)
        if flat:  # ILSVRC2012's validation archive unpacks without class folders
            raise DataUnavailableError(
                f"{split_dir} holds {flat} images directly, not in class folders: sort them into "
                f"{split_dir}/<wnid>/ folders (ILSVRC2012_validation_ground_truth.txt, e.g. with valprep.sh)"
            )
        raise DataUnavailableError(f"no images (*.JPEG in class folders) under {split_dir}; check the layout")
    return samples, classes


class UnreadableImageError(RunError):
    """An image file cannot be decoded (message: one line naming it and what to do)."""


@dataclass(frozen=True)
class Unreadable:
    """Returned in place of a sample (and of its batch) whose file cannot be decoded."""

    path: str
    cause: str

    def error(self) -> UnreadableImageError:
        return UnreadableImageError(
            f"{self.path} cannot be decoded ({self.cause}): replace it with an intact copy and run the "
            "same command again (the run resumes after its last finished epoch), or delete it and start "
            "the run afresh in a new directory (the training set changes)"
        )


#: torchvision's error text: "<function>, <source file>:<line>, <message>"
_TORCHVISION_ERROR = re.compile(r"^\w+, \S+:\d+, (.+)$")


def decode_cause(err: Exception) -> str:
    """The decoder's reason in a few words (torchvision's message without its source location)."""
    line = first_line(err, type(err).__name__)
    found = _TORCHVISION_ERROR.match(line)
    return (found.group(1) if found else line)[:200]


def checked(batch: Any) -> Any:
    """``batch``, or the one-line error of its unreadable file."""
    if isinstance(batch, Unreadable):
        raise batch.error()
    return batch


def decode(path: str) -> Tensor:
    """uint8 [3, H, W] RGB image (greyscale and CMYK JPEGs are converted)."""
    from torchvision.io import ImageReadMode, decode_image, read_file

    with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders for torchcodec's
        warnings.simplefilter("ignore", DeprecationWarning)
        return decode_image(read_file(path), mode=ImageReadMode.RGB)


def train_transform(size: int = CROP) -> Callable[[Tensor], Tensor]:
    """RandomResizedCrop(size) + horizontal flip on a uint8 image, drawing from torch's global RNG."""
    from torchvision.transforms import v2

    return v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()])


def eval_transform(size: int = CROP, resize: int = RESIZE) -> Callable[[Tensor], Tensor]:
    """Resize the short side to ``resize`` then centre-crop ``size``."""
    from torchvision.transforms import v2

    return v2.Compose([v2.Resize(resize, antialias=True), v2.CenterCrop(size)])


class ImageFiles(Dataset):
    """(uint8 image, label, index) of image files; augmentation seeded per (seed, epoch, index)."""

    def __init__(
        self, samples: list[tuple[str, int]], transform: Callable[[Tensor], Tensor], seed: int = 0
    ) -> None:
        self.samples, self.transform, self.seed, self.epoch = samples, transform, seed, 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int, int] | Unreadable:
        path, label = self.samples[index]
        try:
            image = decode(path)
        except (RuntimeError, OSError, ValueError) as err:  # torchvision's errors are RuntimeErrors
            return Unreadable(path, decode_cause(err))
        with torch.random.fork_rng(devices=[]):  # never disturb the caller's RNG (workers=0)
            torch.manual_seed(derive_seed(self.seed, STREAM_EPOCH, self.epoch, index))
            return self.transform(image).contiguous(), label, index


def all_rows(size: int) -> slice:
    """Every row of a batch of ``size`` (one process)."""
    return slice(0, size)


class BatchRows(Sampler[list[int]]):
    """Batch sampler of one process: ``order`` cut into global batches of ``batch_size`` (the last one
    partial), of each the dataset indices at ``rows(len(batch))`` (possibly none)."""

    def __init__(self, order: Tensor, batch_size: int, rows: Callable[[int], slice] = all_rows) -> None:
        self.batches, self.rows = order.split(batch_size), rows

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            yield batch[self.rows(len(batch))].tolist()


def first_unreadable(samples: list[Any]) -> Unreadable | None:
    """The first sample whose file cannot be decoded, if any."""
    return next((s for s in samples if isinstance(s, Unreadable)), None)


def stack_images(samples: list[tuple[Tensor, int, int] | Unreadable]) -> Tensor | Unreadable | None:
    """The images of a process's rows as one uint8 batch (None: no rows; an unreadable file: it)."""
    return first_unreadable(samples) or (default_collate(samples)[0] if samples else None)


def collate_samples(samples: list[tuple[Tensor, int, int] | Unreadable]) -> Any:
    """(images, labels, indices) of a batch, or its first unreadable file."""
    return first_unreadable(samples) or default_collate(samples)


@dataclass
class ImageNet:
    """ImageNet-1K splits read from disk batch by batch; batches come out normalised on ``device``."""

    train: ImageFiles
    val: ImageFiles
    classes: list[str]
    device: torch.device
    workers: int = 8
    crop: int = CROP

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def train_batches(
        self, batch_size: int, *, seed: int, epoch: int, rows: Callable[[int], slice] | None = None
    ) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """(images, labels, indices) of one shuffled, augmented epoch; the last partial batch is kept.
        Only the images at ``rows(batch size)`` are decoded (default: all), the others are NaN."""
        rows = rows or all_rows
        self.train.seed, self.train.epoch = seed, epoch
        order = torch.randperm(len(self.train), generator=cpu_generator(seed, STREAM_EPOCH, epoch))
        loader = DataLoader(
            self.train,
            batch_sampler=BatchRows(order, batch_size, rows),
            collate_fn=stack_images,
            generator=cpu_generator(seed, STREAM_EPOCH, epoch, 1),  # worker base seeds, not the global RNG
            **self._loader_settings(),
        )
        labels = torch.tensor([label for _, label in self.train.samples])
        for indices, images in zip(order.split(batch_size), map(checked, loader), strict=True):
            yield (
                self._global_images(images, len(indices), rows(len(indices))),
                labels[indices].to(self.device),
                indices.to(self.device),
            )

    def _global_images(self, images: Tensor | None, size: int, part: slice) -> Tensor:
        """Normalised images of a global batch of ``size`` on the device: ``images`` at ``part``, NaN
        elsewhere."""
        if part == slice(0, size) and images is not None:
            return normalise(images.to(self.device, non_blocking=True))
        out = torch.full((size, 3, self.crop, self.crop), math.nan, device=self.device)
        if images is not None:
            out[part] = normalise(images.to(self.device, non_blocking=True))
        return out

    def eval_batches(
        self, batch_size: int, rows: Callable[[int], slice] | None = None
    ) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """(images, labels, indices) of ``val/`` in order, resized and centre-cropped; only the images
        at ``rows(len(val))`` (default: all) are decoded and returned."""
        part = (rows or all_rows)(len(self.val))
        order = range(len(self.val))[part]
        loader = DataLoader(
            self.val,
            batch_size=batch_size,
            sampler=order,
            collate_fn=collate_samples,
            **self._loader_settings(),
        )
        for images, labels, indices in map(checked, loader):
            yield (
                normalise(images.to(self.device, non_blocking=True)),
                labels.to(self.device),
                indices.to(self.device),
            )

    def _loader_settings(self) -> dict[str, Any]:
        return {
            "num_workers": self.workers,
            "pin_memory": self.device.type == "cuda",
            "persistent_workers": False,
            "prefetch_factor": 4 if self.workers else None,
        }


def normalise(images: Tensor) -> Tensor:
    """uint8 [B, 3, H, W] -> float32 (x/255 - mean) / std with the ImageNet statistics."""
    mean = torch.tensor(MEAN, device=images.device).mul(255).view(1, 3, 1, 1)
    inv_std = torch.tensor(STD, device=images.device).mul(255).reciprocal().view(1, 3, 1, 1)
    return images.float().sub_(mean).mul_(inv_std)


def load_imagenet(
    root: str | os.PathLike | None = None,
    *,
    device: str | torch.device = "cpu",
    workers: int = 8,
    max_classes: int | None = None,
    crop: int = CROP,
) -> ImageNet:
    """ImageNet-1K under ``root`` (or a subset: the first ``max_classes`` classes, for quick runs)."""
    if workers < 0 or (max_classes is not None and max_classes < 2):
        raise ValueError(f"need workers >= 0 and max_classes >= 2 or None, got {workers} and {max_classes}")
    return load_image_folder(
        imagenet_folder(root), device=device, workers=workers, max_classes=max_classes, crop=crop
    )


def load_image_folder(
    folder: Path,
    *,
    device: str | torch.device = "cpu",
    workers: int = 8,
    max_classes: int | None = None,
    crop: int = CROP,
) -> ImageNet:
    """Any ImageFolder with ``train/`` and ``val/`` class folders, read the ImageNet way (e.g. the
    generated toy folder, :mod:`sampa.data.imagefolder`)."""
    train_samples, classes = list_samples(folder / "train")
    if max_classes is not None:
        classes = classes[:max_classes]
        train_samples = [s for s in train_samples if s[1] < max_classes]
    val_samples, _ = list_samples(folder / "val", classes)
    return ImageNet(
        train=ImageFiles(train_samples, train_transform(crop)),
        val=ImageFiles(val_samples, eval_transform(crop, round(crop * RESIZE / CROP))),
        classes=classes,
        device=torch.device(device),
        workers=workers,
        crop=crop,
    )
