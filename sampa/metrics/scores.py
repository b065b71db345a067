"""Evaluation scores beyond top-1 accuracy: top-k accuracy (ImageNet) and the GLUE task metrics.

The GLUE metrics follow the benchmark's definitions (the same values as scikit-learn/scipy):
Matthews correlation (CoLA), F1 of the positive class with accuracy (MRPC, QQP), Pearson and
Spearman correlation (STS-B; Spearman with average ranks for ties), accuracy otherwise. A task's
score is the mean of its metrics (:func:`task_score`), and the GLUE score is the mean of the task
scores (:func:`glue_average`), as the GLUE leaderboard computes them. Values are fractions here;
``metrics.json`` records the task metrics in percent (``sampa.train``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor


def topk_correct(logits: Tensor, targets: Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, Tensor]:
    """Number of samples whose target is among the ``k`` highest logits, for each ``k`` (device tensors)."""
    num_classes = logits.shape[1]
    if any(not 1 <= k <= num_classes for k in ks):
        raise ValueError(f"top-k needs 1 <= k <= {num_classes} classes, got ks={list(ks)}")
    top = logits.topk(max(ks), dim=1).indices  # [B, kmax], best first
    hits = top == targets[:, None]
    return {k: hits[:, :k].any(dim=1).sum() for k in ks}


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


#: task -> its GLUE metric names, in the order of the paper's Table 6 cells
GLUE_METRICS: dict[str, tuple[str, ...]] = {
    "cola": ("mcc",),
    "sst2": ("acc",),
    "mrpc": ("acc", "f1"),
    "stsb": ("pearson", "spearman"),
    "qqp": ("acc", "f1"),
    "mnli": ("acc",),
    "qnli": ("acc",),
    "rte": ("acc",),
    "wnli": ("acc",),
}


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


@torch.no_grad()
def evaluate_topk(
    model: torch.nn.Module, batches: Iterable[tuple[Tensor, Tensor, Tensor]], ks: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """Mean cross-entropy and top-k accuracies (``acc``: top-1, ``top5_acc``, ...) over ``batches``."""
    was_training = model.training
    model.eval()
    loss_sum, count, hits = 0.0, 0, dict.fromkeys(ks, 0.0)
    for inputs, targets, _ in batches:
        logits = model(inputs).float()
        loss_sum += float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))
        for k, n in topk_correct(logits, targets, ks).items():
            hits[k] += float(n)
        count += targets.shape[0]
    model.train(was_training)
    return {"loss": loss_sum / count} | {("acc" if k == 1 else f"top{k}_acc"): hits[k] / count for k in ks}


@torch.no_grad()
def evaluate_text(
    model: torch.nn.Module, batches: Iterable[tuple[Mapping[str, Tensor], Tensor, Tensor]], task: str | None
) -> dict[str, float | None]:
    """Scores of ``model`` over ``batches`` of a text task (fractions):

    ``loss`` (cross-entropy; squared error for regression), ``acc`` (plain accuracy; None for the
    regression task STS-B), the task's metrics (:func:`task_metric_names`: e.g. ``mcc``, ``f1``,
    ``pearson``) and ``task_score``, their mean. ``task=None``: a classification task scored by
    accuracy alone (e.g. the synthetic one).
    """
    was_training = model.training
    model.eval()
    outputs, labels = [], []
    for inputs, targets, _ in batches:
        outputs.append(model(**inputs).float())  # a mapping batch: model(**inputs), as the methods call it
        labels.append(targets)
    model.train(was_training)
    logits, targets = torch.cat(outputs), torch.cat(labels)
    if logits.shape[1] == 1:  # regression (STS-B)
        loss, predictions, acc = (logits[:, 0] - targets).square().mean(), logits[:, 0], None
    else:
        loss, predictions = torch.nn.functional.cross_entropy(logits, targets), logits.argmax(dim=1)
        acc = accuracy(predictions, targets)
    metrics = glue_scores(task, predictions, targets) if task else {"acc": acc}
    return {"loss": float(loss), "acc": acc, **metrics, "task_score": task_score(task, metrics)}
