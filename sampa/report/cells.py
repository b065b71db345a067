"""The cell table: one row per table cell, from the planned runs and the runs table (no formatting).

:func:`cell_table` returns one row per table cell (its axes, metric, mean, std over seeds, n, the
runs that are missing, whether it is the best or second best of its line); :mod:`sampa.report.compare`
sets the paper's values beside them and :mod:`sampa.report.tables` renders both. The layers import one
way: cells -> compare -> tables.

Statistics: mean and sample standard deviation (ddof=1) over the seeds whose run completed; a
cell with fewer runs than planned says so (``n=4``), and every planned run that is not complete
(missing, interrupted, diverged, or without a value) is listed under the table, never dropped.
A cell whose runs were not planned because their data, weights or extra are missing here (the spec's
``needs``) shows "— [a]", and a line under the table says what [a] needs; an Average over fewer rows
(columns) than the table has says over how many ("(8 of 9 datasets)").
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pandas as pd

from sampa.config import config_from_dict, ignored_keys
from sampa.experiments import (
    MACHINE_KEYS,
    PlannedRun,
    axis_label,
    expand_experiment,
    is_measured,
    requirement_key,
    run_defaults,
    runnable,
)
from sampa.paths import generated_data
from sampa.report.metrics import Metric, applies, metric
from sampa.report.runs import timing_caveats

AVERAGE = "Average"
COST = "Temporal cost/Epochs"
COST_METRIC = "cost"
NOT_APPLICABLE = "not applicable"
#: the status of a run that is not planned: its data, weights or extra are missing here (spec ``needs``)
NEEDS = "needs"
#: statuses a cell without any value shows in place of its number (e.g. "-- (failed)")
QUIET_STATUSES = ("missing", "incomplete", NOT_APPLICABLE)
#: how axes read as table headers; grid values (models, datasets) get their display names from
#: sampa.experiments.axis_label, the one source the report uses
AXIS_NAMES = {
    "arm": "Method",
    "model": "Model",
    "dataset": "Dataset",
    "metric": "",
    "_row": "",
    "label_noise": "Noise rate",
    "batch_size": "Batch size",
    "hparams.lam": "λ",
    "hparams.rho": "ρ",
}


class TableError(ValueError):
    """A table cannot be built (message: one line)."""


# ----------------------------------------------------------------------------------------------
# The cell table


def cell_table(
    spec: Mapping[str, Any], runs: pd.DataFrame, planned: Sequence[PlannedRun] | None = None
) -> pd.DataFrame:
    """One row per cell: axis labels, ``metric``, ``mean``, ``std``, ``n``, ``n_planned``, ``best``,
    ``second`` (second best), ``reference``, ``fallback`` (a value came from the metric's fallback
    column), ``text`` (formatted), ``missing`` (the planned runs without a value), ``datasets`` and
    ``needs`` (what the cell's runs need that is missing here, so they were not planned). ``planned``:
    the experiment's runs, if the caller expanded them already (default :func:`expand_experiment`)."""
    layout = spec["table"]
    planned = expand_experiment(spec) if planned is None else list(planned)
    needs = spec.get("needs", {})
    axes = _cell_axes(layout, planned, spec["id"])
    obs = observations(planned, runs, layout["metrics"], needs)
    cells = _aggregate(obs, axes)
    if layout.get("average_row"):
        cells = pd.concat([cells, _average_rows(obs, axes, layout["rows"])], ignore_index=True)
    if layout.get("average_column"):  # first: e.g. Table 6's GLUE average of the task scores
        over = [a for a in layout["columns"] if a != "metric"][:1]
        averaged = observations(planned, runs, [layout["average_column"]], needs)
        cells = pd.concat([_average_rows(averaged, axes, over), cells], ignore_index=True)
    if layout.get("cost_row"):
        here = obs[obs["status"] != NEEDS] if len(obs) else obs
        cells = pd.concat([_cost_cells(here, axes, layout["columns"]), cells], ignore_index=True)
    cells["needs"] = cells["needs"].fillna("")
    cells["partial"] = cells.get("partial", pd.Series("", index=cells.index)).fillna("")
    cells["best"] = _ranked(cells, layout, 1)
    cells["second"] = _ranked(cells, layout, 2)
    markers = need_markers(cells)
    cells["text"] = [_cell_text(row, markers) for row in cells.itertuples(index=False)]
    columns = [
        *axes,
        "metric",
        "mean",
        "std",
        "n",
        "n_planned",
        "best",
        "second",
        "reference",
        "fallback",
        "text",
        "missing",
        "datasets",
        "needs",
        "partial",
    ]
    unranked = _unranked_note(cells, layout)
    cells = cells[columns]
    cells.attrs["unranked"] = unranked
    if any(is_measured(name) for name in layout["metrics"]):  # time/memory: say what may bias them
        cells.attrs["caveats"] = timing_caveats(runs, [run.path for run in runnable(spec, planned)])
    return cells


def observations(
    planned: Sequence[PlannedRun],
    runs: pd.DataFrame,
    metrics: Sequence[str],
    needs: Mapping[str, Sequence[str]] | None = None,
) -> pd.DataFrame:
    """One row per planned run and metric: its axis labels, seed, status, (scaled) value, its source and
    ``trained_on`` (the dataset's registry name; the ``dataset`` axis, if any, holds its display name).
    A metric that is not one of the run's dataset (a GLUE task's metric on another task) has no row.
    A run whose dataset/model pair is in ``needs`` (what it lacks here) has the status :data:`NEEDS`, no
    value and, in ``needs``, what it lacks (one line each, joined by "; ")."""
    by_run = runs.set_index("run") if len(runs) else pd.DataFrame(columns=["status"])
    needs = needs or {}
    rows = []
    for run in planned:
        lacks = needs.get(requirement_key(run.settings), [])
        found = run.path in by_run.index and not lacks
        record = by_run.loc[run.path] if found else None
        status = str(record["status"]) if found else (NEEDS if lacks else "missing")
        if status == "complete":
            status = stale_reason(record, run) or status
        dataset = str(run.settings.get("dataset") or run_defaults().dataset)
        for name in (m for m in metrics if applies(m, dataset)):
            value, source = _value(record, metric(name)) if status == "complete" else (math.nan, None)
            if status == "complete" and math.isnan(value):
                shown = NOT_APPLICABLE if metric(name).optional else "no value"
            else:
                shown = status
            rows.append(
                {
                    **run.cell,
                    "metric": name,
                    "seed": run.seed,
                    "run": run.path,
                    "status": shown,
                    "value": value,
                    "source": source,
                    "reference": run.reference,
                    "trained_on": _trained_on(run, record),
                    "epochs": record.get("config.epochs") if found else None,
                    "ideal_sequential": record.get("passes_per_step.ideal_sequential") if found else None,
                    "needs": "; ".join(lacks),
                }
            )
    return pd.DataFrame(rows)


def _trained_on(run: PlannedRun, record: pd.Series | None) -> str:
    recorded = record.get("dataset") if record is not None else None
    if isinstance(recorded, str) and recorded:
        return recorded
    return str(run.settings.get("dataset") or run_defaults().dataset)


def stale_reason(record: pd.Series, run: PlannedRun) -> str | None:
    """Why a finished run no longer matches its plan (e.g. a RunConfig default changed since), or None.

    Settings the run's record does not have (fields added to RunConfig later) are not compared, nor
    those the run does not read (:func:`~sampa.config.ignored_keys`: e.g. STS-B's label smoothing).
    """
    planned = config_from_dict(copy.deepcopy(run.settings)).to_dict()
    ignored = ignored_keys(planned)
    for key, value in planned.items():
        if key in MACHINE_KEYS or key == "hparams" or key in ignored:
            continue
        recorded = record.get(key if key in ("dataset", "model", "optimizer", "seed") else f"config.{key}")
        if recorded is None or (isinstance(recorded, float) and math.isnan(recorded)):
            continue
        if not _same_value(recorded, value):
            recorded = recorded.item() if hasattr(recorded, "item") else recorded  # numpy scalar
            return f"stale: {key} is {recorded!r} in the run, {value!r} planned"
    return None


def _same_value(recorded: Any, planned: Any) -> bool:
    if isinstance(planned, list | tuple):
        planned = "+".join(str(v) for v in planned)
    if isinstance(planned, bool) or isinstance(recorded, bool):
        return str(recorded).lower() == str(planned).lower()
    try:
        return math.isclose(float(recorded), float(planned), rel_tol=1e-12, abs_tol=0.0)
    except (TypeError, ValueError):
        return str(recorded) == str(planned)


def _value(record: pd.Series, m: Metric) -> tuple[float, str | None]:
    for column, source in ((m.column, m.column), (m.fallback, "fallback")):
        if column and column in record.index and _finite(record[column]):
            return float(record[column]) * m.scale, source
    return math.nan, None


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _cell_axes(layout: Mapping[str, Any], planned: Sequence[PlannedRun], experiment: str) -> list[str]:
    """Row and column axes (without ``metric``); every axis that varies must be one of them."""
    axes = [a for a in [*layout["rows"], *layout["columns"]] if a != "metric"]
    known = list(planned[0].cell) if planned else ["arm"]
    unknown = [a for a in axes if a not in known]
    if unknown:
        raise TableError(
            f"{experiment}: table axis {unknown[0]!r} is not an axis of the experiment ({', '.join(known)})"
        )
    varying = [a for a in known if len({run.cell[a] for run in planned}) > 1]
    hidden = [a for a in varying if a not in axes]
    if hidden:
        raise TableError(
            f"{experiment}: axis {hidden[0]!r} varies, so it must be in the table's rows or columns"
        )
    if "metric" not in [*layout["rows"], *layout["columns"]] and len(layout["metrics"]) > 1:
        raise TableError(f"{experiment}: several metrics need 'metric' in the table's rows or columns")
    return axes


def _aggregate(obs: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    keys = [*axes, "metric"]
    rows = []
    for key, group in obs.groupby(keys, sort=False, dropna=False):
        group = group[group["status"] != NOT_APPLICABLE]
        lacking = group[group["status"] == NEEDS]
        group = group[group["status"] != NEEDS]
        values = group["value"].dropna()
        missing = group[group["value"].isna()]
        statuses = set(missing["status"])
        rows.append(
            {
                **dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True)),
                "mean": values.mean() if len(values) else math.nan,
                "std": values.std(ddof=1) if len(values) > 1 else math.nan,
                "n": len(values),
                "n_planned": len(group),
                "missing": "; ".join(f"{r.run} ({r.status})" for r in missing.itertuples()),
                "datasets": "+".join(sorted({str(d) for d in group["trained_on"].dropna()})),
                "reference": bool(group["reference"].any()),
                "fallback": bool((group["source"] == "fallback").any()),
                "status_note": _status_note(statuses) if not len(values) else "",
                "needs": _joined_needs(lacking["needs"]),
            }
        )
    return pd.DataFrame(rows)


def _joined_needs(needs: pd.Series) -> str:
    """The distinct lines of some observations' ``needs``, in order, joined by "; "."""
    return "; ".join(dict.fromkeys(line for text in needs for line in str(text).split("; ") if line))


def need_markers(cells: pd.DataFrame) -> dict[str, str]:
    """Each distinct line of the cells' ``needs`` -> its marker ("a", "b", ...), in table order."""
    lines = dict.fromkeys(line for text in cells["needs"] for line in str(text).split("; ") if line)
    return {line: _marker(i) for i, line in enumerate(lines)}


def _marker(i: int) -> str:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return letters[i] if i < len(letters) else str(i + 1)


def _status_note(statuses: set[str]) -> str:
    """What a cell without values says instead of a number: the one status its runs share (failed,
    diverged, stale, ...), nothing for missing or unfinished runs."""
    if len(statuses) != 1:
        return ""
    status = statuses.pop().split(":")[0]
    return "" if status in QUIET_STATUSES else status


def _average_rows(obs: pd.DataFrame, axes: list[str], row_axes: Sequence[str]) -> pd.DataFrame:
    """The paper's "Average" row: per seed, the mean over the rows; then mean ± std over seeds.

    Only seeds whose runs are complete in every row count (a paired average). ``row_axes`` may be a
    column axis too: then it is an "Average" column (Table 6's GLUE average over the tasks). Rows whose
    runs were not planned here (:data:`NEEDS`) are left out, and the average says so (``partial``:
    "8 of 9 datasets"); with no row left it is empty and says what its rows need.
    """
    row_axes = [a for a in row_axes if a != "metric"]
    if not row_axes:
        return pd.DataFrame()
    column_keys = [a for a in axes if a not in row_axes] + ["metric"]
    rows = []
    for key, everything in obs.groupby(column_keys, sort=False, dropna=False):
        group = everything[everything["status"] != NEEDS]
        lines = len(everything[row_axes].drop_duplicates())
        kept = len(group[row_axes].drop_duplicates())
        per_seed = group.set_index(["seed", *row_axes])["value"].unstack(row_axes)
        complete = per_seed.dropna()  # seeds with a value in every row
        averages = complete.mean(axis=1)
        labels = dict(zip(column_keys, key if isinstance(key, tuple) else (key,), strict=True))
        rows.append(
            {
                **{a: (AVERAGE if i == 0 else "") for i, a in enumerate(row_axes)},
                **labels,
                "mean": averages.mean() if len(averages) else math.nan,
                "std": averages.std(ddof=1) if len(averages) > 1 else math.nan,
                "n": len(averages),
                "n_planned": group["seed"].nunique(),
                "missing": "",
                "datasets": "+".join(sorted({str(d) for d in group["trained_on"].dropna()})),
                "reference": bool(everything["reference"].any()),
                "fallback": bool((group["source"] == "fallback").any()),
                "status_note": "",
                "needs": "" if kept else _joined_needs(everything["needs"]),
                "partial": _partial(kept, lines, row_axes) if kept else "",
                "over": _rows_key(group[row_axes]),
            }
        )
    return pd.DataFrame(rows)


def _rows_key(rows: pd.DataFrame) -> str:
    """The rows an Average is taken over, as one string (equal strings: the same rows)."""
    return "\n".join(sorted({"\t".join(map(str, row)) for row in rows.itertuples(index=False)}))


def _partial(kept: int, lines: int, row_axes: Sequence[str]) -> str:
    """How many rows an Average covers when it leaves some out ("8 of 9 datasets"), else ""."""
    if kept == lines:
        return ""
    return f"{kept} of {lines} {' / '.join(axis_name(a).lower() for a in row_axes)}s"


def _cost_cells(obs: pd.DataFrame, axes: list[str], column_axes: Sequence[str]) -> pd.DataFrame:
    """The paper's "Temporal cost/Epochs" header row, measured: "×<sequential gradients>/<epochs>"."""
    column_axes = [a for a in column_axes if a != "metric"]
    row_axes = [a for a in axes if a not in column_axes]
    rows = []
    for key, group in obs.groupby(column_axes, sort=False, dropna=False):
        done = group[group["status"] == "complete"]
        cost = pd.to_numeric(done["ideal_sequential"], errors="coerce").dropna()
        epochs = sorted({int(e) for e in pd.to_numeric(done["epochs"], errors="coerce").dropna()})
        text = f"×{cost.mean():.3g}/{'+'.join(map(str, epochs))}" if len(cost) and epochs else "—"
        rows.append(
            {
                **{a: (COST if i == 0 else "") for i, a in enumerate(row_axes)},
                **dict(zip(column_axes, key if isinstance(key, tuple) else (key,), strict=True)),
                "metric": COST_METRIC,
                "mean": cost.mean() if len(cost) else math.nan,
                "std": math.nan,
                "n": int(done["run"].nunique()),
                "n_planned": int(group["run"].nunique()),
                "missing": "",
                "datasets": "",
                "reference": bool(group["reference"].any()),
                "fallback": False,
                "status_note": "",
                "text": text,
            }
        )
    return pd.DataFrame(rows)


def _ranked(cells: pd.DataFrame, layout: Mapping[str, Any], rank: int) -> list[bool]:
    """The best (``rank`` 1) or second best (2) method of each line (same other axes and metric).

    Reference arms, empty cells and cells holding a metric's fallback (host memory for device memory: not
    the quantity the table compares) never compete; ``best_groups`` limits the comparison to groups of
    arm labels (e.g. each variant against its +SAMPa combination). Averages over different rows (an arm
    lacks a dataset here) are not compared: their group has no best. Ties as printed share a rank; tables
    without an arm axis rank nothing.
    """
    flags = pd.Series(False, index=cells.index)
    for name, members in _competing(cells, layout):
        levels = sorted(set(members), reverse=metric(name).best == "max")
        if len(levels) >= rank and (rank == 1 or len(members) > 2):
            flags[members.index[members == levels[rank - 1]]] = True
    return flags.tolist()


def _competing(cells: pd.DataFrame, layout: Mapping[str, Any]) -> Iterator[tuple[str, pd.Series]]:
    """Each group of cells that compete for best: its metric and their means as printed."""
    for name, group in _groups(cells, layout):
        if _same_rows(group):
            yield name, group["mean"].round(metric(name).decimals)


def _groups(cells: pd.DataFrame, layout: Mapping[str, Any]) -> Iterator[tuple[str, pd.DataFrame]]:
    """The candidates of each line and ``best_groups`` group (see :func:`_ranked`), with their metric."""
    if "arm" not in cells.columns or cells["arm"].nunique() < 2:
        return
    line_keys = [
        c for c in cells.columns if c in (*layout["rows"], *layout["columns"], "metric") and c != "arm"
    ]
    for _, line in cells.groupby(line_keys, sort=False, dropna=False):
        name = line["metric"].iloc[0]
        if name == COST_METRIC or metric(name).best is None:
            continue
        candidates = line[(~line["reference"]) & (line["n"] > 0) & (~line["fallback"].astype(bool))]
        groups = layout.get("best_groups") or [list(candidates["arm"])]
        for group in groups:
            members = candidates[candidates["arm"].isin(group)]
            if len(members) >= 2 or len(groups) == 1:
                yield name, members


def _same_rows(cells: pd.DataFrame) -> bool:
    """Whether these cells' Averages (if they are) are taken over the same rows, so they compare."""
    return "over" not in cells or cells["over"].dropna().nunique() <= 1


def _unranked_note(cells: pd.DataFrame, layout: Mapping[str, Any]) -> str:
    """Says that Averages over different rows are not compared, where a table has them (else "")."""
    mixed = [group for _, group in _groups(cells, layout) if not _same_rows(group)]
    if not mixed:
        return ""
    partial = next((p for group in mixed for p in group["partial"] if p), "")  # "8 of 9 datasets"
    rows = partial.split(" ", 3)[-1] if partial else "rows"
    return f"{AVERAGE}s over different {rows} are not compared (none in bold)"


def _cell_text(row: Any, markers: Mapping[str, str]) -> str:
    if row.metric == COST_METRIC:
        return row.text
    marks = [markers[line] for line in str(row.needs).split("; ") if line]
    mark = f" [{','.join(marks)}]" if marks else ""
    if row.n == 0:  # no value (the footer lists the runs or what they need) or not applicable
        return f"— ({row.status_note}){mark}" if row.status_note else f"—{mark}"
    m = metric(row.metric)
    text = f"{row.mean:.{m.decimals}f}"
    if m.spread and row.n > 1:
        text += f" ± {row.std:.{m.decimals}f}"
    if row.n < row.n_planned:
        text += f" (n={row.n})"
    if row.partial:
        text += f" ({row.partial})"
    if row.fallback:
        text += " (host)"
    return text + mark


def axis_name(axis: str) -> str:
    """The header of a table axis ("batch_size" -> "Batch size")."""
    return AXIS_NAMES.get(axis, axis.replace("_", " ").capitalize())


def metric_label(name: str) -> str:
    return COST if name == COST_METRIC else metric(name).label


def warning_lines(spec: Mapping[str, Any], datasets: Sequence[str]) -> list[str]:
    """The config's note and, whenever runs used synthetic data, a line saying so."""
    lines = [spec["note"]] if spec.get("note") else []
    synthetic = sorted(axis_label("dataset", d) for d in datasets if generated_data(d))
    if synthetic and not any("synthetic" in line.lower() for line in lines):
        lines.append(f"Synthetic data ({', '.join(synthetic)}): these numbers are not the paper's results.")
    return lines


def datasets_of(cells: pd.DataFrame) -> list[str]:
    """The datasets the cells' runs trained on (registry names)."""
    return sorted({d for ds in cells["datasets"] for d in str(ds).split("+") if d and d != "nan"})
