"""Aggregation, tables and figures from run directories (reads run files only; never trains).

* :mod:`sampa.report.runs`: run directories -> tidy tables (``runs.csv``: one row per run).
* :mod:`sampa.report.tables`: a paper table as a tidy cell table, rendered to Markdown, LaTeX, CSV.
* :mod:`sampa.report.figures`: paper figures (style in :mod:`sampa.report.style`).
* :mod:`sampa.report.commands`: ``python -m sampa plan|aggregate|table|figure``.
"""
