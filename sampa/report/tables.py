"""Paper tables as Markdown, LaTeX (booktabs) and CSV, from the cell table.

:func:`sampa.report.cells.cell_table` computes the cells; :func:`sampa.report.compare.compare` sets the
paper's values beside them; this module only formats both (``render``). Conventions of the paper's
tables: the best mean of each line in bold (the mean only, not its ± std), none where the paper marks
none (:data:`NOTHING_BOLD`) and only in one column where the paper does (:data:`BOLD_ONLY_IN`); the second
best underlined where the paper does (:data:`SECOND_BEST_UNDERLINED`); reference columns (a longer run of
one method, never ranked) in grey. The LaTeX compiles in :data:`sampa.report.latex.PREAMBLE` and never
exceeds the text width.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from sampa.report import latex
from sampa.report.cells import (
    AVERAGE,
    COST,
    TableError,
    axis_name,
    cell_table,
    datasets_of,
    metric_label,
    need_markers,
    warning_lines,
)
from sampa.report.compare import (
    Comparison,
    comparison_columns,
    comparison_latex,
    comparison_markdown,
    unmatched_line,
)
from sampa.report.metrics import metric

__all__ = ["AVERAGE", "COST", "TableError", "TableText", "cell_table", "render", "render_not_run"]

#: paper tables that underline the second best method of each line (besides the best in bold)
SECOND_BEST_UNDERLINED = ("Table 4",)
#: paper tables that mark no best method: the appendix tables 9-14 have no bold cell
NOTHING_BOLD = ("Table 9", "Table 10", "Table 11", "Table 12", "Table 13", "Table 14")
#: paper tables that bold the best only in one column, as (axis, label): Table 6 only its GLUE average
BOLD_ONLY_IN = {"Table 6": ("dataset", AVERAGE)}
#: a single-line table with more columns is set as one column (LaTeX)
MAX_COLUMNS_IN_A_LINE = 5
#: column axes whose labels read without a spanning header (method, metric and dataset names)
SELF_EXPLAINING_AXES = ("arm", "metric", "dataset")


@dataclass(frozen=True)
class TableText:
    markdown: str
    latex: str
    csv: str


def render(spec: Mapping[str, Any], cells: pd.DataFrame, comparison: Comparison | None = None) -> TableText:
    return TableText(
        render_markdown(spec, cells, comparison),
        render_latex(spec, cells, comparison),
        render_csv(spec, cells, comparison),
    )


def pivot(spec: Mapping[str, Any], cells: pd.DataFrame, text: pd.Series | None = None) -> pd.DataFrame:
    """Cells as the table to print: rows x columns of formatted text (axis order as planned).

    The index and column levels keep the axis names ("arm", "metric", "_row" for a single unnamed row).
    """
    layout = spec["table"]
    rows, columns = list(layout["rows"]), list(layout["columns"])
    frame = cells.assign(text=cells["text"] if text is None else text)
    frame = frame.assign(metric=[metric_label(m) for m in frame["metric"]])
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
    return table.fillna("")


def _product_order(index: pd.Index, names: list[str], order: Mapping[str, list[str]]) -> pd.Index:
    present = list(index)
    if len(names) == 1:
        return pd.Index([v for v in order[names[0]] if v in present], name=index.name)
    rank = {n: {v: i for i, v in enumerate(order[n])} for n in names}
    ordered = sorted(present, key=lambda t: tuple(rank[n].get(v, 0) for n, v in zip(names, t, strict=True)))
    return pd.MultiIndex.from_tuples(ordered, names=index.names)


def title_line(spec: Mapping[str, Any]) -> str:
    return spec["title"] + (f" (paper: {spec['paper']})" if spec.get("paper") else "")


def _underlines(spec: Mapping[str, Any]) -> bool:
    return spec.get("paper") in SECOND_BEST_UNDERLINED


def _bolds(spec: Mapping[str, Any]) -> bool:
    return spec.get("paper") not in NOTHING_BOLD


def _bold(spec: Mapping[str, Any], cells: pd.DataFrame) -> pd.Series:
    """Which cells are set in bold: the best of their line, where the paper marks the best there."""
    if not _bolds(spec):
        return pd.Series(False, index=cells.index)
    only = _bold_only_in(spec, cells)
    best = cells["best"].astype(bool)
    return best & (cells[only[0]] == only[1]) if only else best


def _bold_only_in(spec: Mapping[str, Any], cells: pd.DataFrame) -> tuple[str, str] | None:
    """(axis, label) of the one column with bold cells, where the paper has one and so does the table (a
    one-task Table 6 has no Average column: its task's score is the average, in bold as usual)."""
    only = BOLD_ONLY_IN.get(spec.get("paper", ""))
    layout = spec["table"]
    if only is None or only[0] not in [*layout["rows"], *layout["columns"]]:
        return None
    return only if (cells[only[0]] == only[1]).any() else None


def _bold_where(spec: Mapping[str, Any], cells: pd.DataFrame) -> str:
    """Where the bold cells are, in words: "each line", or the one column the paper marks."""
    only = _bold_only_in(spec, cells)
    return f"the {only[1]} column" if only else "each line"


def rule_line(spec: Mapping[str, Any], cells: pd.DataFrame, *, grey: bool) -> str:
    """How to read the cells: statistics, what is bold, underlined and grey (only what the table shows)."""
    seeds = len(spec["seeds"])
    line = f"Mean ± sample std over {seeds} seed{'s' if seeds > 1 else ''} per cell"
    line += "; (n=k): only k runs complete"
    if _bold(spec, cells).any():
        line += f"; best mean of {_bold_where(spec, cells)} in bold"
        if _underlines(spec) and cells["second"].any():
            line += ", second best underlined"
    if cells["reference"].any():
        line += "; grey: " if grey else "; "
        line += "reference runs (longer training), not ranked"
    if cells["fallback"].any():
        line += "; (host): " + "; ".join(_fallback_notes(spec))
    if (cells["partial"].astype(bool) & (cells["n"] > 0)).any():  # an Average shown over fewer rows
        line += f"; {AVERAGE} (k of m): over the k that ran here, not compared with the paper's"
    if cells.attrs.get("unranked"):
        line += f"; {cells.attrs['unranked']}"
    return line + "."


def _fallback_notes(spec: Mapping[str, Any]) -> list[str]:
    return sorted({metric(m).fallback_note for m in spec["table"]["metrics"] if metric(m).fallback_note})


def footer_lines(spec: Mapping[str, Any], cells: pd.DataFrame) -> list[str]:
    """How to read the (Markdown) table and every missing run."""
    lines = [rule_line(spec, cells, grey=False)]
    missing = list(dict.fromkeys(m for text in cells["missing"] for m in str(text).split("; ") if m))
    if missing:
        lines.append(f"Missing runs ({len(missing)}): " + "; ".join(missing))
    return lines + cells.attrs.get("caveats", [])


def needs_lines(cells: pd.DataFrame) -> list[str]:
    """One line per distinct thing the unplanned runs need ("[a] not run here: needs GLUE RTE at ..."),
    then what to do; none when every run was planned."""
    lines = [f"[{mark}] not run here: {line}." for line, mark in need_markers(cells).items()]
    return [*lines, NOT_RUN_HINT] if lines else []


# ----------------------------------------------------------------------------------------------
# Markdown


def render_markdown(
    spec: Mapping[str, Any], cells: pd.DataFrame, comparison: Comparison | None = None
) -> str:
    underline = _underlines(spec)
    flags = cells[["text", "second"]].assign(bold=_bold(spec, cells)).itertuples()
    marked = [_mark_markdown(r.text, r.bold, underline and r.second) for r in flags]
    table = pivot(spec, cells, pd.Series(marked, index=cells.index))
    table.columns = [_markdown_header(table.columns, i) for i in range(len(table.columns))]
    table.index.names = [axis_name(n) for n in table.index.names]
    table = table.reset_index()
    head = [f"> **{line}**" for line in warning_lines(spec, datasets_of(cells))]
    head += [f"**{title_line(spec)}**"] + ([spec["caption"]] if spec.get("caption") else [])
    body = table.to_markdown(index=False, disable_numparse=True)
    parts = ["\n\n".join(head), body, "\n".join(footer_lines(spec, cells)), *needs_lines(cells)]
    if comparison is not None:
        parts += comparison_markdown(spec, cells, comparison)
    return "\n\n".join(parts) + "\n"


def _mark_markdown(text: str, bold: bool, underline: bool) -> str:
    number, sep, rest = text.partition(" ")
    if bold:
        number = f"**{number}**"
    if underline:
        number = f"<u>{number}</u>"
    return number + sep + rest


def _markdown_header(columns: pd.Index, i: int) -> str:
    """A column's header: its labels, each after its axis name unless the labels explain themselves."""
    labels = columns[i] if isinstance(columns, pd.MultiIndex) else (columns[i],)
    parts = [
        str(label) if name in SELF_EXPLAINING_AXES else f"{axis_name(name)} {label}"
        for name, label in zip(columns.names, labels, strict=True)
        if str(label)
    ]
    return " / ".join(parts)


# ----------------------------------------------------------------------------------------------
# LaTeX


def render_latex(spec: Mapping[str, Any], cells: pd.DataFrame, comparison: Comparison | None = None) -> str:
    """A booktabs table: bold best mean, underlined second best (where the paper does), grey references."""
    underline = _underlines(spec)
    marked = pd.Series(
        [
            latex.number_cell(r.text, bold=r.bold, underline=underline and r.second)
            for r in cells[["text", "second"]].assign(bold=_bold(spec, cells)).itertuples()
        ],
        index=cells.index,
    )
    table = pivot(spec, cells, marked)
    references = set(cells.loc[cells["reference"], "arm"]) if "arm" in cells.columns else set()
    lines = [*warning_lines(spec, datasets_of(cells)), title_line(spec) + ".", spec.get("caption", "")]
    lines.append(rule_line(spec, cells, grey=True))
    if comparison is not None and comparison.frame.empty:  # no comparison float to name them
        lines.append(unmatched_line(comparison))
    caption = " ".join(latex.escape(line) for line in lines if line)
    caption += "".join(f" {latex.prose(line)}" for line in needs_lines(cells))
    body = latex.fit_to_width(_tabular(table, references))
    out = latex.float_table(body, caption, f"tab:{spec['id']}")
    missing = footer_lines(spec, cells)[1:]
    out += "".join(f"% {latex.plain(line)}\n" for line in missing)
    if comparison is not None:
        out += comparison_latex(spec, cells, comparison)
    return out


def _tabular(table: pd.DataFrame, references: set[str]) -> str:
    """The pivot as a tabular: spanning headers for column axes that need a name, grey reference columns
    (or rows). A single line of many columns is set as a column (it would not fit the page as a line)."""
    if len(table) == 1 and len(table.columns) > MAX_COLUMNS_IN_A_LINE:
        table = table.T
    n_index = table.index.nlevels
    columns = table.columns
    if not isinstance(columns, pd.MultiIndex):
        columns = pd.MultiIndex.from_arrays([columns], names=[columns.name])
    grey = ["arm" in columns.names and c[columns.names.index("arm")] in references for c in columns]
    shaded = rf">{{\columncolor{{{latex.REFERENCE_GREY}}}}}c"
    spec = "l" * n_index + "".join(shaded if g else "c" for g in grey)
    header = _header_lines(columns, n_index, [axis_name(n) for n in table.index.names])
    rows, rules = [], []
    previous: tuple[str, ...] = ()
    for i, (key, values) in enumerate(table.iterrows()):
        key = key if isinstance(key, tuple) else (key,)
        labels = ["" if key[: j + 1] == previous[: j + 1] else latex.escape(k) for j, k in enumerate(key)]
        previous = tuple(key)
        if key[0] == COST or (i + 1 < len(table) and _first_label(table.index[i + 1]) == AVERAGE):
            rules.append(i)
        row = [*labels[:-1], latex.escape(key[-1]), *values.tolist()]
        if "arm" in table.index.names and key[table.index.names.index("arm")] in references:
            row[0] = rf"\rowcolor{{{latex.REFERENCE_GREY}}}" + row[0]
        rows.append(row)
    return latex.tabular(header, rows, spec, rules_after=rules)


def _first_label(key: Any) -> Any:
    return key[0] if isinstance(key, tuple) else key


def _header_lines(columns: pd.MultiIndex, n_index: int, index_names: Sequence[str]) -> list[str]:
    """One header line per column level (equal neighbours merged), an axis-name line above levels whose
    labels do not explain themselves (e.g. "Batch size" above 16, 32, 64), the row axes' names last."""
    lines = []
    for level, name in enumerate(columns.names):
        spans = _spans(columns, level)
        last = level == columns.nlevels - 1
        if name not in SELF_EXPLAINING_AXES and name:
            title = latex.escape(axis_name(name))
            lines.append(" & " * n_index + rf"\multicolumn{{{len(columns)}}}{{c}}{{{title}}} \\")
            lines.append(rf"\cmidrule(lr){{{n_index + 1}-{n_index + len(columns)}}}")
        lead = " & ".join(latex.escape(n) for n in index_names) if last else " & " * (n_index - 1)
        cells = [
            latex.header(label) if width == 1 else rf"\multicolumn{{{width}}}{{c}}{{{latex.header(label)}}}"
            for label, width in spans
        ]
        lines.append(lead + " & " + " & ".join(cells) + r" \\")
        if not last:
            first = n_index + 1
            rules = []
            for _, width in spans:
                if width > 1:
                    rules.append(rf"\cmidrule(lr){{{first}-{first + width - 1}}}")
                first += width
            if rules:
                lines.append(" ".join(rules))
    return lines


def _spans(columns: pd.MultiIndex, level: int) -> list[tuple[str, int]]:
    """Runs of equal labels at ``level`` within equal labels of the levels above: (label, width)."""
    spans: list[tuple[str, int]] = []
    previous = None
    for column in columns:
        key = column[: level + 1]
        if spans and key == previous:
            spans[-1] = (spans[-1][0], spans[-1][1] + 1)
        else:
            spans.append((str(column[level]), 1))
        previous = key
    return spans


# ----------------------------------------------------------------------------------------------
# CSV


def render_csv(spec: Mapping[str, Any], cells: pd.DataFrame, comparison: Comparison | None = None) -> str:
    frame = cells.assign(experiment=spec["id"], metric_label=[metric_label(m) for m in cells["metric"]])
    if comparison is not None:
        frame = frame.join(comparison_columns(comparison))
    if spec.get("note"):
        frame = frame.assign(note=spec["note"])
    first = ["experiment", *(c for c in ("note",) if c in frame.columns)]
    rest = [c for c in frame.columns if c not in first]
    return frame[first + rest].to_csv(index=False, lineterminator="\n")


# ----------------------------------------------------------------------------------------------
# Experiments that cannot run here


def render_not_run(spec: Mapping[str, Any]) -> TableText:
    """The table of an experiment none of whose runs can run here (data, weights or extra missing):
    "not run: <what>". One with some runs here is a table whose other cells say what they need."""
    word = f"not run: {spec['not_run']}"
    title = title_line(spec)
    head = [f"> **{line}**" for line in warning_lines(spec, [])]
    head += [f"**{title}**"] + ([spec["caption"]] if spec.get("caption") else [])
    markdown = "\n\n".join([*head, f"{word}.", NOT_RUN_HINT]) + "\n"
    tex = f"% {latex.plain(title)}\n% {latex.plain(word)}\n\\textit{{{latex.escape(word)}}}\n"
    frame = pd.DataFrame([{"experiment": spec["id"], "status": word}])
    return TableText(markdown, tex, frame.to_csv(index=False, lineterminator="\n"))


NOT_RUN_HINT = "Put what is missing in place (README: Tables 3, 5 and 6) and run the workflow again."
