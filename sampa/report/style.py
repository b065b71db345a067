"""The look of every figure, in one module (an input of the figure rules: editing it re-makes figures only).

Single-column width, 8 pt fonts, TrueType fonts in PDFs (``pdf.fonttype`` 42), no timestamps in
PDF or PNG files (equal inputs give byte-equal files), and one fixed colour per optimizer across all
figures (keyed by registry name; several arms of one optimizer get shades of its colour).
"""

from __future__ import annotations

import colorsys
import hashlib
import io as _io
import os
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.colors as mcolors
import matplotlib.pyplot as plt
import seaborn as sns

COLUMN_WIDTH_IN = 3.4  # one column of a two-column paper
PANEL_HEIGHT_IN = 2.3
PNG_DPI = 200
BANNER_COLOR = "#b00020"

#: one colour per optimizer (registry name), fixed across all figures
COLORS: dict[str, str] = {
    "sgd": "#7f7f7f",
    "sam": "#1f77b4",
    "sampa": "#d62728",
    "randsam": "#bcbd22",
    "optsam": "#8c564b",
    "samdb": "#17becf",
    "gnp": "#9467bd",
    "looksam": "#2ca02c",
    "aesam": "#ff7f0e",
    "saf": "#e377c2",
    "mesa": "#7b4173",
    "esam": "#393b79",
    "msam": "#637939",
    "vsam": "#8c6d31",
    "asam": "#3182bd",
    "samon": "#31a354",
    "vasso": "#756bb1",
    "bisam": "#e6550d",
    "sampa-msam": "#a50f15",
    "sampa-asam": "#cb181d",
    "sampa-samon": "#ef3b2c",
    "sampa-vasso": "#fb6a4a",
    "sampa-bisam": "#99000d",
}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")

RC: dict[str, Any] = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "legend.fontsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "lines.linewidth": 1.2,
    "lines.markersize": 3.5,
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
    "svg.fonttype": "none",
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.02,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


def apply() -> None:
    """Set the style for the figures made in this process."""
    sns.set_theme(context="paper", style="whitegrid", rc=RC)
    plt.rcParams.update(RC)


def color(optimizer: str) -> str:
    """The optimizer's colour; unknown names get a stable colour derived from the name."""
    if optimizer in COLORS:
        return COLORS[optimizer]
    hue = int(hashlib.sha256(optimizer.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return mcolors.to_hex(colorsys.hsv_to_rgb(hue, 0.65, 0.75))


def palette(labels_and_optimizers: list[tuple[str, str]]) -> dict[str, Any]:
    """Colours per arm label: the optimizer's colour, in shades when one optimizer has several arms."""
    by_optimizer: dict[str, list[str]] = {}
    for label, optimizer in labels_and_optimizers:
        by_optimizer.setdefault(optimizer, [])
        if label not in by_optimizer[optimizer]:
            by_optimizer[optimizer].append(label)
    out: dict[str, Any] = {}
    for optimizer, labels in by_optimizer.items():
        base = color(optimizer)
        if len(labels) == 1:
            out[labels[0]] = base
            continue
        shades = sns.light_palette(base, n_colors=len(labels) + 2)[2:]
        out |= dict(zip(labels, shades, strict=True))
    return out


def figure(
    panels: int = 1, *, columns: int = 1, sharex: bool = False, sharey: bool = False
) -> tuple[Any, list[Any]]:
    """A single-column-wide figure with ``panels`` axes in ``columns`` columns."""
    columns = min(panels, columns)
    rows = (panels + columns - 1) // columns
    fig, axes = plt.subplots(
        rows,
        columns,
        figsize=(COLUMN_WIDTH_IN, PANEL_HEIGHT_IN * rows),
        squeeze=False,
        sharex=sharex,
        sharey=sharey,
    )
    flat = list(axes.flat)
    for extra in flat[panels:]:
        extra.remove()
    return fig, flat[:panels]


def legend_below(axes: list[Any], columns: int = 3) -> None:
    """One legend (from the last panel) under the last panel, without frame or title; none for one entry."""
    for ax in axes:
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    handles, labels = axes[-1].get_legend_handles_labels()
    if len(labels) > 1:
        axes[-1].legend(
            handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncols=columns, frameon=False
        )


def banner(fig: plt.Figure, lines: list[str]) -> None:
    """Warning lines above the panels (e.g. "synthetic data")."""
    if lines:
        fig.suptitle("\n".join(lines), fontsize=7, color=BANNER_COLOR, y=1.0, va="bottom")


def save(fig: plt.Figure, pdf: str | os.PathLike, png: str | os.PathLike) -> None:
    """Write PDF (vector, TrueType) and PNG atomically, without creation dates."""
    from sampa import io

    for path, fmt, extra in (
        (pdf, "pdf", {"metadata": {"CreationDate": None, "ModDate": None}}),
        (png, "png", {"dpi": PNG_DPI, "metadata": {"Software": None}}),
    ):
        buffer = _io.BytesIO()
        fig.savefig(buffer, format=fmt, **extra)
        io.write_bytes(path, buffer.getvalue())
    plt.close(fig)
