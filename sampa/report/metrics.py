"""The quantities tables and figures show: where each comes from in the runs table and how it reads;
and the reader of a run's ``metrics.json`` (keys defined once, in :mod:`sampa.rundir`)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from sampa.glue_tasks import METRIC_LABELS, task_of
from sampa.rundir import METRICS_KEYS, DamagedFileError, read_metrics

__all__ = [
    "METRICS",
    "METRICS_KEYS",
    "DamagedFileError",
    "Metric",
    "MetricError",
    "metric",
    "read_run_metrics",
]


def read_run_metrics(path: str | os.PathLike) -> dict[str, Any]:
    """A finished run's ``metrics.json``. A damaged one (empty, truncated, not JSON, no status) raises
    :class:`DamagedFileError` with one line naming the file, so an aggregation can skip that run with
    a warning."""
    return read_metrics(path)


@dataclass(frozen=True)
class Metric:
    """A column of ``runs.csv`` (or of the per-epoch table), scaled and labelled for presentation.

    ``best``: ``max``/``min`` marks the best cell in bold; ``None`` never does. ``spread``: show
    ``mean ± std`` over seeds (otherwise the mean only). ``bounds``: the range of the shown value (a
    figure's ± std band is clipped to it: an accuracy band never runs above 100 %).
    """

    label: str
    column: str
    scale: float = 1.0
    decimals: int = 2
    best: str | None = None
    spread: bool = True
    per_epoch: bool = False
    fallback: str | None = None  # column used where ``column`` is empty (said in the table's notes)
    fallback_note: str = ""
    optional: bool = False  # runs without a value are "not applicable", not missing (e.g. one device)
    bounds: tuple[float, float] = (-math.inf, math.inf)


#: the range of a percentage (accuracy, F1, a share) and of a correlation in percent (Mcc, Pearson)
PERCENT = (0.0, 100.0)
CORRELATION = (-100.0, 100.0)


METRICS: dict[str, Metric] = {
    # accuracy of the best-validation checkpoint on the test set (the paper's protocol, Section 5.1)
    "test_acc": Metric("Test accuracy (%)", "test_acc", scale=100, best="max", bounds=PERCENT),
    # ImageNet: test_acc is top-1
    "test_top1_acc": Metric("Top-1 (%)", "test_acc", scale=100, best="max", bounds=PERCENT),
    "test_top5_acc": Metric(
        "Top-5 (%)", "test_top5_acc", scale=100, best="max", optional=True, bounds=PERCENT
    ),
    # text tasks (fractions in metrics.json, shown in %): the task's GLUE score (mean of its metrics) and
    # each metric; a GLUE task has only its own metrics (:func:`applies`); CoLA's score is its Mcc
    "glue_score": Metric(
        "GLUE score", "test_task_score", scale=100, decimals=1, best="max", bounds=CORRELATION
    ),
    **{
        f"glue_{name}": Metric(
            label,
            f"test_task_metrics.{name}",
            scale=100,
            decimals=1,
            best="max",
            optional=True,
            bounds=PERCENT if name in ("acc", "f1") else CORRELATION,
        )
        for name, label in METRIC_LABELS.items()
    },
    "final_test_acc": Metric(
        "Final test accuracy (%)", "final_test_acc", scale=100, best="max", bounds=PERCENT
    ),
    "best_val_acc": Metric(
        "Best validation accuracy (%)", "best_val_acc", scale=100, best="max", bounds=PERCENT
    ),
    # synchronised training time, evaluation excluded; median over epochs after the first
    "time_per_epoch_s": Metric("Time/epoch (s)", "time.epoch_median_s", best="min"),
    "time_per_batch_ms": Metric("Time/batch (ms)", "time.step_median_s", scale=1000, best="min"),
    # gradient computations per update: one after the other if independent ones ran in parallel
    # (the paper's "temporal cost"), and as they actually ran on this executor
    "sequential_grads": Metric("Sequential gradients/update", "passes_per_step.ideal_sequential", best="min"),
    "measured_sequential_grads": Metric(
        "Sequential gradients/update (as run)", "passes_per_step.sequential", best="min"
    ),
    "forward_passes": Metric("Forward passes/update", "passes_per_step.forward", best="min"),
    "memory_per_device_mib": Metric(
        "Memory per device (MiB)",
        "memory.device_peak_mib",
        decimals=0,
        best="min",
        fallback="memory.cpu_peak_rss_mib",
        fallback_note="runs on CPU have no device memory: their peak host RSS is shown instead",
    ),
    "cpu_peak_rss_mib": Metric("Peak host memory (MiB)", "memory.cpu_peak_rss_mib", decimals=0, best="min"),
    "devices": Metric("Number of devices", "config.devices", decimals=0, spread=False),
    # two-device runs: time blocked at gradient exchanges, as a share of training time
    "communication_share": Metric(
        "Communication (% of train time)",
        "backend.share_of_train_time.comm_s",
        scale=100,
        decimals=1,
        optional=True,
        bounds=PERCENT,
    ),
    # per-epoch series from log.jsonl (SAMPa's diagnostics_every probe, paper Figure 4)
    "grad_cosine": Metric(
        "cos(∇f(y_t), ∇f(x_t))", "stats.grad_cosine.mean", decimals=4, per_epoch=True, bounds=(-1.0, 1.0)
    ),
    "grad_distance": Metric("‖∇f(y_t) − ∇f(x_t)‖", "stats.grad_distance.mean", decimals=4, per_epoch=True),
    # per-epoch share of steps that were SAM steps (LookSAM, AE-SAM, vSAM record ``sam_step`` per step)
    "sam_step_rate": Metric(
        "SAM steps (share of steps)", "stats.sam_step.mean", decimals=3, per_epoch=True, bounds=(0.0, 1.0)
    ),
    "val_acc": Metric("Validation accuracy (%)", "val_acc", scale=100, per_epoch=True, bounds=PERCENT),
    "train_loss": Metric("Training loss", "train_loss", decimals=3, per_epoch=True),
}


def applies(name: str, dataset: str) -> bool:
    """Whether metric ``name`` is one of ``dataset``'s: a GLUE task has only its own metrics (Table 6's
    columns: CoLA Mcc, STS-B Pearson/Spearman, MRPC and QQP Acc/F1, others Acc)."""
    column = METRICS[name].column
    task = task_of(dataset)
    if task is None or not column.startswith("test_task_metrics."):
        return True
    return column.removeprefix("test_task_metrics.") in task.metrics


class MetricError(ValueError):
    """Unknown metric name (one line listing the valid names)."""


def metric(name: str) -> Metric:
    try:
        return METRICS[name]
    except KeyError:
        raise MetricError(f"unknown metric {name!r}; choose one of: {', '.join(METRICS)}") from None
