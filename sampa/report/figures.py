"""Paper figures from run results: PDF + PNG (style in :mod:`sampa.report.style`) and the plotted data as CSV.

Plot kinds (``figure.plot`` in the config):

* ``toy``: Figure 1, distance to the minimiser of f(x) = ||x||^2 per step (from ``python -m sampa toy``):
  the upper envelope over a window of steps as the line (SAMPa oscillates from step to step), every step
  faint.
* ``bars``: one bar per arm and one panel per metric (Figure 2: sequential gradients per update,
  time per epoch), mean with the standard deviation over seeds, every seed as a dot.
* ``line``: a metric against a grid axis (Figure 3: test accuracy against lambda), one panel per
  value of ``facet``, mean with a ± std band over seeds.
* ``epochs``: per-epoch curves from ``log.jsonl`` (Figure 4: cos and distance between
  grad f(y_t) and grad f(x_t)), mean with a ± std band over seeds.

Every ± std band or error bar is clipped to the range of its metric (:attr:`Metric.bounds`): an accuracy
band ends at 100 %, a cosine band at 1.
"""

from __future__ import annotations

import contextlib
import os
import textwrap
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from sampa.experiments import PlannedRun, plan_experiment, run_defaults
from sampa.report import style
from sampa.report.cells import axis_name, observations, warning_lines
from sampa.report.metrics import metric
from sampa.report.runs import collect_epochs

#: steps per window of Figure 1's envelope
TOY_WINDOW = 50
#: characters per line of a bar panel's axis label
BAR_LABEL_CHARS = 22
#: a bar panel's per-seed dots: white with a black edge, visible on every bar colour (black ones too)
SEED_DOTS = {"color": "white", "edgecolor": "black", "linewidth": 0.6, "size": 3.2}


#: axis labels typeset as formulas (the tables' labels are plain text)
MATH_LABELS = {
    "grad_cosine": r"$\cos(\nabla f(y_t), \nabla f(x_t))$",
    "grad_distance": r"$\|\nabla f(y_t) - \nabla f(x_t)\|$",
}


class FigureError(ValueError):
    """A figure cannot be made (message: one line)."""


@dataclass(frozen=True)
class FigureData:
    """What was plotted (written next to the figure as CSV)."""

    frame: pd.DataFrame
    missing: list[str]


def make_figure(
    spec: Mapping[str, Any],
    data: str | os.PathLike | pd.DataFrame,
    pdf: str | os.PathLike,
    png: str | os.PathLike,
    runs_root: str | os.PathLike = "results/runs",
) -> FigureData:
    """Draw the experiment's figure from ``data`` (the runs table, or the toy trajectories; a frame or a
    CSV file) and save it."""
    frame = data if isinstance(data, pd.DataFrame) else pd.read_csv(data)
    style.apply()
    plot = spec["figure"]["plot"]
    if plot == "toy":
        fig, result = _toy(spec, frame)
    else:
        planned = plan_experiment(spec)
        if plot == "epochs":
            fig, result = _epochs(spec, planned, runs_root)
        else:
            obs = observations(planned, frame, spec["figure"].get("metrics", ["test_acc"]))
            fig, result = _bars(spec, planned, obs) if plot == "bars" else _line(spec, planned, obs)
    style.banner(fig, [] if plot == "toy" else banner_lines(spec, result.frame))
    style.save(fig, pdf, png)
    return result


def banner_lines(spec: Mapping[str, Any], frame: pd.DataFrame) -> list[str]:
    """The config's note and, whenever runs used synthetic data, a line saying so."""
    datasets = [str(d) for d in frame.get("trained_on", pd.Series(dtype=str)).dropna().unique()]
    return warning_lines(spec, datasets)


def _looks(planned: list[PlannedRun]) -> dict[str, style.Look]:
    return style.looks([(run.cell["arm"], run.settings["optimizer"]) for run in planned])


def _palette(planned: list[PlannedRun]) -> dict[str, Any]:
    return {arm: look.color for arm, look in _looks(planned).items()}


def _complete(obs: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    done = obs[obs["value"].notna()]
    missing = sorted({f"{r.run} ({r.status})" for r in obs[obs["value"].isna()].itertuples()})
    return done, missing


# ----------------------------------------------------------------------------------------------
# Plot kinds


def _toy(spec: Mapping[str, Any], traj: pd.DataFrame) -> tuple[Any, FigureData]:
    """Figure 1: per method the upper envelope of the distance (max over :data:`TOY_WINDOW` steps) and,
    faint, every step; the toy is deterministic and data-free, so it needs no warning banner."""
    fig, (ax,) = style.figure(1)
    methods = list(dict.fromkeys(traj["method"]))
    looks = style.looks([(m, m.split("-")[0].lower()) for m in methods])  # "SAMPa-0.2" -> sampa
    for method in methods:
        rows = traj[traj["method"] == method]
        look = looks[method]
        envelope = toy_envelope(rows["distance"])
        ax.plot(rows["step"], rows["distance"], color=look.color, linewidth=0.3, alpha=0.15)
        ax.plot(
            rows["step"],
            envelope,
            label=method,
            color=look.color,
            linestyle=look.linestyle,
            marker=look.marker,
            markevery=(methods.index(method) * 37 % 200, 250),  # staggered, so markers do not stack
        )
    ax.set_yscale("log")
    ax.set_xlabel("iteration $t$")
    ax.set_ylabel(r"$\|x_t - x^\star\|$")
    ax.set_title(rf"$f(x) = \|x\|^2$: max over {TOY_WINDOW} steps (faint: every step)")
    style.legend_below(fig, [ax], columns=4)
    return fig, FigureData(traj, [])


def toy_envelope(distance: pd.Series) -> pd.Series:
    """The distance's upper envelope: the largest value within :data:`TOY_WINDOW` steps around each step."""
    return distance.rolling(TOY_WINDOW, center=True, min_periods=1).max()


def _bars(spec: Mapping[str, Any], planned: list[PlannedRun], obs: pd.DataFrame) -> tuple[Any, FigureData]:
    import seaborn as sns

    metrics = spec["figure"].get("metrics", ["test_acc"])
    done, missing = _complete(obs)
    arms = list(dict.fromkeys(run.cell["arm"] for run in planned))
    height = max(style.PANEL_HEIGHT_IN, 0.16 * len(arms) + 0.8)
    fig, axes = style.figure(len(metrics), columns=2, sharey=True)
    fig.set_size_inches(style.COLUMN_WIDTH_IN, height * ((len(metrics) + 1) // 2))
    colors = _palette(planned)
    for ax, name in zip(axes, metrics, strict=True):
        rows = done[done["metric"] == name]
        common = {"data": rows, "y": "arm", "x": "value", "order": arms}
        sns.barplot(
            **common,
            hue="arm",
            hue_order=arms,
            palette=colors,
            errorbar=sd_band(name),
            saturation=1.0,
            legend=False,
            ax=ax,
            err_kws={"linewidth": 0.8},
        )
        with _fixed_global_rng():  # seaborn jitters the dots with numpy's global RNG
            sns.stripplot(**common, **SEED_DOTS, ax=ax)
        ax.set_xlabel(textwrap.fill(_label(name), BAR_LABEL_CHARS))  # side by side panels: no overlap
        ax.set_ylabel("")
    style.panel_labels(axes)
    return fig, FigureData(obs, missing)


def _line(spec: Mapping[str, Any], planned: list[PlannedRun], obs: pd.DataFrame) -> tuple[Any, FigureData]:
    import seaborn as sns

    layout = spec["figure"]
    x, facet = layout.get("x"), layout.get("facet")
    name = layout.get("metrics", ["test_acc"])[0]
    if x is None or x not in planned[0].values:
        raise FigureError(f"{spec['id']}: 'x' must name a grid axis ({', '.join(planned[0].values)})")
    values = {run.path: run.values for run in planned}
    obs = obs.assign(x=[float(values[r][x]) for r in obs["run"]])
    done, missing = _complete(obs)
    panels = list(dict.fromkeys(run.cell[facet] for run in planned)) if facet else [None]
    fig, axes = style.figure(len(panels), sharey=True)
    for ax, panel in zip(axes, panels, strict=True):
        rows = done if panel is None else done[done[facet] == panel]
        sns.lineplot(data=rows, x="x", y="value", errorbar=sd_band(name), ax=ax, **_arm_styles(planned))
        ax.set_xlabel(axis_name(x))
        ax.set_ylabel(_label(name))
        if panel is not None:
            ax.set_title(panel)
    style.panel_labels(axes)
    style.legend_below(fig, axes)
    return fig, FigureData(obs, missing)


def _epochs(
    spec: Mapping[str, Any], planned: list[PlannedRun], runs_root: str | os.PathLike
) -> tuple[Any, FigureData]:
    import seaborn as sns

    metrics = spec["figure"].get("metrics", ["val_acc"])
    root = Path(runs_root)
    epochs = collect_epochs([root / run.path for run in planned], root)
    cells = pd.DataFrame(
        [{"run": r.path, "arm": r.cell["arm"], "seed": r.seed, "trained_on": _dataset(r)} for r in planned]
    )
    frame = cells.merge(epochs, on="run", how="left")
    missing = sorted(set(cells["run"]) - set(epochs["run"]))
    fig, axes = style.figure(len(metrics), sharex=True)
    for ax, name in zip(axes, metrics, strict=True):
        m = metric(name)
        if m.column not in frame.columns:
            raise FigureError(
                f"{spec['id']}: the runs' logs have no {m.column!r} (is diagnostics_every set?)"
            )
        rows = frame.dropna(subset=[m.column]).assign(value=lambda f, m=m: f[m.column] * m.scale)
        sns.lineplot(data=rows, x="epoch", y="value", errorbar=sd_band(name), ax=ax, **_arm_styles(planned))
        ax.set_xlabel("epoch")
        ax.set_ylabel(_label(name))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    style.panel_labels(axes)
    style.legend_below(fig, axes)
    return fig, FigureData(frame, [f"{r} (missing log)" for r in missing])


def sd_band(name: str) -> Callable[[pd.Series], tuple[float, float]]:
    """seaborn's ``errorbar="sd"`` (mean ± sample std over seeds) clipped to metric ``name``'s bounds."""
    low, high = metric(name).bounds

    def band(values: pd.Series) -> tuple[float, float]:
        mean, std = values.mean(), values.std()
        return float(np.clip(mean - std, low, high)), float(np.clip(mean + std, low, high))

    return band


def _arm_styles(planned: list[PlannedRun]) -> dict[str, Any]:
    """seaborn keywords that draw every arm in its colour, marker and dash pattern (legend in plan order)."""
    looks = _looks(planned)
    arms = list(looks)
    return {
        "hue": "arm",
        "hue_order": arms,
        "style": "arm",
        "style_order": arms,
        "palette": {a: look.color for a, look in looks.items()},
        "markers": {a: look.marker for a, look in looks.items()},
        "dashes": {a: style.dashes(look.linestyle) for a, look in looks.items()},
    }


def _label(name: str) -> str:
    """A metric's axis label: mathtext where the metric is a formula, else the table label."""
    return MATH_LABELS.get(name, metric(name).label)


def _dataset(run: PlannedRun) -> str:
    return str(run.settings.get("dataset") or run_defaults().dataset)


@contextlib.contextmanager
def _fixed_global_rng(seed: int = 0) -> Iterator[None]:
    """Seed numpy's global RNG for a plotting call (byte-stable figures), then restore it."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)
