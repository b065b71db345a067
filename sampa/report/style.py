"""The look of every figure, in one module (an input of the figure rules: editing it re-makes figures only).

Single-column width, 8 pt fonts, TrueType fonts in PDFs (``pdf.fonttype`` 42), no timestamps in
PDF or PNG files (equal inputs give byte-equal files), and one fixed colour per optimizer across all
figures (keyed by registry name) from a colour-blind-safe palette, and a marker and line style per optimizer
so that no method is told apart by colour alone (several arms of one optimizer get their own).
"""

from __future__ import annotations

import colorsys
import hashlib
import io as _io
import os
from dataclasses import dataclass
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

#: Okabe & Ito's colour-blind-safe palette (Color Universal Design), plus a grey
OKABE_ITO = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky": "#56B4E9",
    "green": "#009E73",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "purple": "#CC79A7",
    "grey": "#8C8C8C",
}
#: per optimizer (registry name), fixed across all figures: (colour, marker, line style); no two
#: optimizers share colour and marker, so every method reads without colour too
STYLES: dict[str, tuple[str, str, str]] = {
    "sgd": ("black", "o", "-"),
    "sam": ("blue", "s", "-"),
    "sampa": ("vermillion", "o", "-"),
    "randsam": ("sky", "^", "--"),
    "optsam": ("purple", "D", ":"),
    "samdb": ("green", "v", "-."),
    "looksam": ("green", "^", "-"),
    "aesam": ("orange", "D", "--"),
    "saf": ("purple", "v", "-."),
    "mesa": ("sky", "P", ":"),
    "esam": ("black", "X", "--"),
    "msam": ("blue", "D", "--"),
    "asam": ("sky", "s", "-."),
    "samon": ("green", "o", ":"),
    "vasso": ("orange", "s", "-"),
    "bisam": ("purple", "o", "--"),
    "sampa-msam": ("vermillion", "D", "--"),
    "sampa-asam": ("vermillion", "s", "-."),
    "sampa-samon": ("vermillion", "^", ":"),
    "sampa-vasso": ("vermillion", "P", "-"),
    "sampa-bisam": ("vermillion", "X", "--"),
    "gnp": ("grey", "P", "-."),
    "vsam": ("sky", "v", ":"),
}
COLORS: dict[str, str] = {name: OKABE_ITO[c] for name, (c, _, _) in STYLES.items()}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
LINESTYLES = ("-", "--", ":", "-.")

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


@dataclass(frozen=True)
class Look:
    """How one arm is drawn: colour, marker and line style (matplotlib keyword values)."""

    color: Any
    marker: str
    linestyle: str


def looks(labels_and_optimizers: list[tuple[str, str]]) -> dict[str, Look]:
    """The look of each arm label: its optimizer's colour, marker and line style; several arms of one
    optimizer (SAMPa-0, SAMPa-0.2, ...) get darker shades and their own marker and line style."""
    by_optimizer: dict[str, list[str]] = {}
    for label, optimizer in labels_and_optimizers:
        by_optimizer.setdefault(optimizer, [])
        if label not in by_optimizer[optimizer]:
            by_optimizer[optimizer].append(label)
    out: dict[str, Look] = {}
    for optimizer, labels in by_optimizer.items():
        base = color(optimizer)
        _, marker, linestyle = STYLES.get(optimizer, ("", MARKERS[0], LINESTYLES[0]))
        if len(labels) == 1:
            out[labels[0]] = Look(base, marker, linestyle)
            continue
        shades = sns.light_palette(base, n_colors=len(labels) + 2)[2:]
        for i, label in enumerate(labels):
            look = (MARKERS[i % len(MARKERS)], LINESTYLES[i % len(LINESTYLES)])
            out[label] = Look(mcolors.to_hex(shades[i]), *look)
    return out


def palette(labels_and_optimizers: list[tuple[str, str]]) -> dict[str, Any]:
    """Colours per arm label (see :func:`looks`)."""
    return {label: look.color for label, look in looks(labels_and_optimizers).items()}


def dashes(linestyle: str) -> tuple[float, ...] | str:
    """A matplotlib line style as a seaborn dash pattern ("" is solid)."""
    return {"-": "", "--": (4, 2), ":": (1, 1.5), "-.": (4, 1.5, 1, 1.5)}[linestyle]


def panel_labels(axes: list[Any]) -> None:
    """(a), (b), ... at the top left of each panel, when there are several."""
    if len(axes) < 2:
        return
    for i, ax in enumerate(axes):
        ax.set_title(f"({chr(ord('a') + i)})", loc="left", fontweight="bold")


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
        layout="constrained",  # panels, banner and legend packed without gaps
        squeeze=False,
        sharex=sharex,
        sharey=sharey,
    )
    flat = list(axes.flat)
    for extra in flat[panels:]:
        extra.remove()
    return fig, flat[:panels]


def legend_below(fig: plt.Figure, axes: list[Any], columns: int = 3) -> None:
    """One legend (from the last panel) under the panels, without frame or title; none for one entry."""
    for ax in axes:
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    handles, labels = axes[-1].get_legend_handles_labels()
    if len(labels) > 1:
        fig.legend(handles, labels, loc="outside lower center", ncols=columns, frameon=False)


def banner(fig: plt.Figure, lines: list[str]) -> None:
    """Warning lines above the panels (e.g. "synthetic data"), placed by the layout engine."""
    if lines:
        fig.suptitle("\n".join(lines), fontsize=7, color=BANNER_COLOR)


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
