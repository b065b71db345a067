"""Our table cells beside the paper's: ours ± std (n), the paper's ± std, the difference and a verdict.

A cell of a table whose experiment names a paper table (``paper: "Table N"``) is compared with the paper
row that has the same metric, the same arm (the paper's method name is our arm label; the paper's grey
column matches our ``reference`` arm) and the same labels on every grid axis of the table (model, label
noise, batch size, Table 13's setting). Where the paper table varies the model but ours does not (a smoke
table on TinyCNN), the model of the cell's runs must match, so no cell is compared with the wrong model.
Our "Average" row (column) is compared only when it averages the same models (GLUE tasks) as the
paper's. A paper row that no cell matches is listed, never dropped.

Rule: Δ = ours − paper; a cell is *within* when |Δ| ≤ the larger of the two standard deviations (ours
over seeds, the paper's), or |Δ| ≤ 0.1 where the paper gives no std; else *outside*. Time and memory are
compared as ratios to the same table's SAM cell on both sides (absolute times depend on the hardware):
ours per seed (the method's value / SAM's value of the same seed, then mean ± std over seeds), the
paper's from its two numbers. Table 12 has no SAM column: its ratios are to the batch-size-128 cell.
Runs on synthetic data get the paper column but no Δ and no verdict. Memory measured on the host (runs on
CPU have no device memory) is never compared with the paper's device memory.

Layers: :mod:`sampa.report.cells` -> this module (the comparison and its text) -> :mod:`sampa.report.tables`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from sampa.experiments import PlannedRun, axis_label, plan_experiment, run_defaults, runnable
from sampa.paths import generated_data
from sampa.report import latex, paper
from sampa.report.cells import AVERAGE, COST_METRIC, axis_name, metric_label, observations
from sampa.report.metrics import metric

#: the verdict of a cell whose runs were not planned: their data, weights or extra are missing here
NOT_HERE = "not run here"
#: compared as ratios to the table's base cell (absolute values depend on the hardware)
RATIO_METRICS = ("time_per_epoch_s", "time_per_batch_ms", "memory_per_device_mib")
#: (axis, label) of the ratio base per paper table; every other table: the SAM arm
RATIO_BASES = {"Table 12": ("batch_size", "128")}
DEFAULT_RATIO_BASE = ("arm", "SAM")
#: |Δ| allowed where the paper gives no std (percentage points, or ratio units for time and memory)
NO_STD_TOLERANCE = 0.1
WITHIN, OUTSIDE = "within", "outside"
NO_VERDICT_SYNTHETIC = "no verdict (synthetic data)"
NO_VERDICT_HOST = "no verdict (host memory, no device)"
UNMATCHED = "Paper cells without a counterpart here"
_PARENTHESIS = re.compile(r"\s*\([^)]*\)$")


@dataclass(frozen=True)
class Comparison:
    """The compared cells (``frame``, indexed like the cell table) and the paper cells left unmatched."""

    paper: str
    frame: pd.DataFrame
    unmatched: list[str]
    synthetic: bool
    ratio_base: str
    unmatched_groups: tuple[str, ...]  # the unmatched cells summarised (:func:`paper.summarise`)

    def counts(self) -> dict[str, int]:
        verdicts = self.frame["verdict"].value_counts() if len(self.frame) else pd.Series(dtype=int)
        return {
            "compared": len(self.frame),
            WITHIN: int(verdicts.get(WITHIN, 0)),
            OUTSIDE: int(verdicts.get(OUTSIDE, 0)),
            "unmatched": len(self.unmatched),
        }


def compare(
    spec: Mapping[str, Any],
    cells: pd.DataFrame,
    runs: pd.DataFrame,
    planned: Sequence[PlannedRun] | None = None,
) -> Comparison | None:
    """The comparison of a table's cells (:func:`sampa.report.cells.cell_table`) with its paper table;
    ``planned``: the experiment's runs, if the caller expanded them already (every run, as
    :func:`sampa.experiments.expand_experiment` gives them; those that can run here are compared).

    None when the experiment names no paper table with numbers we can compare.
    """
    rows = paper.rows_of(spec.get("paper", ""))
    rows = rows[rows["our_metric"] != ""]
    if rows.empty:
        return None
    layout = spec["table"]
    axes = [a for a in [*layout["rows"], *layout["columns"]] if a != "metric"]
    planned = plan_experiment(spec) if planned is None else runnable(spec, list(planned))
    matches = _match_cells(cells, rows, axes, planned)
    obs = observations(planned, runs, layout["metrics"])
    synthetic = any(generated_data(str(d)) for d in obs["trained_on"].dropna())
    base_axis, base_label = RATIO_BASES.get(spec["paper"], DEFAULT_RATIO_BASE)
    frame = pd.DataFrame(
        [
            _compared(cells.loc[i], rows.loc[j], axes, (base_axis, base_label), cells, matches, rows, obs)
            for i, j in matches.items()
        ],
        index=list(matches),
        columns=_COLUMNS,
    )
    if synthetic:
        frame = frame.assign(delta=math.nan, tolerance=math.nan, verdict=NO_VERDICT_SYNTHETIC)
    host = cells.loc[frame.index, "fallback"].to_numpy() & frame["ratio"].to_numpy(dtype=bool)
    texts = zip(frame.itertuples(), host, strict=True)
    frame["ours_text"] = ["host memory" if h else _ours_text(r) for r, h in texts]
    frame["paper_text"] = [_paper_text(r) for r in frame.itertuples()]
    frame["delta_text"] = [_delta_text(r) for r in frame.itertuples()]
    used = set(matches.values())
    left = rows.loc[[j for j in rows.index if j not in used]]
    unmatched = paper.describe_rows(left, table=False)
    base = "SAM" if base_axis == "arm" else f"{base_axis.replace('_', ' ')} {base_label}"
    return Comparison(spec["paper"], frame, unmatched, synthetic, base, tuple(paper.summarise(left)))


_COLUMNS = [
    "paper_value",
    "paper_value_std",
    "metric",
    "ratio",
    "ours_mean",
    "ours_std",
    "ours_n",
    "paper_mean",
    "paper_std",
    "delta",
    "tolerance",
    "verdict",
]


# ----------------------------------------------------------------------------------------------
# Matching cells to paper rows


def _match_cells(
    cells: pd.DataFrame, rows: pd.DataFrame, axes: list[str], planned: list[PlannedRun]
) -> dict[Any, Any]:
    """Cell index -> paper row index, for the cells with exactly one paper counterpart."""
    varies = {k for k in paper.KEY_AXES if rows[k].nunique() > 1}  # several matches: left unmatched
    partial = _partial_averages(cells, rows, axes)
    out: dict[Any, Any] = {}
    for i, cell in cells.iterrows():
        if cell["metric"] == COST_METRIC or any(cell.get(axis) == AVERAGE for axis in partial):
            continue
        wanted = _cell_keys(cell, axes, varies, planned)
        if wanted is None:
            continue
        mask = rows["our_metric"] == cell["metric"]
        for key, value in wanted.items():
            mask &= rows[key] == value
        found = rows.index[mask]
        if len(found) == 1:
            out[i] = found[0]
    return out


def _partial_averages(cells: pd.DataFrame, rows: pd.DataFrame, axes: list[str]) -> list[str]:
    """The axes whose Average (a row over models, a column over GLUE tasks) averages fewer labels than
    the paper's (then it is not comparable). Cells whose runs were not planned here (``needs``: data,
    weights or an extra missing) are not averaged, so their labels do not count."""
    partial = []
    averaged = cells[(cells["needs"] == "") | (cells["n"] > 0)] if "needs" in cells else cells
    for axis in ("model", "dataset"):
        if axis in axes and not set(rows[axis]) - {AVERAGE} <= set(averaged[axis]) - {AVERAGE}:
            partial.append(axis)
    return partial


def _cell_keys(
    cell: pd.Series, axes: list[str], varies: set[str], planned: list[PlannedRun]
) -> dict[str, Any] | None:
    """The paper keys a cell must match: the arm, every grid axis of the table, and the model of the
    cell's runs where the paper varies the model and the table does not."""
    run = _representative(cell, axes, planned)
    arm = cell["arm"] if "arm" in axes else (run.cell["arm"] if run else None)
    if arm is None:
        return None
    reference = bool(cell["reference"])
    keys: dict[str, Any] = {"arm": _PARENTHESIS.sub("", arm) if reference else arm, "reference": reference}
    keys |= {key: cell[key] for key in paper.KEY_AXES if key in axes}
    if "model" in varies and "model" not in axes:
        if run is None:
            return None
        keys["model"] = axis_label("model", run.settings.get("model", run_defaults().model))
    return keys


def _representative(cell: pd.Series, axes: list[str], planned: list[PlannedRun]) -> PlannedRun | None:
    """A planned run of the cell (the Average row has none of its own: any run of its column)."""
    for run in planned:
        if all(run.cell.get(a) == cell[a] or a not in run.cell for a in axes):
            return run
    columns = [a for a in axes if a == "arm"]
    return next((r for r in planned if all(r.cell.get(a) == cell[a] for a in columns)), None)


# ----------------------------------------------------------------------------------------------
# One compared cell


def _compared(
    cell: pd.Series,
    row: pd.Series,
    axes: list[str],
    base: tuple[str, str],
    cells: pd.DataFrame,
    matches: Mapping[Any, Any],
    rows: pd.DataFrame,
    obs: pd.DataFrame,
) -> dict[str, Any]:
    name = cell["metric"]
    raw = {"paper_value": row["mean"], "paper_value_std": row["std"]}
    if cell.get("needs") and not cell["n"]:  # its runs lack data, weights or an extra here
        ratio = name in RATIO_METRICS
        paper_mean, paper_std = (math.nan, math.nan) if ratio else (row["mean"], row["std"])
        return raw | _verdict(name, ratio, math.nan, math.nan, 0, paper_mean, paper_std, NOT_HERE)
    if name not in RATIO_METRICS:
        return raw | _verdict(name, False, cell["mean"], cell["std"], int(cell["n"]), row["mean"], row["std"])
    base_index = _base_cell(cell, axes, base, cells)
    if base_index is None or base_index not in matches:
        return raw | _verdict(name, True, math.nan, math.nan, 0, math.nan, math.nan, "no base cell")
    paper_ratio = row["mean"] / rows.loc[matches[base_index], "mean"]
    if cell["fallback"] or cells.loc[base_index, "fallback"]:  # host RSS: not the paper's device memory
        return raw | _verdict(name, True, math.nan, math.nan, 0, paper_ratio, math.nan, NO_VERDICT_HOST)
    if base_index == cell.name:
        return raw | _verdict(name, True, 1.0, math.nan, int(cell["n"]), 1.0, math.nan, "ratio base")
    ratios = seed_ratios(obs, cell, cells.loc[base_index], axes)
    std = ratios.std(ddof=1) if len(ratios) > 1 else math.nan
    mean = ratios.mean() if len(ratios) else math.nan
    return raw | _verdict(name, True, mean, std, len(ratios), paper_ratio, math.nan)


def _base_cell(cell: pd.Series, axes: list[str], base: tuple[str, str], cells: pd.DataFrame) -> Any:
    axis, label = base
    if axis not in axes:
        return None
    mask = (cells["metric"] == cell["metric"]) & (cells[axis] == label)
    for other in axes:
        if other != axis:
            mask &= cells[other] == cell[other]
    found = cells.index[mask]
    return found[0] if len(found) == 1 else None


def seed_ratios(obs: pd.DataFrame, cell: pd.Series, base: pd.Series, axes: list[str]) -> pd.Series:
    """Per seed: the cell's value / the base cell's value of the same seed (seeds with both values)."""

    def values(target: pd.Series) -> pd.Series:
        mask = (obs["metric"] == target["metric"]) & (obs["source"] != "fallback")
        for axis in axes:
            mask &= obs[axis] == target[axis]
        return obs[mask].set_index("seed")["value"]

    ratio = (values(cell) / values(base)).dropna()
    return ratio[ratio.map(math.isfinite)]


def _verdict(
    name: str,
    ratio: bool,
    mean: float,
    std: float,
    n: int,
    paper_mean: float,
    paper_std: float,
    verdict: str = "",
) -> dict[str, Any]:
    delta = mean - paper_mean if n and not verdict else math.nan
    tolerance = within_tolerance(std if n > 1 else math.nan, paper_std)
    if not verdict:
        verdict = "no runs" if n == 0 else (WITHIN if abs(delta) <= tolerance + 1e-12 else OUTSIDE)
    return {
        "metric": name,
        "ratio": ratio,
        "ours_mean": mean,
        "ours_std": std,
        "ours_n": n,
        "paper_mean": paper_mean,
        "paper_std": paper_std,
        "delta": delta,
        "tolerance": tolerance if not math.isnan(delta) else math.nan,
        "verdict": verdict,
    }


def within_tolerance(ours_std: float, paper_std: float) -> float:
    """The larger of the two stds where the paper gives one, else :data:`NO_STD_TOLERANCE`."""
    if paper_std is None or not math.isfinite(paper_std):
        return NO_STD_TOLERANCE
    return max(paper_std, ours_std) if math.isfinite(ours_std) else paper_std


# ----------------------------------------------------------------------------------------------
# Text


def _decimals(row: Any) -> int:
    return 2 if row.ratio else metric(row.metric).decimals


def _number(value: float, decimals: int, ratio: bool) -> str:
    return f"{value:.{decimals}f}" + ("×" if ratio else "")


def _ours_text(row: Any) -> str:
    if row.ours_n == 0:
        return "—"
    text = _number(row.ours_mean, _decimals(row), row.ratio)
    if row.ours_n > 1 and math.isfinite(row.ours_std):
        text += f" ± {row.ours_std:.{_decimals(row)}f}"
    return text + f" (n={row.ours_n})"


def _paper_text(row: Any) -> str:
    if not math.isfinite(row.paper_mean):
        return "—"
    text = _number(row.paper_mean, _decimals(row), row.ratio)
    return text + (f" ± {row.paper_std:.{_decimals(row)}f}" if math.isfinite(row.paper_std) else "")


def _delta_text(row: Any) -> str:
    if not math.isfinite(row.delta):
        return ""
    return f"{round(row.delta, _decimals(row)) + 0.0:+.{_decimals(row)}f}"  # + 0.0: no "-0.00"


def rule_lines(comparison: Comparison) -> list[str]:
    """How to read the comparison (shown under it)."""
    lines = [
        "Ours = mean ± sample std (n seeds); Δ = ours − paper; "
        f"within: |Δ| ≤ the larger of the two stds (≤ {NO_STD_TOLERANCE:g} where the paper gives no std)."
    ]
    if comparison.frame["ratio"].any():
        lines.append(
            f"Time and memory as ratios to {comparison.ratio_base} of the same table on both sides "
            "(ours: per seed, then mean ± std)."
        )
    if comparison.synthetic:
        lines.append("Synthetic data: the paper's numbers are shown for reference only; no Δ, no verdicts.")
    return lines


def unmatched_line(comparison: Comparison) -> str:
    """The paper cells without a counterpart, counted and grouped: "Paper cells without a counterpart here
    (52): BERT-base on GLUE (AdamW, SAM, ...; GLUE score, CoLA Mcc, ...)"; "" when every cell has one."""
    if not comparison.unmatched:
        return ""
    return f"{UNMATCHED} ({len(comparison.unmatched)}): {'; '.join(comparison.unmatched_groups)}."


# ----------------------------------------------------------------------------------------------
# Rendering (under the main table, by sampa.report.tables)


def comparison_frame(spec: Mapping[str, Any], cells: pd.DataFrame, comparison: Comparison) -> pd.DataFrame:
    """The compared cells as text: axis labels, metric, ours, the paper's, Δ and the verdict.

    Synthetic runs get no Δ and no verdict columns.
    """
    layout = spec["table"]
    axes = [a for a in [*layout["rows"], *layout["columns"]] if a != "metric"]
    frame = comparison.frame
    out = pd.DataFrame({axis_name(a): cells.loc[frame.index, a] for a in axes}, index=frame.index)
    base = comparison.ratio_base
    labels = zip(frame["metric"], frame["ratio"], strict=True)
    out["Metric"] = [_compared_label(m, r, base) for m, r in labels]
    out["Ours"] = frame["ours_text"]
    out["Paper"] = frame["paper_text"]
    if not comparison.synthetic:
        out["Δ"] = frame["delta_text"]
        out["Verdict"] = frame["verdict"]
    return out.reset_index(drop=True)


def _compared_label(name: str, ratio: bool, base: str) -> str:
    label = metric_label(name)
    return f"{label.rsplit(' (', 1)[0]} (× {base})" if ratio else label


def comparison_markdown(spec: Mapping[str, Any], cells: pd.DataFrame, comparison: Comparison) -> list[str]:
    """The comparison's Markdown blocks: heading, table (if any cell matched) and how to read it."""
    compared = comparison_frame(spec, cells, comparison)
    parts = [f"**Against the paper ({comparison.paper})**"]
    parts += [compared.to_markdown(index=False, disable_numparse=True)] if len(compared) else []
    return [*parts, "\n".join(filter(None, [*rule_lines(comparison), unmatched_line(comparison)]))]


def comparison_latex(spec: Mapping[str, Any], cells: pd.DataFrame, comparison: Comparison) -> str:
    """The comparison as a second table float whose caption ends with the unmatched paper cells; without
    compared cells a comment (the table's own caption then names the unmatched cells)."""
    caption = f"Against the paper ({comparison.paper}). " + " ".join(rule_lines(comparison))
    compared = comparison_frame(spec, cells, comparison)
    if compared.empty:
        return f"% {latex.plain(caption)}\n"
    caption = " ".join(filter(None, [caption, unmatched_line(comparison)]))
    header = [" & ".join(latex.escape(c) for c in compared.columns) + r" \\"]
    rows = [[latex.escape(v) for v in row] for row in compared.itertuples(index=False)]
    values = [c for c in compared.columns if c in ("Ours", "Paper", "Δ", "Verdict")]
    columns = "l" * (len(compared.columns) - len(values)) + "c" * len(values)
    body = latex.fit_to_width(latex.tabular(header, rows, columns))
    return "\n" + latex.float_table(body, latex.escape(caption), f"tab:{spec['id']}-paper")


def comparison_columns(comparison: Comparison) -> pd.DataFrame:
    """Per compared cell: the paper's table, mean and std, what was compared (the value, or the ratio to the
    base cell) on both sides, Δ, the tolerance and the verdict (CSV columns)."""
    frame = comparison.frame
    compared_as = ["ratio to " + comparison.ratio_base if r else "value" for r in frame["ratio"]]
    columns = {
        "paper": comparison.paper,
        "paper_mean": frame["paper_value"],
        "paper_std": frame["paper_value_std"],
        "compared_as": compared_as,
        "ours_compared": frame["ours_mean"],
        "ours_compared_std": frame["ours_std"],
        "ours_compared_n": frame["ours_n"],
        "paper_compared": frame["paper_mean"],
        "delta": frame["delta"],
        "tolerance": frame["tolerance"],
        "verdict": frame["verdict"],
    }
    return pd.DataFrame(columns, index=frame.index)
