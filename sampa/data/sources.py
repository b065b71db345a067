r"""Datasets that do not fit the on-device CIFAR path: ImageNet-1K, the GLUE tasks and a synthetic text task.

Each is a *source* with one interface for the engine (:class:`Source`): ``num_classes``, ``train_size``,
``train_batches(batch_size, seed=, epoch=, rows=)`` and ``eval_batches(batch_size, rows=)`` yielding
``(inputs, targets, indices)`` (``rows(size)``: for training, the rows of a batch whose inputs the
caller reads, ImageNet decodes only those, on-device sources ignore it; for evaluation, the caller's
slice of the eval set), ``eval_columns(model, batch_size, rows=)``: per-sample results of those rows
(:data:`sampa.metrics.scores.Columns`), ``scores(columns)`` of every row's columns (several processes
evaluate disjoint slices and merge their columns), and ``evaluate(model, batch_size)`` (both on one
process) returning ``loss``, ``acc`` (plain top-1 accuracy) and the source's own scores (ImageNet:
``top5_acc``; text tasks: the task's metrics, :func:`task_metric_names`, and ``task_score``, their
mean, which selects the best checkpoint; STS-B's ``acc`` is None). There is no held-out validation
split: validation and test are the same eval set (ImageNet's ``val/``, GLUE's dev set: GLUE's test
labels are hidden), as the paper reports them (ImageNet: "maximum test accuracies" over epochs; GLUE:
dev scores, MNLI on the matched dev set).

Names: ``imagenet``; ``glue-<task>`` (``glue-cola`` ... ``glue-wnli``); ``synthetic-text`` (toy, no files:
:func:`sampa.data.glue.synthetic_text_data`);
``imagefolder-toy`` (generated JPEGs in ``<data root>/imagefolder-toy``, read like ImageNet, 32 x 32 crops).
Pretrained weights live under ``<data root>/weights/`` (:data:`WEIGHTS`) or in the Hugging Face hub cache.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from sampa.data.cifar import resolve_root
from sampa.data.glue import TextData, glue_task, load_glue, load_tokenizer, synthetic_text_data
from sampa.data.imagefolder import TOY_TRAIN_SIZE
from sampa.glue_tasks import GLUE_TASKS
from sampa.metrics.scores import Columns, text_columns, text_scores, topk_columns, topk_scores
from sampa.paths import TOY_IMAGEFOLDER, WEIGHTS

TOPK = (1, 5)  # ImageNet's accuracies

#: training-set sizes, known without reading data (steps per epoch, batch-size checks)
TRAIN_SIZES: dict[str, int] = {
    "imagenet": 1_281_167,
    **{task.dataset: task.train_size for task in GLUE_TASKS.values()},
    "synthetic-text": 512,
    TOY_IMAGEFOLDER: TOY_TRAIN_SIZE,
}
SOURCE_NAMES = tuple(TRAIN_SIZES)


class Source(Protocol):
    """What the engine needs from a dataset that is not a CIFAR-style in-memory one."""

    num_classes: int

    @property
    def train_size(self) -> int: ...

    def train_batches(
        self, batch_size: int, *, seed: int, epoch: int, rows: Callable[[int], slice] | None = None
    ) -> Iterator[tuple[Any, Tensor, Tensor]]: ...

    def eval_batches(
        self, batch_size: int, rows: Callable[[int], slice] | None = None
    ) -> Iterator[tuple[Any, Tensor, Tensor]]: ...

    def eval_columns(
        self, model: nn.Module, batch_size: int, rows: Callable[[int], slice] | None = None
    ) -> Columns: ...

    def scores(self, columns: Columns) -> dict[str, float]: ...

    def evaluate(self, model: nn.Module, batch_size: int) -> dict[str, float]: ...


def is_source(name: str) -> bool:
    """Whether dataset ``name`` is one of these sources (not the on-device CIFAR/synthetic path)."""
    return name in TRAIN_SIZES


def load_source(
    name: str,
    *,
    root: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    workers: int = 8,
) -> Source:
    """The source called ``name``; ImageNet and GLUE read ``root`` (one-line errors name what is missing)."""
    if name not in TRAIN_SIZES:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(SOURCE_NAMES)}")
    if name == "imagenet":
        from sampa.data.imagenet import load_imagenet

        return ImageNetSource(load_imagenet(root, device=device, workers=workers))
    if name == TOY_IMAGEFOLDER:
        from sampa.data.imagefolder import TOY_CROP, ensure_toy_imagefolder
        from sampa.data.imagenet import load_image_folder

        folder = ensure_toy_imagefolder(root)
        return ImageNetSource(load_image_folder(folder, device=device, workers=workers, crop=TOY_CROP))
    if name == "synthetic-text":
        return TextSource(synthetic_text_data(device=device), task=None)
    task = name.removeprefix("glue-")
    location = weights_location("bert-base", root)
    tokenizer = load_tokenizer(location, local_dir=local_weights("bert-base", root))
    return TextSource(load_glue(task, tokenizer, root=root, device=device), task=task)


def local_weights(model: str, root: str | os.PathLike | None = None) -> Path:
    """Where ``model``'s pretrained weights are looked for under the data root."""
    return resolve_root(root) / WEIGHTS[model]


def weights_location(model: str, root: str | os.PathLike | None = None) -> str:
    """``<data root>/weights/...`` for ``model`` if it exists there, else ``"hub"`` (the hub cache)."""
    path = local_weights(model, root)
    return str(path) if path.exists() else "hub"


class ImageNetSource:
    """ImageNet-1K (or the toy ImageFolder) batches from disk (:mod:`sampa.data.imagenet`), evaluated
    with top-1 and top-5."""

    def __init__(self, data: Any) -> None:
        self.data, self.num_classes = data, data.num_classes

    @property
    def train_size(self) -> int:
        return len(self.data.train)

    def train_batches(
        self, batch_size: int, *, seed: int, epoch: int, rows: Callable[[int], slice] | None = None
    ) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """Decodes only the images at ``rows(batch size)`` of each batch (the others are NaN)."""
        return self.data.train_batches(batch_size, seed=seed, epoch=epoch, rows=rows)

    def eval_batches(
        self, batch_size: int, rows: Callable[[int], slice] | None = None
    ) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """Decodes only the images at ``rows(len(val))``."""
        return self.data.eval_batches(batch_size, rows)

    def eval_columns(
        self, model: nn.Module, batch_size: int, rows: Callable[[int], slice] | None = None
    ) -> Columns:
        return topk_columns(model, self.eval_batches(batch_size, rows), ks=TOPK)

    def scores(self, columns: Columns) -> dict[str, float]:
        return topk_scores(columns, ks=TOPK)

    def evaluate(self, model: nn.Module, batch_size: int) -> dict[str, float]:
        return self.scores(self.eval_columns(model, batch_size))


class TextSource:
    """A tokenised text task on the device; ``task`` names its GLUE metrics (None: accuracy)."""

    def __init__(self, data: TextData, task: str | None) -> None:
        self.data, self.task, self.num_classes = data, task, data.num_labels

    @property
    def train_size(self) -> int:
        return len(self.data.train)

    @property
    def regression(self) -> bool:
        return self.data.regression

    def train_batches(
        self, batch_size: int, *, seed: int, epoch: int, rows: Callable[[int], slice] | None = None
    ) -> Iterator[tuple[Any, Tensor, Tensor]]:
        """Whole batches (``rows`` is ignored: the tokens are on the device already)."""
        return self.data.train_batches(batch_size, seed=seed, epoch=epoch)

    def eval_batches(
        self, batch_size: int, rows: Callable[[int], slice] | None = None
    ) -> Iterator[tuple[Any, Tensor, Tensor]]:
        return self.data.eval_batches(batch_size, rows)

    def eval_columns(
        self, model: nn.Module, batch_size: int, rows: Callable[[int], slice] | None = None
    ) -> Columns:
        return text_columns(model, self.eval_batches(batch_size, rows))

    def scores(self, columns: Columns) -> dict[str, float | None]:
        """``loss``, ``acc`` (None for regression), the task's metrics and ``task_score`` (fractions)."""
        return text_scores(columns, self.task)

    def evaluate(self, model: nn.Module, batch_size: int) -> dict[str, float | None]:
        return self.scores(self.eval_columns(model, batch_size))


def task_metric_names(name: str) -> tuple[str, ...]:
    """The task metrics a source records (GLUE: its task's; the synthetic text task: ``acc``); none for
    other datasets. Known from the name alone."""
    from sampa.metrics.scores import task_metric_names as names_of

    if name == "synthetic-text":
        return names_of(None)
    return names_of(name.removeprefix("glue-")) if name.startswith("glue-") else ()


def squared_error(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-sample regression loss (STS-B): (output - target)^2 of a [B, 1] output."""
    return (outputs[:, 0].float() - targets) ** 2


def source_task_settings(name: str) -> dict[str, Any]:
    """The paper's per-task settings of a GLUE source (epochs, rho); empty for other sources."""
    if not name.startswith("glue-"):
        return {}
    task = glue_task(name.removeprefix("glue-"))
    return {"epochs": task.epochs, "rho": task.rho}
