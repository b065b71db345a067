"""Paper tables from the runs table: a tidy cell table, then Markdown, LaTeX (booktabs) and CSV.

:func:`cell_table` returns one row per table cell (its axes, metric, mean, std over seeds, n, the
runs that are missing, whether it is the best of its line); :func:`render_markdown`,
:func:`render_latex` and :func:`render_csv` only format that frame. A "paper" column can be joined
onto the cell table per cell before rendering: :func:`sampa.report.compare.compare` gives the paper's value
beside ours, rendered under the main table (``comparison=``).

Statistics: mean and sample standard deviation (ddof=1) over the seeds whose run completed; a
cell with fewer runs than planned says so (``n=4``), and every planned run that is not complete
(missing, interrupted, diverged, or without a value) is listed under the table, never dropped.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from sampa.config import config_from_dict
from sampa.experiments import MACHINE_KEYS, PlannedRun, is_measured, plan_experiment
from sampa.report.metrics import Metric, metric
from sampa.report.runs import timing_caveats

if TYPE_CHECKING:
    from sampa.report.compare import Comparison

AVERAGE = "Average"
COST = "Temporal cost/Epochs"
COST_METRIC = "cost"
NOT_APPLICABLE = "not applicable"
#: what an empty cell says, the first that one of its runs has (sampa.jobs records failures)
STATUS_WORDS = ("needs data", "failed", "diverged", "incomplete", "missing", "stale", "no value")


class TableError(ValueError):
    """A table cannot be built (message: one line)."""


@dataclass(frozen=True)
class TableText:
    markdown: str
    latex: str
    csv: str


# ----------------------------------------------------------------------------------------------
# The cell table


def cell_table(spec: Mapping[str, Any], runs: pd.DataFrame) -> pd.DataFrame:
    """One row per cell: axis labels, ``metric``, ``mean``, ``std``, ``n``, ``n_planned``, ``best``,
    ``text`` (formatted), ``missing`` (the planned runs without a value) and ``datasets``."""
    layout = spec["table"]
    planned = plan_experiment(spec)
    axes = _cell_axes(layout, planned, spec["id"])
    obs = observations(planned, runs, layout["metrics"])
    cells = _aggregate(obs, axes)
    if layout.get("average_row"):
        cells = pd.concat([cells, _average_rows(obs, axes, layout["rows"])], ignore_index=True)
    if layout.get("cost_row"):
        cells = pd.concat([_cost_cells(obs, axes, layout["columns"]), cells], ignore_index=True)
    cells["best"] = _best_flags(cells, layout)
    cells["text"] = [_cell_text(row) for row in cells.itertuples(index=False)]
    columns = [
        *axes,
        "metric",
        "mean",
        "std",
        "n",
        "n_planned",
        "best",
        "reference",
        "text",
        "missing",
        "datasets",
    ]
    cells = cells[columns]
    if any(is_measured(name) for name in layout["metrics"]):  # time/memory: say what may bias them
        cells.attrs["caveats"] = timing_caveats(runs, [run.path for run in planned])
    return cells


def observations(planned: Sequence[PlannedRun], runs: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """One row per planned run and metric: its axis labels, seed, status and (scaled) value."""
    by_run = runs.set_index("run") if len(runs) else pd.DataFrame(columns=["status"])
    rows = []
    for run in planned:
        found = run.path in by_run.index
        record = by_run.loc[run.path] if found else None
        status = str(record["status"]) if found else "missing"
        if status == "complete":
            status = stale_reason(record, run) or status
        for name in metrics:
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
                    "dataset": run.settings.get("dataset") or (record.get("dataset") if found else None),
                    "epochs": record.get("config.epochs") if found else None,
                    "ideal_sequential": record.get("passes_per_step.ideal_sequential") if found else None,
                }
            )
    return pd.DataFrame(rows)


def stale_reason(record: pd.Series, run: PlannedRun) -> str | None:
    """Why a finished run no longer matches its plan (e.g. a RunConfig default changed since), or None.

    Settings the run's record does not have (fields added to RunConfig later) are not compared.
    """
    planned = config_from_dict(copy.deepcopy(run.settings)).to_dict()
    for key, value in planned.items():
        if key in MACHINE_KEYS or key == "hparams":
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
        not_applicable = int((group["status"] == NOT_APPLICABLE).sum())
        group = group[group["status"] != NOT_APPLICABLE]
        values = group["value"].dropna()
        missing = group[group["value"].isna()]
        rows.append(
            {
                **dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True)),
                "mean": values.mean() if len(values) else math.nan,
                "std": values.std(ddof=1) if len(values) > 1 else math.nan,
                "n": len(values),
                "n_planned": len(group),
                "missing": "; ".join(f"{r.run} ({r.status})" for r in missing.itertuples()),
                "datasets": "+".join(sorted({str(d) for d in group["dataset"].dropna()})),
                "reference": bool(group["reference"].any()),
                "not_applicable": not_applicable,
            }
        )
    return pd.DataFrame(rows)


def _average_rows(obs: pd.DataFrame, axes: list[str], row_axes: Sequence[str]) -> pd.DataFrame:
    """The paper's "Average" row: per seed, the mean over the rows; then mean ± std over seeds.

    Only seeds whose runs are complete in every row count (a paired average).
    """
    row_axes = [a for a in row_axes if a != "metric"]
    if not row_axes:
        return pd.DataFrame()
    column_keys = [a for a in axes if a not in row_axes] + ["metric"]
    rows = []
    for key, group in obs.groupby(column_keys, sort=False, dropna=False):
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
                "datasets": "+".join(sorted({str(d) for d in group["dataset"].dropna()})),
                "reference": bool(group["reference"].any()),
            }
        )
    return pd.DataFrame(rows)


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
                "text": text,
            }
        )
    return pd.DataFrame(rows)


def _best_flags(cells: pd.DataFrame, layout: Mapping[str, Any]) -> list[bool]:
    """Bold the best method: the best mean among the arms of each line (same other axes and metric).

    Reference arms and empty cells never compete; ``best_groups`` limits the comparison to groups of
    arm labels (e.g. each variant against its +SAMPa combination). Tables without an arm axis bold
    nothing.
    """
    best = pd.Series(False, index=cells.index)
    if "arm" not in cells.columns or cells["arm"].nunique() < 2:
        return best.tolist()
    line_keys = [
        c for c in cells.columns if c in (*layout["rows"], *layout["columns"], "metric") and c != "arm"
    ]
    for _, line in cells.groupby(line_keys, sort=False, dropna=False):
        name = line["metric"].iloc[0]
        if name == COST_METRIC or metric(name).best is None:
            continue
        candidates = line[(~line["reference"]) & (line["n"] > 0)]
        shown = candidates["mean"].round(metric(name).decimals)  # ties as printed are all bold
        groups = layout.get("best_groups") or [list(candidates["arm"])]
        for group in groups:
            members = shown[candidates["arm"].isin(group)]
            if len(members) < 2 and len(groups) > 1:
                continue
            target = members.max() if metric(name).best == "max" else members.min()
            best[members.index[members == target]] = True
    return best.tolist()


def _cell_text(row: Any) -> str:
    if row.metric == COST_METRIC:
        return row.text
    if row.n == 0:  # why, in one word (the footer lists the runs), or "—" where not applicable
        if getattr(row, "not_applicable", 0) > 0:
            return "—"
        return next((s for s in STATUS_WORDS if f"({s}" in str(row.missing)), "—")
    m = metric(row.metric)
    text = f"{row.mean:.{m.decimals}f}"
    if m.spread and row.n > 1:
        text += f" ± {row.std:.{m.decimals}f}"
    if row.n < row.n_planned:
        text += f" (n={row.n})"
    return text


# ----------------------------------------------------------------------------------------------
# Rendering


def render(spec: Mapping[str, Any], cells: pd.DataFrame, comparison: Comparison | None = None) -> TableText:
    return TableText(
        render_markdown(spec, cells, comparison),
        render_latex(spec, cells, comparison),
        render_csv(spec, cells, comparison),
    )


def pivot(spec: Mapping[str, Any], cells: pd.DataFrame, text: pd.Series | None = None) -> pd.DataFrame:
    """Cells as the table to print: rows x columns of formatted text (axis order as planned)."""
    layout = spec["table"]
    rows, columns = list(layout["rows"]), list(layout["columns"])
    frame = cells.assign(text=cells["text"] if text is None else text)
    frame = frame.assign(metric=[_metric_label(m) for m in frame["metric"]])
    if not rows and "metric" not in columns:  # a single line: label it with the metric
        rows = ["metric"]
    elif not rows:
        frame = frame.assign(_row="")
        rows = ["_row"]
    order = {c: list(dict.fromkeys(frame[c])) for c in [*rows, *columns]}
    table = frame.pivot_table(index=rows, columns=columns, values="text", aggfunc="first", sort=False)
    table = table.reindex(
        index=_product_order(table.index, rows, order), columns=_product_order(table.columns, columns, order)
    )
    table = table.fillna("")
    table.index.names = [axis_name(r) for r in rows]
    table.columns.names = [axis_name(c) for c in columns]
    return table


def _product_order(index: pd.Index, names: list[str], order: Mapping[str, list[str]]) -> pd.Index:
    present = list(index)
    if len(names) == 1:
        return pd.Index([v for v in order[names[0]] if v in present], name=index.name)
    rank = {n: {v: i for i, v in enumerate(order[n])} for n in names}
    ordered = sorted(present, key=lambda t: tuple(rank[n].get(v, 0) for n, v in zip(names, t, strict=True)))
    return pd.MultiIndex.from_tuples(ordered, names=index.names)


def _metric_label(name: str) -> str:
    return COST if name == COST_METRIC else metric(name).label


def axis_name(axis: str) -> str:
    names = {"arm": "Method", "model": "Model", "dataset": "Dataset", "metric": "", "_row": ""}
    names |= {"label_noise": "Noise rate", "batch_size": "Batch size", "hparams.lam": "λ"}
    return names.get(axis, axis.replace("_", " ").capitalize())


def warning_lines(spec: Mapping[str, Any], datasets: Sequence[str]) -> list[str]:
    """The config's note and, whenever runs used synthetic data, a line saying so."""
    lines = [spec["note"]] if spec.get("note") else []
    synthetic = sorted(d for d in datasets if d.startswith("synthetic"))
    if synthetic and not any("synthetic" in line.lower() for line in lines):
        lines.append(f"Synthetic data ({', '.join(synthetic)}): these numbers are not the paper's results.")
    return lines


def _datasets(cells: pd.DataFrame) -> list[str]:
    return sorted({d for ds in cells["datasets"] for d in str(ds).split("+") if d and d != "nan"})


def title_line(spec: Mapping[str, Any]) -> str:
    return spec["title"] + (f" (paper: {spec['paper']})" if spec.get("paper") else "")


def footer_lines(spec: Mapping[str, Any], cells: pd.DataFrame) -> list[str]:
    """Statistics used, bolding rule, metric sources and every missing run."""
    seeds = len(spec["seeds"])
    plural = "s" if seeds > 1 else ""
    lines = [f"Mean ± sample std over {seeds} seed{plural} per cell; (n=k): only k runs complete."]
    bolded = [metric(m).best for m in spec["table"]["metrics"] if metric(m).best]
    if bolded:
        lines.append(
            "Best of each line in bold"
            + (" (reference columns excluded)." if cells["reference"].any() else ".")
        )
    notes = {metric(m).fallback_note for m in spec["table"]["metrics"] if metric(m).fallback_note}
    lines += sorted(notes)
    missing = list(dict.fromkeys(m for text in cells["missing"] for m in str(text).split("; ") if m))
    if missing:
        lines.append(f"Missing runs ({len(missing)}): " + "; ".join(missing))
    return lines + cells.attrs.get("caveats", [])


def render_markdown(
    spec: Mapping[str, Any], cells: pd.DataFrame, comparison: Comparison | None = None
) -> str:
    marked = [_bold_markdown(t) if b else t for t, b in zip(cells["text"], cells["best"], strict=True)]
    table = pivot(spec, cells, pd.Series(marked, index=cells.index)).reset_index()
    table.columns = [_flat(c) for c in table.columns]
    head = [f"> **{line}**" for line in warning_lines(spec, _datasets(cells))]
    head += [f"**{title_line(spec)}**"] + ([spec["caption"]] if spec.get("caption") else [])
    body = table.to_markdown(index=False, disable_numparse=True)
    parts = ["\n\n".join(head), body, "\n".join(footer_lines(spec, cells))]
    if comparison is not None:
        from sampa.report.compare import rule_lines

        compared = comparison_frame(spec, cells, comparison)
        parts += [f"**Against the paper ({comparison.paper})**"]
        parts += [compared.to_markdown(index=False, disable_numparse=True)] if len(compared) else []
        parts += ["\n".join(rule_lines(comparison))]
    return "\n\n".join(parts) + "\n"


def comparison_frame(spec: Mapping[str, Any], cells: pd.DataFrame, comparison: Comparison) -> pd.DataFrame:
    """The compared cells as text: axis labels, metric, ours, the paper's, Δ and the verdict.

    Synthetic runs get no Δ and no verdict columns.
    """
    layout = spec["table"]
    axes = [a for a in [*layout["rows"], *layout["columns"]] if a != "metric"]
    frame = comparison.frame
    out = pd.DataFrame({axis_name(a): cells.loc[frame.index, a] for a in axes}, index=frame.index)
    base = comparison.ratio_base
    out["Metric"] = [
        _compared_label(m, r, base) for m, r in zip(frame["metric"], frame["ratio"], strict=True)
    ]
    out["Ours"] = frame["ours_text"]
    out["Paper"] = frame["paper_text"]
    if not comparison.synthetic:
        out["Δ"] = frame["delta_text"]
        out["Verdict"] = frame["verdict"]
    return out.reset_index(drop=True)


def _compared_label(name: str, ratio: bool, base: str) -> str:
    label = _metric_label(name)
    return f"{label.rsplit(' (', 1)[0]} (× {base})" if ratio else label


def _bold_markdown(text: str) -> str:
    number, sep, rest = text.partition(" ")
    return f"**{number}**{sep}{rest}"


def _flat(column: Any) -> str:
    if isinstance(column, tuple):
        return " / ".join(str(c) for c in column if str(c))
    return str(column)


def render_latex(spec: Mapping[str, Any], cells: pd.DataFrame, comparison: Comparison | None = None) -> str:
    """booktabs table via ``Styler.to_latex``; best cells in bold (``\\bfseries``)."""
    table = pivot(spec, cells, cells["text"].map(latex_cell)).rename(index=latex_escape).reset_index()
    best = pivot(spec, cells, cells["best"].map(lambda b: "1" if b else "")).reset_index()
    styler = table.style.hide(axis="index")
    styler = styler.apply(lambda _: best.map(lambda b: "font-weight: bold;" if b == "1" else ""), axis=None)
    styler = styler.format_index(escape="latex", axis=1)
    lines = [*warning_lines(spec, _datasets(cells)), title_line(spec) + ".", spec.get("caption", "")]
    n_index = len(spec["table"]["rows"]) or 1
    latex = styler.to_latex(
        hrules=True,
        convert_css=True,
        caption=" ".join(latex_escape(line) for line in lines if line),
        label=f"tab:{spec['id']}",
        position_float="centering",
        column_format="l" * n_index + "c" * (len(table.columns) - n_index),
        multicol_align="c",
    )
    notes = "\n".join(f"% {line}" for line in footer_lines(spec, cells))
    latex += notes + "\n"
    if comparison is not None:
        latex += _comparison_latex(spec, cells, comparison)
    return latex


def _comparison_latex(spec: Mapping[str, Any], cells: pd.DataFrame, comparison: Comparison) -> str:
    from sampa.report.compare import UNMATCHED, rule_lines

    lines = rule_lines(comparison)
    unmatched = [line for line in lines if line.startswith(UNMATCHED)]
    caption = f"Against the paper ({comparison.paper}). "
    caption += " ".join(latex_escape(line) for line in lines if line not in unmatched)
    compared = comparison_frame(spec, cells, comparison)
    if compared.empty:
        return f"% {caption}\n" + "".join(f"% {line}\n" for line in unmatched)
    table = compared.map(latex_cell)
    latex = (
        table.style.hide(axis="index")
        .format_index(escape="latex", axis=1)
        .to_latex(
            hrules=True,
            caption=caption,
            label=f"tab:{spec['id']}-paper",
            position_float="centering",
            column_format="l" * (len(table.columns) - 4) + "c" * 4,
        )
    )
    return "\n" + latex + "".join(f"% {line}\n" for line in unmatched)


def latex_cell(text: str) -> str:
    return latex_escape(text).replace("±", r"$\pm$").replace("×", r"$\times$").replace("—", "--")


def latex_escape(text: str) -> str:
    out = str(text)
    for char, repl in (
        ("\\", r"\textbackslash{}"),
        ("&", r"\&"),
        ("%", r"\%"),
        ("$", r"\$"),
        ("#", r"\#"),
        ("_", r"\_"),
        ("{", r"\{"),
        ("}", r"\}"),
    ):
        out = out.replace(char, repl)
    return out.replace("~", r"\textasciitilde{}").replace("^", r"\textasciicircum{}")


def render_csv(spec: Mapping[str, Any], cells: pd.DataFrame, comparison: Comparison | None = None) -> str:
    frame = cells.assign(experiment=spec["id"], metric_label=[_metric_label(m) for m in cells["metric"]])
    if comparison is not None:
        frame = frame.join(_comparison_columns(comparison))
    if spec.get("note"):
        frame = frame.assign(note=spec["note"])
    first = ["experiment", *(c for c in ("note",) if c in frame.columns)]
    rest = [c for c in frame.columns if c not in first]
    return frame[first + rest].to_csv(index=False, lineterminator="\n")


def _comparison_columns(comparison: Comparison) -> pd.DataFrame:
    """Per compared cell: the paper's table, mean and std, what was compared (the value, or the ratio to the
    base cell) on both sides, Δ, the tolerance and the verdict."""
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


# ----------------------------------------------------------------------------------------------
# Experiments the package cannot run


def unsupported_message(spec: Mapping[str, Any], data_root: str | Path) -> str:
    """Why an experiment of kind ``unsupported`` cannot be reproduced, and what is missing (one line)."""
    info = spec["unsupported"]
    root = Path(data_root)
    status = [
        f"{req} at {root / req}: {'found' if (root / req).exists() else 'not found'}"
        for req in info["requires"]
    ]
    where = f" ({spec['paper']})" if spec.get("paper") else ""
    return f"{spec['id']}{where} cannot be reproduced: {info['reason']} [{'; '.join(status)}]"
