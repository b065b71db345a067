"""GLUE's nine tasks as the paper runs them (Table 6): names, display names, metrics, training-set sizes,
fine-tuning settings and where their fields are in the GLUE TSVs.

The one table of GLUE tasks: :mod:`sampa.data.glue` reads the data with it, :mod:`sampa.metrics.scores`
scores with its metrics, :mod:`sampa.experiments` and the report name the tasks with it. A leaf module:
it imports nothing of sampa, and no torch (planning and reporting import it cheaply).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: the GLUE data's folder under the data root
FOLDER = "glue"
#: a GLUE task's dataset name is this prefix and the task's name (``glue-cola``)
DATASET_PREFIX = "glue-"
#: metric -> its label in tables (Table 6's column names)
METRIC_LABELS = {"mcc": "Mcc", "acc": "Acc", "f1": "F1", "pearson": "Pearson", "spearman": "Spearman"}


@dataclass(frozen=True)
class TsvLayout:
    """Where a task's fields are in its GLUE TSVs: column names (or indices when there is no header)."""

    folder: str
    text: tuple[str | int, ...]
    label: str | int
    header: bool = True
    dev_file: str = "dev.tsv"
    label_codes: tuple[str, ...] = ()  # string labels in the hub's order ("" : labels are numbers)


@dataclass(frozen=True)
class GlueTask:
    """One GLUE task with the paper's fine-tuning settings (Table 6: epochs, rho)."""

    name: str
    display: str
    metrics: tuple[str, ...]  # GLUE's metrics of the task, in the order of Table 6's cells
    train_size: int  # training pairs (steps per epoch are known without reading data)
    text: tuple[str, ...]  # the hub's column names of the one or two texts
    num_labels: int  # 1: regression (STS-B)
    eval_split: str
    tsv: TsvLayout
    epochs: int = 3
    rho: float = 0.05

    @property
    def regression(self) -> bool:
        return self.num_labels == 1

    @property
    def dataset(self) -> str:
        """The task's dataset name (``glue-cola``)."""
        return DATASET_PREFIX + self.name


_NLI = ("entailment", "not_entailment")
_PAIR = ("sentence1", "sentence2")
GLUE_TASKS: dict[str, GlueTask] = {
    t.name: t
    for t in (
        GlueTask(
            "cola", "CoLA", ("mcc",), 8_551, ("sentence",), 2, "validation",
            TsvLayout("CoLA", (3,), 1, header=False), rho=0.01,
        ),
        GlueTask(
            "sst2", "SST-2", ("acc",), 67_349, ("sentence",), 2, "validation",
            TsvLayout("SST-2", ("sentence",), "label"),
        ),
        GlueTask(
            "mrpc", "MRPC", ("acc", "f1"), 3_668, _PAIR, 2, "validation",
            TsvLayout("MRPC", ("#1 String", "#2 String"), "Quality"), epochs=5,
        ),
        GlueTask(
            "stsb", "STS-B", ("pearson", "spearman"), 5_749, _PAIR, 1, "validation",
            TsvLayout("STS-B", _PAIR, "score"), rho=0.005,
        ),
        GlueTask(
            "qqp", "QQP", ("acc", "f1"), 363_846, ("question1", "question2"), 2, "validation",
            TsvLayout("QQP", ("question1", "question2"), "is_duplicate"),
        ),
        GlueTask(
            "mnli", "MNLI", ("acc",), 392_702, ("premise", "hypothesis"), 3, "validation_matched",
            TsvLayout(
                "MNLI", _PAIR, "gold_label", dev_file="dev_matched.tsv",
                label_codes=("entailment", "neutral", "contradiction"),
            ),
        ),
        GlueTask(
            "qnli", "QNLI", ("acc",), 104_743, ("question", "sentence"), 2, "validation",
            TsvLayout("QNLI", ("question", "sentence"), "label", label_codes=_NLI),
        ),
        GlueTask(
            "rte", "RTE", ("acc",), 2_490, _PAIR, 2, "validation",
            TsvLayout("RTE", _PAIR, "label", label_codes=_NLI), rho=0.005,
        ),
        GlueTask(
            "wnli", "WNLI", ("acc",), 635, _PAIR, 2, "validation",
            TsvLayout("WNLI", _PAIR, "label"), epochs=5,
        ),
    )
}  # fmt: skip
TASK_NAMES = tuple(GLUE_TASKS)
#: task -> its GLUE metric names, in the order of the paper's Table 6 cells
GLUE_METRICS: dict[str, tuple[str, ...]] = {name: task.metrics for name, task in GLUE_TASKS.items()}
#: dataset name -> display name (``glue-cola`` -> ``CoLA``)
GLUE_DISPLAY: dict[str, str] = {task.dataset: task.display for task in GLUE_TASKS.values()}
#: the datasets of tokenised text: GLUE's and the toy ``synthetic-text`` (every other dataset is images)
TEXT_DATASETS = (*GLUE_DISPLAY, "synthetic-text")


def glue_task(name: str) -> GlueTask:
    """The task called ``name`` (one of ``TASK_NAMES``)."""
    if name not in GLUE_TASKS:
        raise ValueError(f"unknown GLUE task {name!r}; choose one of: {', '.join(TASK_NAMES)}")
    return GLUE_TASKS[name]


def task_of(dataset: str) -> GlueTask | None:
    """The GLUE task of dataset name ``dataset`` (``glue-cola``), None for any other dataset."""
    name = dataset.removeprefix(DATASET_PREFIX)
    return GLUE_TASKS.get(name) if dataset.startswith(DATASET_PREFIX) else None


def split_files(name: str, split: str, root: Path) -> list[Path]:
    """The files of ``split`` ("train" or "eval") of task ``name`` under the data root's ``glue/``: its GLUE
    TSV, else the hub's parquet files; [] when neither is there."""
    task = glue_task(name)
    if split not in ("train", "eval"):
        raise ValueError(f"unknown GLUE split {split!r}; choose one of: train, eval")
    folder = root / FOLDER
    tsv_file = folder / task.tsv.folder / ("train.tsv" if split == "train" else task.tsv.dev_file)
    if tsv_file.is_file():
        return [tsv_file]
    hub_split = "train" if split == "train" else task.eval_split
    return sorted((folder / task.name).glob(f"{hub_split}-*.parquet"))
