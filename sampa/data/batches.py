"""Vectorised on-device batching: seeded shuffling, random crop, flip, Cutout and normalisation.

All random numbers of an epoch are drawn at once on a CPU generator seeded from (seed, epoch), then
moved to the dataset's device, so batches are identical on CPU and CUDA and after resuming at any epoch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sampa.data.dataset import Dataset
from sampa.data.seeding import STREAM_EPOCH, cpu_generator

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Augment:
    """Training augmentation: RandomCrop(padding) with zero fill, horizontal flip, optional Cutout.

    Cutout (``cutout`` > 0 pixels, applied with ``cutout_prob``) zeroes a square patch of the
    *normalised* image, i.e. sets it to the dataset mean; its centre is uniform over the image and the
    patch is clipped at the borders.
    """

    crop_padding: int = 4
    flip: bool = True
    cutout: int = 0
    cutout_prob: float = 0.5

    def __post_init__(self) -> None:
        if self.crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {self.crop_padding}")
        if self.cutout < 0:
            raise ValueError(f"cutout must be >= 0 pixels (0 = off), got {self.cutout}")
        if not 0.0 <= self.cutout_prob <= 1.0:
            raise ValueError(f"cutout_prob must be in [0, 1], got {self.cutout_prob}")


@dataclass
class EpochDraws:
    """Per-epoch random choices, indexed by position in the epoch (sample ``order[i]`` is i-th)."""

    order: torch.Tensor  # int64 [N]: permutation of the train split
    shift: torch.Tensor  # int64 [N, 2]: (dy, dx) in [-pad, pad]; output[r, c] = input[r + dy, c + dx] or 0
    flip: torch.Tensor  # bool [N]: mirror horizontally (after the crop)
    cutout_centre: torch.Tensor  # int64 [N, 2]: (cy, cx), uniform over the image
    cutout_on: torch.Tensor  # bool [N]

    def to(self, device: torch.device) -> EpochDraws:
        """A copy on ``device``."""
        return EpochDraws(
            *(t.to(device) for t in (self.order, self.shift, self.flip, self.cutout_centre, self.cutout_on))
        )


def num_batches(n: int, batch_size: int) -> int:
    """Steps per epoch: ceil(n / batch_size), the last partial batch is kept."""
    if batch_size < 1 or n < 0:
        raise ValueError(f"need batch_size >= 1 and n >= 0, got batch_size={batch_size} n={n}")
    return -(-n // batch_size)


def draw_epoch(
    n: int, *, seed: int, epoch: int, augment: Augment, height: int = 32, width: int = 32
) -> EpochDraws:
    """Draw the epoch's permutation and augmentation parameters on a CPU generator seeded by (seed, epoch).

    The uniforms are drawn in a fixed layout whatever ``augment`` is, so e.g. enabling Cutout does not
    change the permutation, crops or flips.
    """
    gen = cpu_generator(seed, STREAM_EPOCH, epoch)
    order = torch.randperm(n, generator=gen)
    u = torch.rand(n, 6, generator=gen, dtype=torch.float64)
    pad = augment.crop_padding
    shift = (u[:, 0:2] * (2 * pad + 1)).floor().long() - pad
    centre = (u[:, 3:5] * torch.tensor([height, width], dtype=torch.float64)).floor().long()
    off = torch.zeros(n, dtype=torch.bool)
    flip = u[:, 2] < 0.5 if augment.flip else off
    cutout_on = u[:, 5] < augment.cutout_prob if augment.cutout > 0 else off
    return EpochDraws(order, shift, flip, centre, cutout_on)


def _norm_consts(ds: Dataset, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(255*mean, 1/(255*std)) as [1, 3, 1, 1] float32 tensors on ``device``."""
    mean = torch.tensor(ds.mean, dtype=torch.float64) * 255.0
    inv_std = 1.0 / (torch.tensor(ds.std, dtype=torch.float64) * 255.0)
    shape = (1, 3, 1, 1)
    return mean.view(shape).to(device, torch.float32), inv_std.view(shape).to(device, torch.float32)


def normalise(images: torch.Tensor, consts: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float32 (x/255 - mean) / std."""
    mean255, inv_std255 = consts
    return images.float().sub_(mean255).mul_(inv_std255)


def crop_flip(images: torch.Tensor, shift: torch.Tensor, flip: torch.Tensor, pad: int) -> torch.Tensor:
    """Zero-padded random crop + horizontal flip of a uint8 batch: pad once, then gather rows and columns."""
    b, c, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad)) if pad else images
    rows = torch.arange(h, device=images.device) + (pad + shift[:, 0:1])  # [B, H]
    cols = torch.arange(w, device=images.device).expand(b, w)
    cols = torch.where(flip[:, None], w - 1 - cols, cols) + (pad + shift[:, 1:2])  # [B, W]
    out = padded.gather(2, rows[:, None, :, None].expand(b, c, h, padded.shape[3]))
    return out.gather(3, cols[:, None, None, :].expand(b, c, h, w))


def cutout(x: torch.Tensor, centre: torch.Tensor, on: torch.Tensor, size: int) -> torch.Tensor:
    """Zero (in place) a size x size patch around ``centre`` [B, 2], clipped at borders, where ``on``."""
    h, w = x.shape[-2:]
    top_left = centre - size // 2
    rows = torch.arange(h, device=x.device) - top_left[:, 0:1]  # [B, H]
    cols = torch.arange(w, device=x.device) - top_left[:, 1:2]
    inside = ((rows >= 0) & (rows < size))[:, :, None] & ((cols >= 0) & (cols < size))[:, None, :]
    return x.masked_fill_((inside & on[:, None, None])[:, None], 0.0)


def train_batches(
    ds: Dataset, batch_size: int, *, seed: int, epoch: int, augment: Augment, with_indices: bool = False
) -> Iterator[Batch] | Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield the augmented, normalised training batches of one epoch (float32 images, int64 labels).

    Deterministic in (seed, epoch): every train sample appears exactly once; the last partial batch is kept.
    With ``with_indices`` each batch also carries the samples' indices into the train split (int64), for
    methods that keep per-sample state (SAF).
    """
    n = len(ds.train)
    steps = num_batches(n, batch_size)
    images, labels = ds.train.images, ds.train.labels
    if augment.cutout > min(images.shape[2:]):
        side = min(images.shape[2:])
        raise ValueError(f"cutout {augment.cutout} is larger than the {side}-pixel images; use 0 to {side}")
    draws = draw_epoch(
        n, seed=seed, epoch=epoch, augment=augment, height=images.shape[2], width=images.shape[3]
    ).to(images.device)
    consts = _norm_consts(ds, images.device)
    for step in range(steps):
        sl = slice(step * batch_size, (step + 1) * batch_size)
        idx = draws.order[sl]
        x = normalise(crop_flip(images[idx], draws.shift[sl], draws.flip[sl], augment.crop_padding), consts)
        if augment.cutout > 0:
            x = cutout(x, draws.cutout_centre[sl], draws.cutout_on[sl], augment.cutout)
        yield (x, labels[idx], idx) if with_indices else (x, labels[idx])


def eval_batches(
    ds: Dataset, split: str, batch_size: int = 1000, *, part: slice = slice(None)
) -> Iterator[Batch]:
    """Yield normalised, un-augmented batches of ``split`` ("train", "val" or "test") in order; only its
    rows at ``part`` (default: all)."""
    data = ds.split(split)
    consts = _norm_consts(ds, data.images.device)
    images, labels = data.images[part], data.labels[part]
    for step in range(num_batches(len(labels), batch_size)):
        sl = slice(step * batch_size, (step + 1) * batch_size)
        yield normalise(images[sl], consts), labels[sl]
