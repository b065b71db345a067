"""The SAMPa paper's reported numbers (``results.csv``, transcribed from the NeurIPS 2024 paper; README.md).

:func:`paper_results` reads them and adds, for every row, the *keys* under which our tables look it up:

* ``paper``: "Table N", as in an experiment's ``paper:`` field;
* ``our_metric``: the name of our metric (:mod:`sampa.report.metrics`), or "" where we have none;
  GLUE's ``<task>_<metric>`` (``MRPC_f1``) is our ``glue_<metric>`` on the task's dataset, ``GLUE``
  (the average) our ``glue_score`` in the "Average" column;
* ``arm``: the method name, which is our arm label (the paper's names are our labels: "SAMPa-0.2",
  "mSAM (m=2)", "Penalizing", "ASAM+SAMPa", ...);
* ``reference``: the paper's grey column, i.e. the longer of two runs of one method in one cell
  (SAMPa-0.2 at 400 epochs in Tables 1-2), which our configs mark ``reference: true``;
* the grid axes of our configs: ``dataset`` (display names: "CIFAR-10", GLUE's "CoLA", "Average" for
  the GLUE average), ``model`` (the paper's model names are our display names),
  ``label_noise`` ("20%", from the note "label noise 20%" or "20% label noise"), ``batch_size``
  ("64", from "batch size 64") and ``setting`` (Table 13's rows: "ResNet-32 (80% noisy label)").

The mapping is written down here and nowhere else; rows that no table of a config matches are listed by
the tables and the scorecard, never dropped.
"""

from __future__ import annotations

import functools
import re
from importlib import resources

import pandas as pd

from sampa.experiments import DATASET_DISPLAY
from sampa.glue_tasks import METRIC_LABELS
from sampa.report.cells import AVERAGE

#: the paper's metric names -> ours ("" = no counterpart in sampa-bench)
METRIC_NAMES = {
    "test_acc": "test_acc",
    "time_per_epoch_s": "time_per_epoch_s",
    "time_per_batch_ms": "time_per_batch_ms",
    "memory_per_gpu_mib": "memory_per_device_mib",
    "top1_acc": "test_top1_acc",
    "top5_acc": "test_top5_acc",
    "GLUE": "glue_score",
}
#: grid axes a paper row can be matched on (besides the arm)
KEY_AXES = ("dataset", "model", "label_noise", "batch_size", "setting")
#: the paper's dataset names that are not ours (the benchmark a row belongs to, for summaries)
BENCHMARKS = {"glue": "GLUE", "imagenet1k": "ImageNet-1K"}
_GLUE_METRIC = re.compile(rf"([A-Za-z0-9-]+)_({'|'.join(METRIC_LABELS)})")
_NOISE = re.compile(r"label noise (\d+)%|(\d+)% label noise")
_BATCH = re.compile(r"batch size (\d+)")


def paper_ref(table: int | str) -> str:
    """ "Table 7" for 7 (how configs name a paper table)."""
    return f"Table {int(table)}"


@functools.cache
def _read() -> pd.DataFrame:
    with resources.files(__package__).joinpath("results.csv").open() as handle:
        return pd.read_csv(handle, dtype={"note": str, "epochs": str}, keep_default_na=False, na_values=[""])


def paper_results() -> pd.DataFrame:
    """Every paper row with its lookup keys (a fresh copy; the file is read and keyed once)."""
    return _keyed().copy()


@functools.cache
def _keyed() -> pd.DataFrame:
    rows = _read().copy()
    rows["note"] = rows["note"].fillna("")
    rows["paper"] = [paper_ref(t) for t in rows["table"]]
    pairs = list(zip(rows["dataset"], rows["metric"], strict=True))
    rows["our_metric"] = [_our_metric(d, m) for d, m in pairs]
    rows["benchmark"] = [BENCHMARKS.get(d, DATASET_DISPLAY.get(d, d)) for d in rows["dataset"]]
    rows["dataset"] = [_dataset_label(d, m) for d, m in pairs]
    rows["arm"] = rows["method"]
    rows["reference"] = _reference_flags(rows)
    noise = [_noise(note) for note in rows["note"]]
    rows["label_noise"] = noise
    rows["batch_size"] = [_match(_BATCH, note) for note in rows["note"]]
    rows["setting"] = [
        f"{model} ({pct}% noisy label)" if pct and "% label noise" in note else model
        for model, pct, note in zip(rows["model"], [n.rstrip("%") for n in noise], rows["note"], strict=True)
    ]
    return rows


def rows_of(paper: str) -> pd.DataFrame:
    """The rows of one paper table ("Table 7"); empty for anything else."""
    rows = _keyed()
    return rows[rows["paper"] == paper].reset_index(drop=True)


def describe(row: pd.Series, table: bool = True, dataset: bool = False) -> str:
    """A paper cell in words: "Table 7 ResNet-32 SAM test_acc, label noise 20%" (keys, no other notes);
    with ``dataset``, where it was measured too: "ViT-B/16 on CIFAR-100 SAM test_acc"."""
    parts = [row["paper"]] if table else []
    parts += [row["model"] + (f" on {row['benchmark']}" if dataset else "")]
    parts += [row["method"] + (" (grey column)" if row["reference"] else ""), row["metric"]]
    noise = f"label noise {row['label_noise']}" if row["label_noise"] else ""
    batch = f"batch size {row['batch_size']}" if row["batch_size"] else ""
    return ", ".join([" ".join(parts), *filter(None, [noise, batch])])


def describe_rows(rows: pd.DataFrame, table: bool = True) -> list[str]:
    """Paper cells in words (:func:`describe`), each with its dataset where its paper table has cells of
    several (Table 5: CIFAR-10 and CIFAR-100), so no two cells read the same."""
    several = {p for p in rows["paper"].unique() if rows_of(p)["benchmark"].nunique() > 1}
    return [describe(row, table, dataset=row["paper"] in several) for _, row in rows.iterrows()]


#: where a paper cell is (a summary splits cells that are not one product along these first)
_WHERE = ("benchmark", "model", "label_noise", "batch_size")
_UNIT = re.compile(r"\s*\([^)]*\)$")


def summarise(rows: pd.DataFrame) -> list[str]:
    """Paper cells (rows of :func:`rows_of`) in a few groups, each a product of models, benchmarks, label
    noises, batch sizes, methods and metrics: "BERT-base on GLUE (AdamW, SAM; GLUE score, MRPC Acc/F1)"."""
    if rows.empty:
        return []
    methods = zip(rows["method"], rows["reference"], strict=True)
    keys = pd.DataFrame(
        {
            **{k: rows[k].astype(str) for k in _WHERE},
            "method": [m + (" (grey column)" if grey else "") for m, grey in methods],
            "metric": [_metric_words(row) for _, row in rows.iterrows()],
        }
    ).drop_duplicates()
    return _groups(keys)


def _groups(keys: pd.DataFrame) -> list[str]:
    """``keys`` as products: split along the first column whose values do not all go with the same
    other cells, the values that do go together (a set that is a product along every column is one)."""
    if int(keys.nunique().prod()) == len(keys):
        return [_group_text(keys)]
    for column in keys.columns:
        rest = [c for c in keys.columns if c != column]
        partners = {
            value: frozenset(part[rest].itertuples(index=False, name=None))
            for value, part in keys.groupby(column, sort=False)
        }
        sets = dict.fromkeys(partners.values())
        together = [[v for v, p in partners.items() if p == same] for same in sets]
        if len(together) > 1:
            return [text for values in together for text in _groups(keys[keys[column].isin(values)])]
    raise AssertionError("unreachable: a set that is a product along every column is a product")


def _group_text(keys: pd.DataFrame) -> str:
    def values(column: str) -> list[str]:
        return [v for v in dict.fromkeys(keys[column]) if v]

    where = ", ".join(values("model")) + " on " + ", ".join(values("benchmark"))
    if values("label_noise"):
        where += ", label noise " + ", ".join(values("label_noise"))
    if values("batch_size"):
        where += ", batch size " + ", ".join(values("batch_size"))
    metrics = _compact([tuple(m.split("\t")) for m in dict.fromkeys(keys["metric"])])
    return f"{where} ({', '.join(values('method'))}; {metrics})"


def _metric_words(row: pd.Series) -> str:
    """A paper row's metric as a table reads it ("Test accuracy", "GLUE score", a task's "CoLA\tMcc")."""
    from sampa.report.metrics import METRICS

    if row["our_metric"] not in METRICS:
        return row["metric"]
    label = _UNIT.sub("", METRICS[row["our_metric"]].label)
    glue = row["benchmark"] == "GLUE" and row["dataset"] != AVERAGE
    return f"{row['dataset']}\t{label}" if glue else label


def _compact(metrics: list[tuple[str, ...]]) -> str:
    """Metric names, a task's several metrics joined: "MRPC Acc/F1"."""
    parts: list[list[str]] = []
    for metric in metrics:
        if len(metric) == 2 and parts and parts[-1][0] == metric[0]:
            parts[-1][1] += "/" + metric[1]
        else:
            parts.append(list(metric))
    return ", ".join(" ".join(p) for p in parts)


def _reference_flags(rows: pd.DataFrame) -> list[bool]:
    """True for the longer run where one method has two runs of different length in one cell."""
    cell = ["table", "dataset", "model", "method", "metric", "note"]
    epochs = pd.to_numeric(rows["epochs"], errors="coerce")
    longest = epochs.groupby([rows[c] for c in cell]).transform("max")
    runs = epochs.groupby([rows[c] for c in cell]).transform("count")
    return ((runs > 1) & (epochs == longest)).tolist()


def _our_metric(dataset: str, name: str) -> str:
    glue = _GLUE_METRIC.fullmatch(name) if dataset == "glue" else None
    return f"glue_{glue.group(2)}" if glue else METRIC_NAMES.get(name, "")


def _dataset_label(dataset: str, name: str) -> str:
    """The label of our ``dataset`` axis for a paper row: a GLUE task's name, "Average" for the GLUE
    average, else the dataset's display name ("cifar10" -> "CIFAR-10")."""
    glue = _GLUE_METRIC.fullmatch(name) if dataset == "glue" else None
    if glue:
        return glue.group(1)
    return AVERAGE if dataset == "glue" else DATASET_DISPLAY.get(dataset, dataset)


def _noise(note: str) -> str:
    match = _NOISE.search(note)
    return f"{match.group(1) or match.group(2)}%" if match else ""


def _match(pattern: re.Pattern[str], note: str) -> str:
    match = pattern.search(note)
    return match.group(1) if match else ""


__all__ = ["KEY_AXES", "METRIC_NAMES", "describe", "paper_ref", "paper_results", "rows_of", "summarise"]
