"""Aggregation, tables and figures from run directories (reads run files only; never trains).

* :mod:`sampa.report.runs`: run directories -> tidy tables (``runs.csv``: one row per run).
* :mod:`sampa.report.cells`: a paper table as a tidy cell table (mean, std, n, best, missing runs).
* :mod:`sampa.report.tables`: the cells (and their comparison) rendered to Markdown, LaTeX, CSV;
  :mod:`sampa.report.latex`: ASCII-only LaTeX text and tabulars that fit the page.
* :mod:`sampa.report.figures`: paper figures (style in :mod:`sampa.report.style`).
* :mod:`sampa.report.paper`: the paper's numbers (``paper/results.csv``) keyed by our naming.
* :mod:`sampa.report.compare`: table cells beside the paper's (Δ, within/outside; time and memory as ratios).
  Layers import one way: cells -> compare -> tables.
* :mod:`sampa.report.scorecard`: the paper's claims with our evidence and a verdict (``reproduction.md``).
* :mod:`sampa.report.commands`: ``python -m sampa plan|aggregate|table|figure|scorecard``.
"""
