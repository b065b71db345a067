"""Evaluation scores beyond top-1 accuracy: top-k accuracy (ImageNet) and the GLUE task metrics.

The GLUE metrics follow the benchmark's definitions (the same values as scikit-learn/scipy):
Matthews correlation (CoLA), F1 of the positive class with accuracy (MRPC, QQP), Pearson and
Spearman correlation (STS-B; Spearman with average ranks for ties), accuracy otherwise. A task's
score is the mean of its metrics (:func:`task_score`), and the GLUE score is the mean of the task
scores (:func:`glue_average`), as the GLUE leaderboard computes them. Values are fractions (MCC and the
correlations in [-1, 1]), here and in ``metrics.json``; tables show them in percent. Which metrics a task
has is in :mod:`sampa.glue_tasks`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor

from sampa.glue_tasks import GLUE_METRICS


def topk_correct(logits: Tensor, targets: Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, Tensor]:
    """Number of samples whose target is among the ``k`` highest logits, for each ``k`` (device tensors)."""
    return {k: hits.sum() for k, hits in topk_hits(logits, targets, ks).items()}


def topk_hits(logits: Tensor, targets: Tensor, ks: Sequence[int]) -> dict[int, Tensor]:
    """Per sample, whether its target is among the ``k`` highest logits, for each ``k``."""
    num_classes = logits.shape[1]
    if any(not 1 <= k <= num_classes for k in ks):
        raise ValueError(f"top-k needs 1 <= k <= {num_classes} classes, got ks={list(ks)}")
    hits = logits.topk(max(ks), dim=1).indices == targets[:, None]  # [B, kmax], best first
    return {k: hits[:, :k].any(dim=1) for k in ks}


def accuracy(pred: Tensor, labels: Tensor) -> float:
    """Fraction of ``pred`` equal to ``labels``."""
    return float((pred == labels).double().mean())


def f1_binary(pred: Tensor, labels: Tensor) -> float:
    """F1 score of the positive class (label 1); 0 when there are no true positives."""
    tp = float(((pred == 1) & (labels == 1)).sum())
    fp = float(((pred == 1) & (labels != 1)).sum())
    fn = float(((pred != 1) & (labels == 1)).sum())
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def matthews_corrcoef(pred: Tensor, labels: Tensor) -> float:
    """Matthews correlation of binary predictions; 0 when undefined (a constant prediction or label)."""
    p, y = pred.double(), labels.double()
    tp, tn = float((p * y).sum()), float(((1 - p) * (1 - y)).sum())
    fp, fn = float((p * (1 - y)).sum()), float(((1 - p) * y).sum())
    denom = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return 0.0 if denom == 0 else (tp * tn - fp * fn) / denom


def pearson(x: Tensor, y: Tensor) -> float:
    """Pearson correlation coefficient (float64)."""
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    return float((x * y).sum() / (x.norm() * y.norm()))


def average_ranks(x: Tensor) -> Tensor:
    """1-based ranks of ``x`` with ties given their average rank (as ``scipy.stats.rankdata``)."""
    _, inverse, counts = torch.unique(x.double(), return_inverse=True, return_counts=True)
    last = counts.cumsum(0).double()  # rank of each distinct value's last copy
    return ((last - counts.double() + 1 + last) / 2)[inverse]


def spearman(x: Tensor, y: Tensor) -> float:
    """Spearman rank correlation: Pearson correlation of the average ranks."""
    return pearson(average_ranks(x), average_ranks(y))


def task_metric_names(task: str | None) -> tuple[str, ...]:
    """The metrics of GLUE task ``task``; ``None`` (a plain classification task): accuracy."""
    if task is None:
        return ("acc",)
    if task not in GLUE_METRICS:
        raise ValueError(f"unknown GLUE task {task!r}; choose one of: {', '.join(GLUE_METRICS)}")
    return GLUE_METRICS[task]


def task_score(task: str | None, scores: Mapping[str, float]) -> float:
    """A task's GLUE score: the mean of its metrics in ``scores`` (e.g. MRPC: (acc + f1) / 2)."""
    names = task_metric_names(task)
    return sum(scores[m] for m in names) / len(names)


def glue_scores(task: str, predictions: Tensor, labels: Tensor) -> dict[str, float]:
    """The GLUE metrics of ``task`` (fractions, not percent): class ids, or scores for ``stsb``."""
    if task not in GLUE_METRICS:
        raise ValueError(f"unknown GLUE task {task!r}; choose one of: {', '.join(GLUE_METRICS)}")
    if predictions.shape != labels.shape or predictions.numel() == 0:
        raise ValueError(
            f"need equal, non-empty shapes, got {list(predictions.shape)} and {list(labels.shape)}"
        )
    compute = {
        "acc": accuracy,
        "f1": f1_binary,
        "mcc": matthews_corrcoef,
        "pearson": pearson,
        "spearman": spearman,
    }
    return {name: compute[name](predictions, labels) for name in GLUE_METRICS[task]}


def glue_average(per_task: Mapping[str, Mapping[str, float]]) -> float:
    """The GLUE score: the mean over tasks of each task's mean metric (all nine tasks required)."""
    missing = sorted(set(GLUE_METRICS) - set(per_task))
    if missing:
        raise ValueError(f"the GLUE average needs all nine tasks; missing: {', '.join(missing)}")
    return sum(task_score(t, per_task[t]) for t in GLUE_METRICS) / len(GLUE_METRICS)


#: per-sample evaluation columns (``index``: the row in the eval set, ``loss``: float64 per-sample loss,
#: and a scorer's own columns), on the CPU: one process's rows, or every process's in eval-set order
Columns = dict[str, Tensor]


def merge_columns(parts: Sequence[Columns]) -> Columns:
    """Every process's columns (:data:`Columns`) as one set in eval-set order; raises unless the parts
    hold each row of the eval set exactly once."""
    filled = [part for part in parts if len(part["index"])] or list(parts[:1])  # a process may have none
    merged = {key: torch.cat([part[key] for part in filled]) for key in filled[0]}
    order = merged["index"].long().argsort(stable=True)
    merged = {key: value[order] for key, value in merged.items()}
    if not torch.equal(merged["index"].long(), torch.arange(len(order))):
        sizes = [len(part["index"]) for part in parts]
        raise RuntimeError(f"the evaluated rows (per process: {sizes}) are not each eval row exactly once")
    return merged


def _stacked(columns: dict[str, list[Tensor]]) -> Columns:
    """Each column's batches as one CPU tensor (one copy from the device per column); a process with no
    rows gets empty columns (dropped when merged)."""
    return {key: torch.cat(values).cpu() if values else torch.zeros(0) for key, values in columns.items()}


@torch.no_grad()
def topk_columns(
    model: torch.nn.Module, batches: Iterable[tuple[Tensor, Tensor, Tensor]], ks: Sequence[int] = (1, 5)
) -> Columns:
    """Per-sample cross-entropy and top-k hits (``top1``, ``top5``, ...) of ``model`` in eval mode over
    ``batches`` of (inputs, targets, eval-set indices)."""
    was_training = model.training
    model.eval()
    columns: dict[str, list[Tensor]] = {key: [] for key in ("index", "loss", *(f"top{k}" for k in ks))}
    for inputs, targets, indices in batches:
        logits = model(inputs).float()
        loss = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
        columns["loss"].append(loss.double())
        for k, hits in topk_hits(logits, targets, ks).items():
            columns[f"top{k}"].append(hits)
        columns["index"].append(indices)
    model.train(was_training)
    return _stacked(columns)


def topk_scores(columns: Columns, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Mean loss and top-k accuracies (``acc``: top-1, ``top5_acc``, ...) of all rows' columns."""
    n = len(columns["index"])
    hits = {("acc" if k == 1 else f"top{k}_acc"): int(columns[f"top{k}"].sum()) / n for k in ks}
    return {"loss": float(columns["loss"].sum()) / n} | hits


def evaluate_topk(
    model: torch.nn.Module, batches: Iterable[tuple[Tensor, Tensor, Tensor]], ks: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """Mean cross-entropy and top-k accuracies (``acc``: top-1, ``top5_acc``, ...) over ``batches``."""
    return topk_scores(topk_columns(model, batches, ks), ks)


@torch.no_grad()
def text_columns(
    model: torch.nn.Module, batches: Iterable[tuple[Mapping[str, Tensor], Tensor, Tensor]]
) -> Columns:
    """Per-sample loss (cross-entropy; squared error for a one-output regression model), prediction
    (class id, or the score) and target of ``model`` in eval mode over ``batches`` of a text task."""
    was_training = model.training
    model.eval()
    columns: dict[str, list[Tensor]] = {key: [] for key in ("index", "loss", "prediction", "target")}
    for inputs, targets, indices in batches:
        logits = model(**inputs).float()  # a mapping batch: model(**inputs), as the methods call it
        if logits.shape[1] == 1:  # regression (STS-B)
            loss, prediction = (logits[:, 0] - targets).square(), logits[:, 0]
        else:
            loss = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
            prediction = logits.argmax(dim=1)
        for key, value in zip(columns, (indices, loss.double(), prediction, targets), strict=True):
            columns[key].append(value)
    model.train(was_training)
    return _stacked(columns)


def text_scores(columns: Columns, task: str | None) -> dict[str, float | None]:
    """``loss``, ``acc`` (None for regression), the task's metrics and ``task_score`` of all rows."""
    predictions, targets = columns["prediction"], columns["target"]
    loss = float(columns["loss"].sum()) / len(targets)
    acc = None if predictions.is_floating_point() else accuracy(predictions, targets)
    metrics = glue_scores(task, predictions, targets) if task else {"acc": acc}
    return {"loss": loss, "acc": acc, **metrics, "task_score": task_score(task, metrics)}


def evaluate_text(
    model: torch.nn.Module, batches: Iterable[tuple[Mapping[str, Tensor], Tensor, Tensor]], task: str | None
) -> dict[str, float | None]:
    """Scores of ``model`` over ``batches`` of a text task (fractions):

    ``loss`` (cross-entropy; squared error for regression), ``acc`` (plain accuracy; None for the
    regression task STS-B), the task's metrics (:func:`task_metric_names`: e.g. ``mcc``, ``f1``,
    ``pearson``) and ``task_score``, their mean. ``task=None``: a classification task scored by
    accuracy alone (e.g. the synthetic one).
    """
    return text_scores(text_columns(model, batches), task)
