"""Aggregation, tables and figures on hand-written run directories (no training)."""

from __future__ import annotations

import copy
import io
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from sampa import experiments as ex
from sampa.report import compare as cmp
from sampa.report import tables
from sampa.report.runs import collect_runs

CONFIG = {
    "name": "t",
    "seeds": [0, 1, 2],
    "run": {"dataset": "cifar10", "epochs": 200},
    "arms": {
        "sgd": {"label": "SGD", "optimizer": "sgd", "run": {"epochs": 400}},
        "sam": {"label": "SAM", "optimizer": "sam", "hparams": {"rho": 0.05}},
        "sampa": {"label": "SAMPa-0.2", "optimizer": "sampa", "hparams": {"rho": 0.1, "lam": 0.2}},
        "ref": {
            "label": "SAMPa-0.2 (400 ep)",
            "optimizer": "sampa",
            "hparams": {"rho": 0.1, "lam": 0.2},
            "run": {"epochs": 400},
            "reference": True,
        },
    },
    "experiments": {
        "t1": {
            "kind": "table",
            "title": "Test accuracy on CIFAR-10",
            "paper": "Table 1",
            "arms": ["sgd", "sam", "sampa", "ref"],
            "grid": {"model": ["resnet56", "wrn28-2"]},
            "table": {
                "rows": ["model"],
                "columns": ["arm"],
                "metrics": ["test_acc"],
                "average_row": True,
                "cost_row": True,
            },
        },
        "t4": {
            "kind": "table",
            "title": "Efficient variants",
            "run": {"model": "resnet56"},
            "arms": ["sam", "sampa"],
            "table": {"rows": ["metric"], "columns": ["arm"], "metrics": ["test_acc", "time_per_epoch_s"]},
        },
    },
}

# test accuracy per (arm, model) for seeds 0, 1, 2 (None: no metrics.json)
ACC = {
    ("SGD", "resnet56"): [0.940, 0.942, 0.944],
    ("SAM", "resnet56"): [0.941, 0.943, 0.945],
    ("SAMPa-0.2", "resnet56"): [0.946, 0.948, None],
    ("SAMPa-0.2 (400 ep)", "resnet56"): [0.960, 0.960, 0.960],
    ("SGD", "wrn28-2"): [0.950, 0.950, 0.950],
    ("SAM", "wrn28-2"): [0.960, 0.962, 0.964],
    ("SAMPa-0.2", "wrn28-2"): [0.958, 0.960, 0.962],
    ("SAMPa-0.2 (400 ep)", "wrn28-2"): [0.970, 0.970, 0.970],
}
SEQUENTIAL = {"sgd": 1.0, "sam": 2.0, "sampa": 1.0}


def write_run(
    root: Path,
    run: ex.PlannedRun,
    acc: float | None,
    *,
    diverged: bool = False,
    time_s: float = 10.0,
    host_mib: float | None = None,
) -> None:
    """A run directory as the engine leaves it (only the fields the report reads)."""
    d = root / run.path
    d.mkdir(parents=True, exist_ok=True)
    config = {"model": "resnet56", "epochs": 200, "devices": 1, "hparams": run.settings["hparams"]}
    config |= {k: v for k, v in run.settings.items() if k != "hparams"}
    (d / "config.json").write_text(json.dumps(config))
    if acc is None:
        (d / "checkpoint.pt").write_bytes(b"")
        return
    metrics = {
        "status": "diverged" if diverged else "complete",
        "diverged": diverged,
        "test_acc": None if diverged else acc,
        "time": {"epoch_median_s": time_s, "step_median_s": time_s / 352},
        "passes_per_step": {"ideal_sequential": SEQUENTIAL[run.settings["optimizer"]], "sequential": 2.0},
        "config": config,
        "memory": {
            "cpu_peak_rss_mib": 900.0,
            "per_rank": [
                {
                    "cpu_peak_rss_mib": 900.0,
                    "devices": [{"nvml_peak_mib": 2000.0, "nvml_method": "per-process"}],
                },
                {
                    "cpu_peak_rss_mib": 950.0,
                    "devices": [{"torch_max_reserved_mib": 2100.0, "nvml_peak_mib": None}],
                },
            ],
        },
        "provenance": {"git": {"sha": "abc", "dirty": False}, "devices": [{"name": "A100"}], "resumes": 0},
    }
    if host_mib is not None:  # a CPU run: host memory only
        metrics["memory"] = {"cpu_peak_rss_mib": host_mib, "per_rank": [{"cpu_peak_rss_mib": host_mib}]}
    (d / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture
def runs(tmp_path):
    plan = ex.plan(CONFIG)
    root = tmp_path / "runs"
    for run in plan.runs["t1"]:
        write_run(root, run, ACC[(run.cell["arm"], run.settings.get("model", "resnet56"))][run.seed])
    return plan, root, collect_runs([root / p for p in plan.unique_runs()], root)


def cell(cells, **keys):
    mask = pd.Series(True, index=cells.index)
    for k, v in keys.items():
        mask &= cells[k] == v
    (index,) = cells.index[mask]
    return cells.loc[index]


def test_runs_table_has_one_row_per_run_with_status(runs, tmp_path):
    plan, root, frame = runs
    assert len(frame) == len(plan.unique_runs()) == 4 * 2 * 3
    assert frame["run"].tolist() == sorted(frame["run"])
    incomplete = frame[frame["status"] == "incomplete"]
    assert len(incomplete) == 1 and incomplete["run"].iloc[0].endswith("seed2")
    row = frame[frame["status"] == "complete"].iloc[0]
    assert row["memory.device_peak_mib"] == 2100.0  # max over ranks and devices
    assert row["memory.device_source"] == "torch max_memory_reserved"
    assert row["memory.cpu_peak_rss_mib"] == 950.0
    assert row["provenance.git_sha"] == "abc"
    # a directory that was never created is reported, not dropped
    more = collect_runs([*(root / p for p in plan.unique_runs()), root / "nowhere/seed0"], root)
    assert more.set_index("run").loc["nowhere/seed0", "status"] == "missing"


def test_cell_table_mean_std_n_and_missing(runs):
    plan, _, frame = runs
    cells = tables.cell_table(plan.specs["t1"], frame)
    sgd = cell(cells, model="ResNet-56", arm="SGD", metric="test_acc")
    assert sgd["mean"] == pytest.approx(94.2) and sgd["std"] == pytest.approx(0.2)  # sample std
    assert sgd["n"] == 3 and sgd["text"] == "94.20 ± 0.20"
    sampa = cell(cells, model="ResNet-56", arm="SAMPa-0.2", metric="test_acc")
    assert sampa["n"] == 2 and sampa["n_planned"] == 3
    assert sampa["text"] == "94.70 ± 0.14 (n=2)"
    assert sampa["missing"].endswith("seed2 (incomplete)")


def test_best_is_bold_per_row_and_reference_columns_do_not_compete(runs):
    plan, _, frame = runs
    cells = tables.cell_table(plan.specs["t1"], frame)
    best = cells[cells["best"]]
    assert set(zip(best["model"], best["arm"], strict=True)) == {
        ("ResNet-56", "SAMPa-0.2"),  # 94.70 > 94.30 (SAM); the 400-epoch reference (96.0) is excluded
        ("WRN-28-2", "SAM"),
        ("Average", "SAMPa-0.2"),  # 95.30 (seeds 0, 1) > 95.25
    }


def test_average_row_is_paired_over_seeds(runs):
    plan, _, frame = runs
    cells = tables.cell_table(plan.specs["t1"], frame)
    avg = cell(cells, model="Average", arm="SAMPa-0.2", metric="test_acc")
    # seeds 0 and 1 have both models: (94.6+95.8)/2 = 95.2, (94.8+96.0)/2 = 95.4
    assert (
        avg["n"] == 2 and avg["mean"] == pytest.approx(95.3) and avg["std"] == pytest.approx(math.sqrt(0.02))
    )
    sam = cell(cells, model="Average", arm="SAM", metric="test_acc")
    assert sam["n"] == 3 and sam["mean"] == pytest.approx((94.3 + 96.2) / 2)


def test_cost_row_is_measured(runs):
    plan, _, frame = runs
    cells = tables.cell_table(plan.specs["t1"], frame)
    assert cell(cells, model=tables.COST, arm="SAM")["text"] == "×2/200"
    assert cell(cells, model=tables.COST, arm="SGD")["text"] == "×1/400"


def test_host_memory_never_competes_for_bold_and_tables_9_to_14_bold_nothing(runs):
    plan, root, _ = runs
    spec = {**plan.specs["t4"], "table": {**plan.specs["t4"]["table"], "metrics": ["memory_per_device_mib"]}}
    for run in plan.runs["t4"]:  # SAM on the host (less memory), SAMPa on a device
        write_run(root, run, 0.94, host_mib=500.0 if run.cell["arm"] == "SAM" else None)
    frame = collect_runs([root / p for p in plan.unique_runs()], root)
    cells = tables.cell_table(spec, frame)
    sam, sampa = (cell(cells, arm=arm, metric="memory_per_device_mib") for arm in ("SAM", "SAMPa-0.2"))
    assert (sam["text"], sam["best"]) == ("500 ± 0 (host)", False)
    assert (sampa["text"], sampa["best"]) == ("2100 ± 0", True)
    assert "**2100**" in tables.render_markdown(spec, cells)
    for paper in ("Table 9", "Table 10", "Table 11", "Table 12", "Table 13", "Table 14"):  # no bold there
        text = tables.render({**spec, "paper": paper}, cells)
        assert "**2100**" not in text.markdown and "in bold" not in text.markdown
        assert r"\textbf{2100}" not in text.latex
    assert "**2100**" in tables.render({**spec, "paper": "Table 6"}, cells).markdown  # no Average column


def test_renderings(runs):
    plan, _, frame = runs
    spec = plan.specs["t1"]
    text = tables.render(spec, tables.cell_table(spec, frame))
    md = text.markdown
    assert "**Test accuracy on CIFAR-10 (paper: Table 1)**" in md
    assert "| ResNet-56 " in md and "**94.70** ± 0.14 (n=2)" in md and "Average" in md
    assert "Missing runs (1): cifar10/resnet56/sampa/default/" in md
    assert "Synthetic" not in md
    tex = text.latex
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    assert r"\textbf{94.70}{\scriptsize\,$\pm$ 0.14 (n=2)}" in tex  # bold: the mean only
    assert r"$\times$2/200" in tex
    csv = pd.read_csv(pd.io.common.StringIO(text.csv))
    assert {"mean", "std", "n", "n_planned", "best", "missing"} <= set(csv.columns)
    assert set(csv["arm"]) == {"SGD", "SAM", "SAMPa-0.2", "SAMPa-0.2 (400 ep)"}
    again = tables.render(spec, tables.cell_table(spec, frame))
    assert again == text  # byte-stable


def test_metrics_as_rows_with_best_direction(runs, tmp_path):
    plan, root, _ = runs
    for run in plan.runs["t4"]:
        write_run(
            root,
            run,
            0.95 if run.cell["arm"] == "SAM" else 0.94,
            time_s=20.0 if run.cell["arm"] == "SAM" else 11.0,
        )
    frame = collect_runs([root / p for p in plan.unique_runs()], root)
    cells = tables.cell_table(plan.specs["t4"], frame)
    assert cell(cells, arm="SAM", metric="test_acc")["best"]
    assert cell(cells, arm="SAMPa-0.2", metric="time_per_epoch_s")["best"]
    md = tables.render_markdown(plan.specs["t4"], cells)
    assert "| Test accuracy (%) " in md and "| Time/epoch (s) " in md


def test_diverged_runs_are_listed_not_averaged(runs):
    plan, root, _ = runs
    victim = next(r for r in plan.runs["t1"] if r.cell["arm"] == "SGD" and r.seed == 0)
    write_run(root, victim, 0.1, diverged=True)
    frame = collect_runs([root / p for p in plan.unique_runs()], root)
    sgd = cell(
        tables.cell_table(plan.specs["t1"], frame), model=victim.cell["model"], arm="SGD", metric="test_acc"
    )
    assert sgd["n"] == 2 and "seed0 (diverged)" in sgd["missing"]


def test_synthetic_runs_are_flagged():
    spec = {"note": "", "title": "x"}
    assert tables.warning_lines(spec, ["synthetic"]) == [
        "Synthetic data (Synthetic-10): these numbers are not the paper's results."  # display name
    ]
    assert tables.warning_lines(spec, ["cifar10"]) == []


def test_table_axes_must_cover_varying_axes(runs):
    plan, _, frame = runs
    spec = {**plan.specs["t1"], "table": {"rows": [], "columns": ["arm"], "metrics": ["test_acc"]}}
    with pytest.raises(tables.TableError, match="axis 'model' varies"):
        tables.cell_table(spec, frame)


def test_not_run_table_says_what_is_missing_in_every_format():
    spec = {
        "id": "table3",
        "title": "ImageNet",
        "paper": "Table 3",
        "note": "",
        "not_run": "needs ImageNet at /d/imagenet",
    }
    text = tables.render_not_run(spec)
    assert "not run: needs ImageNet at /d/imagenet." in text.markdown and "(paper: Table 3)" in text.markdown
    assert r"\textit{not run: needs ImageNet at /d/imagenet}" in text.latex
    assert pd.read_csv(io.StringIO(text.csv)).to_dict("records") == [
        {"experiment": "table3", "status": "not run: needs ImageNet at /d/imagenet"}
    ]


def test_figures_are_byte_stable_vector_pdfs(runs, tmp_path):
    from sampa.report.figures import make_figure

    plan, root, frame = runs
    data = tmp_path / "runs.csv"
    frame.to_csv(data, index=False)
    spec = {**plan.specs["t4"], "kind": "figure", "figure": {"plot": "bars", "metrics": ["test_acc"]}}
    spec["arms"] = plan.specs["t1"]["arms"]
    spec["run"] = {**spec["run"], "model": "wrn28-2"}
    outputs = []
    for i in range(2):
        pdf, png = tmp_path / f"f{i}.pdf", tmp_path / f"f{i}.png"
        result = make_figure(spec, data, pdf, png, root)
        outputs.append((pdf.read_bytes(), png.read_bytes()))
    assert outputs[0] == outputs[1]
    pdf_bytes = outputs[0][0]
    assert b"/FontFile2" in pdf_bytes and b"/Type3" not in pdf_bytes and b"CreationDate" not in pdf_bytes
    assert set(result.frame["arm"]) == {"SGD", "SAM", "SAMPa-0.2", "SAMPa-0.2 (400 ep)"}


def test_std_bands_and_error_bars_stay_within_the_metrics_range(tmp_path, monkeypatch):
    """Accuracy 97.3 ± 3.8 % at lambda = 1: Figure 3's band and a bar's error bar end at 100 %."""
    from matplotlib.collections import PolyCollection

    from sampa.report import style
    from sampa.report.figures import make_figure, sd_band

    sweep = {
        "kind": "figure",
        "title": "Test accuracy against lambda",
        "run": {"model": "resnet56"},
        "arms": ["sampa"],
        "grid": {"hparams.lam": [0.0, 1.0]},
        "figure": {"plot": "line", "x": "hparams.lam", "metrics": ["test_acc"]},
    }
    plan = ex.plan({**CONFIG, "experiments": {"f3": sweep}})
    root = tmp_path / "runs"
    acc = {"0": [0.90, 0.91, 0.92], "1": [0.99, 1.0, 0.93]}
    for run in plan.runs["f3"]:
        write_run(root, run, acc[run.cell["hparams.lam"]][run.seed])
    frame = collect_runs([root / r.path for r in plan.runs["f3"]], root)
    drawn = []
    monkeypatch.setattr(style, "save", lambda fig, pdf, png: drawn.append(fig))
    spec = plan.specs["f3"]
    outputs = (tmp_path / "f.pdf", tmp_path / "f.png")
    make_figure(spec, frame, *outputs, root)
    lam1 = {"label": "SAMPa-1", "optimizer": "sampa", "hparams": {"rho": 0.1, "lam": 1.0}}
    bars = {**sweep, "arms": [lam1], "grid": {}, "figure": {"plot": "bars", "metrics": ["test_acc"]}}
    make_figure(ex.resolve({**CONFIG, "experiments": {"f2": bars}}, "f2"), frame, *outputs, root)

    line, bar = (fig.axes[0] for fig in drawn)
    (band,) = [c for c in line.collections if isinstance(c, PolyCollection)]
    top = max(path.vertices[:, 1].max() for path in band.get_paths())
    assert top == pytest.approx(100.0)  # clipped there, not dropped: 97.3 + 3.8 would be 101.1
    ends = [x for error_bar in bar.lines for x in error_bar.get_xdata()]
    assert max(ends) == pytest.approx(100.0) and min(ends) > 90
    low, high = sd_band("grad_cosine")(pd.Series([1.0, 0.9, 0.2]))
    assert high == 1.0 and low == pytest.approx(0.7 - math.sqrt(0.19))


def test_seed_dots_stand_out_on_every_bar_colour():
    """Figure 2's per-seed dots: a face or an edge of at least half a point with WCAG contrast >= 3 against
    every optimizer's bar colour (black dots were invisible on SGD's and ESAM's black bars)."""
    from matplotlib.colors import to_rgb

    from sampa.report.figures import SEED_DOTS
    from sampa.report.style import COLORS

    def luminance(color: str) -> float:
        rgb = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in to_rgb(color)]
        return 0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]

    def contrast(a: str, b: str) -> float:
        high, low = sorted((luminance(a), luminance(b)), reverse=True)
        return (high + 0.05) / (low + 0.05)

    for name, bar in COLORS.items():
        edge = contrast(SEED_DOTS["edgecolor"], bar) if SEED_DOTS["linewidth"] >= 0.5 else 0.0
        assert max(contrast(SEED_DOTS["color"], bar), edge) >= 3, name


def test_runs_trained_under_other_settings_are_flagged_stale(runs):
    plan, root, _ = runs
    victim = next(r for r in plan.runs["t1"] if r.cell["arm"] == "SAM" and r.seed == 1)
    metrics_file = root / victim.path / "metrics.json"
    metrics = json.loads(metrics_file.read_text())
    metrics["config"]["label_smoothing"] = 0.0  # e.g. trained before a RunConfig default changed
    metrics_file.write_text(json.dumps(metrics))
    frame = collect_runs([root / p for p in plan.unique_runs()], root)
    sam = cell(
        tables.cell_table(plan.specs["t1"], frame), model=victim.cell["model"], arm="SAM", metric="test_acc"
    )
    assert sam["n"] == 2
    assert "seed1 (stale: label_smoothing is 0.0 in the run, 0.1 planned)" in sam["missing"]


def test_a_setting_the_run_does_not_read_never_makes_it_stale():
    """STS-B reads no label smoothing (sampa.config.READ_WHEN): a run trained with 0 under its old path
    matches a plan that leaves it out; a setting it reads still makes it stale."""
    from sampa.report.cells import stale_reason

    settings = {"dataset": "glue-stsb", "model": "bert-tiny", "optimizer": "sam", "hparams": {}, "seed": 0}
    run = ex.PlannedRun("t6", {"arm": "SAM"}, {}, 0, settings, ex.run_path(settings))
    record = {"dataset": "glue-stsb", "model": "bert-tiny", "optimizer": "sam", "seed": 0}
    assert stale_reason(pd.Series({**record, "config.label_smoothing": 0.0}), run) is None
    stale = stale_reason(pd.Series({**record, "config.lr": 0.5}), run)
    assert stale == "stale: lr is 0.5 in the run, 0.1 planned"


def test_commands_plan_aggregate_table(runs, tmp_path, capsys, monkeypatch):
    import yaml

    from sampa.cli import main

    plan, root, _ = runs
    config = tmp_path / "config.yaml"
    t3 = {
        "kind": "table",
        "title": "x",
        "run": {"dataset": "imagenet", "model": "resnet50", "batch_size": 8},
        "arms": ["sam"],
        "table": {"rows": ["arm"], "columns": ["metric"], "metrics": ["test_top1_acc"]},
    }
    experiments = {**CONFIG["experiments"], "t3": t3}
    monkeypatch.setenv("SAMPA_DATA", str(tmp_path / "data"))
    config.write_text(yaml.safe_dump({**CONFIG, "experiments": experiments}))
    assert main(["plan", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "t1 table" in out and "24 runs" in out and "total" in out

    runs_csv = tmp_path / "runs.csv"
    dirs = [str(root / p) for p in plan.unique_runs()]
    assert main(["aggregate", "--runs-root", str(root), "--out", str(runs_csv), *dirs]) == 0
    assert "24 runs: 23 complete, 1 incomplete" in capsys.readouterr().err
    md = tmp_path / "t1.md"
    args = ["table", "--config", str(config), "--experiment", "t1", "--runs", str(runs_csv), "--md", str(md)]
    assert main(args) == 0 and md.read_text().startswith("**Test accuracy on CIFAR-10")

    t3_md = tmp_path / "t3.md"
    assert main(["table", "--config", str(config), "--experiment", "t3", "--md", str(t3_md)]) == 0
    assert f"not run: needs ImageNet at {tmp_path / 'data' / 'imagenet'}" in t3_md.read_text()
    assert main(["table", "--config", str(config), "--experiment", "t9"]) == 2
    assert "unknown experiment 't9'; choose one of: t1, t3, t4" in capsys.readouterr().err


def test_table_and_figure_from_run_directories_equal_those_from_the_runs_table(runs, tmp_path, capsys):
    # the workflow gives a table its runs' outcome records (no aggregate job): same bytes as from the CSV
    from sampa.report.commands import main

    plan, root, _ = runs
    runs_csv = tmp_path / "runs.csv"
    records = [str(root / path / "outcome.json") for path in dict.fromkeys(r.path for r in plan.runs["t1"])]
    assert main(["aggregate", "--runs-root", str(root), "--out", str(runs_csv), *records]) == 0
    table = ["table", "--spec", ex.spec_json(plan.specs["t1"])]
    figure_spec = {**plan.specs["t1"], "kind": "figure", "figure": {"plot": "bars", "metrics": ["test_acc"]}}
    figure = ["figure", "--spec", json.dumps(figure_spec), "--runs-root", str(root)]
    made = {}
    for source, inputs in (("csv", []), ("dirs", ["--runs-root", str(root), *records])):
        table_in = ["--runs", str(runs_csv)] if source == "csv" else inputs
        outs = {ext: tmp_path / f"{source}.{ext}" for ext in ("md", "tex", "csv", "pdf", "png")}
        assert main([*table, *table_in, *(f"--{e}={outs[e]}" for e in ("md", "tex", "csv"))]) == 0
        assert "| SAM " in outs["md"].read_text()
        fig_out = {e: tmp_path / f"{source}-figure.{e}" for e in ("pdf", "png", "csv")}
        fig_in = ["--data", str(runs_csv)] if source == "csv" else records
        assert main([*figure, *fig_in, *(f"--{e}={fig_out[e]}" for e in fig_out)]) == 0
        made[source] = [path.read_bytes() for path in [*outs.values(), *fig_out.values()] if path.exists()]
    assert len(made["dirs"]) == 6 and made["dirs"] == made["csv"]

    # both, or neither: one line, exit 2, nothing written
    assert main([*table, "--runs", str(runs_csv), *records]) == 2
    assert "give run directories or --runs, not both" in capsys.readouterr().err
    assert main([*table, "--md", str(tmp_path / "none.md")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "give run directories or --runs (the runs table" in err
    assert not (tmp_path / "none.md").exists()


def test_the_table_command_expands_the_experiments_runs_once(runs, tmp_path, monkeypatch):
    """Checking the spec, choosing its run directories, the cells and the paper comparison share one
    expansion of the runs (each validates every run of the experiment)."""
    from sampa.report import cells as cells_module
    from sampa.report.commands import main

    plan, root, _ = runs
    expand, calls = ex.expand_experiment, []
    counted = lambda spec, *rest: calls.append(spec["id"]) or expand(spec, *rest)  # noqa: E731
    monkeypatch.setattr(ex, "expand_experiment", counted)
    monkeypatch.setattr(cells_module, "expand_experiment", counted)
    records = [str(root / path) for path in dict.fromkeys(r.path for r in plan.runs["t1"])]
    table = ["table", "--spec", ex.spec_json(plan.specs["t1"]), "--runs-root", str(root), *records]
    assert main([*table, "--md", str(tmp_path / "t1.md")]) == 0
    assert "| SAM " in (tmp_path / "t1.md").read_text() and calls == ["t1"]


def test_run_directories_outside_the_experiment_are_an_error_or_ignored_with_a_warning(
    runs, tmp_path, capsys
):
    import shutil

    from sampa.report.commands import main

    plan, root, _ = runs
    ours = [str(root / path) for path in dict.fromkeys(r.path for r in plan.runs["t1"])]
    figure_spec = {**plan.specs["t1"], "kind": "figure", "figure": {"plot": "bars", "metrics": ["test_acc"]}}
    table = ["table", "--spec", ex.spec_json(plan.specs["t1"]), "--runs-root", str(root)]
    figure = ["figure", "--spec", json.dumps(figure_spec), "--runs-root", str(root)]
    # the same runs under another root (--runs-root forgotten), and a run of no experiment
    elsewhere = [str(tmp_path / "elsewhere" / Path(p).relative_to(root)) for p in ours[:2]]
    stranger = str(root / "cifar10/resnet56/sam/rho=0.5/default/seed0")
    for command, outs in ((table, ("md",)), (figure, ("pdf", "png"))):
        files = {ext: tmp_path / f"{command[0]}.{ext}" for ext in outs}
        written = [f"--{ext}={path}" for ext, path in files.items()]
        assert main([*command, *written, *elsewhere, stranger]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        assert f"RUN {elsewhere[0]!r} is not a run of experiment 't1'" in err
        assert f"e.g. {str(root / plan.runs['t1'][0].path)!r}" in err
        assert not any(path.exists() for path in files.values())

        assert main([*command, *written, *ours]) == 0
        assert "warning" not in capsys.readouterr().err
        made = [path.read_bytes() for path in files.values()]
        assert main([*command, *written, *elsewhere, *ours, stranger]) == 0
        err = capsys.readouterr().err
        assert f"warning: ignored 3 of {len(ours) + 3} RUN paths that are not runs of experiment 't1'" in err
        assert f"(first: {elsewhere[0]!r})" in err
        assert [path.read_bytes() for path in files.values()] == made  # as if they were not given

    # an absent directory of a planned run is a missing run, not an error (as for aggregate)
    gone = next(r for r in plan.runs["t1"] if str(root / r.path) == ours[0])
    shutil.rmtree(ours[0])
    csv = tmp_path / "absent.csv"
    assert main([*table, f"--csv={csv}", *ours]) == 0
    assert "warning" not in capsys.readouterr().err
    frame = pd.read_csv(csv)
    assert cell(frame, model=gone.cell["model"], arm=gone.cell["arm"], metric="test_acc")["n"] == 2


def test_the_workflow_gives_tables_and_figures_only_their_own_runs():
    """The workflow passes each table and figure its planned runs (never warned about as not its own)."""
    from sampa.report.runs import run_id

    plan = ex.plan(ex.load_config(Path(__file__).parents[1] / "configs" / "smoke.yaml"))
    for name, spec in plan.specs.items():
        planned = {r.path for r in ex.expand_experiment(json.loads(ex.spec_json(spec)))}
        given = [f"results/runs/{r.path}/outcome.json" for r in plan.runs[name]]
        assert {run_id(path, "results/runs") for path in given} <= planned, name


def test_optional_metrics_are_not_applicable_rather_than_missing(runs):
    plan, _, frame = runs
    spec = copy.deepcopy(plan.specs["t1"])
    spec["table"]["metrics"] = ["test_acc", "communication_share"]
    spec["table"]["columns"] = ["arm", "metric"]
    spec["table"]["average_row"] = spec["table"]["cost_row"] = False
    cells = tables.cell_table(spec, frame)
    comm = cells[cells["metric"] == "communication_share"]
    assert (comm["text"] == "—").all()  # one-device runs: no exchange to measure
    assert not comm["missing"].str.contains("no value|not applicable").any()
    md = tables.render_markdown(spec, cells)
    assert md.count("Missing runs (1)") == 1  # only the interrupted SAMPa run


def test_every_optimizer_has_a_look_told_apart_without_colour():
    from sampa.optim import METHOD_NAMES
    from sampa.report import style

    assert set(style.STYLES) == set(METHOD_NAMES)
    pairs = [(c, m) for c, m, _ in style.STYLES.values()]
    assert len(set(pairs)) == len(pairs)  # colour and marker never both shared
    assert {c for c, _, _ in style.STYLES.values()} <= set(style.OKABE_ITO)
    looks = style.looks([("SAMPa-0", "sampa"), ("SAMPa-0.2", "sampa"), ("SAM", "sam")])
    assert looks["SAMPa-0"].linestyle != looks["SAMPa-0.2"].linestyle  # one optimizer, two arms
    assert looks["SAMPa-0"].marker != looks["SAMPa-0.2"].marker


def test_arms_all_follow_the_paper_order():
    from sampa.optim import METHOD_NAMES

    arms = ex.all_arms({})
    names = [arm["optimizer"] for arm in arms]
    assert sorted(names) == sorted(METHOD_NAMES)
    assert names[:3] == ["sgd", "sam", "sampa"]
    assert names.index("looksam") < names.index("esam") < names.index("msam") < names.index("sampa-msam")


def test_toy_figure_lines_are_the_upper_envelope():
    from sampa.report.figures import TOY_WINDOW, toy_envelope

    steps = pd.Series([1.0, 0.1, 1.0, 0.1] * 50)  # a step-to-step oscillation
    envelope = toy_envelope(steps)
    assert (envelope >= steps).all()
    assert envelope.iloc[TOY_WINDOW:-TOY_WINDOW].eq(1.0).all()  # the oscillation's top, not a band


def test_report_layers_import_one_way_without_function_level_imports():
    import ast

    import sampa.report

    root = Path(sampa.report.__file__).parent
    graph: dict[str, set[str]] = {}
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text())
        names = {
            (node.module or "").removeprefix("sampa.report.")
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sampa.report.")
        }
        graph[path.stem] = names & {p.stem for p in root.glob("*.py")}
        if path.stem in ("cells", "compare", "latex", "tables"):
            nested = [
                inner
                for func in ast.walk(tree)
                if isinstance(func, ast.FunctionDef)
                for inner in ast.walk(func)
                if isinstance(inner, ast.Import | ast.ImportFrom)
            ]
            assert not nested, f"{path.stem}: import inside a function"
    assert "compare" not in graph["cells"] and "tables" not in graph["cells"] | graph["compare"]
    done: set[str] = set()

    def visit(name: str, stack: tuple[str, ...]) -> None:
        assert name not in stack, f"import cycle: {' -> '.join((*stack, name))}"
        if name not in done:
            for other in graph.get(name, ()):
                visit(other, (*stack, name))
            done.add(name)

    for name in graph:
        visit(name, ())


# ----------------------------------------------------------------------------------------------
# Table 6: GLUE tasks with their own metrics and the GLUE average


GLUE_CONFIG = {
    "name": "g",
    "seeds": [0, 1],
    "run": {"model": "bert-tiny", "base_optimizer": "adamw", "lr": 2.0e-5, "batch_size": 32, "epochs": 3},
    "experiments": {
        "t6": {
            "kind": "table",
            "title": "GLUE",
            "paper": "Table 6",
            "arms": [{"label": "AdamW", "optimizer": "sgd"}, {"label": "SAM", "optimizer": "sam"}],
            "grid": {"dataset": ["glue-cola", "glue-mrpc", "glue-stsb"]},
            "table": {
                "rows": ["arm"],
                "columns": ["dataset", "metric"],
                "metrics": ["glue_mcc", "glue_acc", "glue_f1", "glue_pearson", "glue_spearman"],
                "average_column": "glue_score",
            },
        }
    },
}
# the task metrics (in %, as the table shows them) of seeds 0 and 1, per arm and task
GLUE_RESULTS = {
    ("AdamW", "glue-cola"): [{"mcc": 50.0}, {"mcc": 52.0}],
    ("AdamW", "glue-mrpc"): [{"acc": 80.0, "f1": 86.0}, {"acc": 82.0, "f1": 88.0}],
    ("AdamW", "glue-stsb"): [{"pearson": 84.0, "spearman": 83.0}, {"pearson": 86.0, "spearman": 85.0}],
    ("SAM", "glue-cola"): [{"mcc": 54.0}, {"mcc": 57.0}],
    ("SAM", "glue-mrpc"): [{"acc": 84.0, "f1": 88.0}, {"acc": 86.0, "f1": 90.0}],
    ("SAM", "glue-stsb"): [{"pearson": 85.0, "spearman": 84.0}, {"pearson": 87.0, "spearman": 86.0}],
}


@pytest.fixture(params=[2, 1], ids=["fractions", "percent-v1"])
def glue_runs(tmp_path, request):
    pytest.importorskip("transformers", reason="GLUE runs need the nlp extra")
    spec = ex.resolve(GLUE_CONFIG, "t6")
    return spec, write_glue_runs(tmp_path, spec, request.param)


def write_glue_runs(root: Path, spec: dict, version: int = 2) -> pd.DataFrame:
    """The planned runs of a GLUE spec, finished with the scores of GLUE_RESULTS as metrics.json files of
    ``version`` 2 (fractions) or 1 (text-task scores in %, no ``metrics_version``); their runs table."""
    planned = ex.plan_experiment(spec)
    unit = 100 if version == 1 else 1
    for run in planned:
        percent = GLUE_RESULTS[(run.cell["arm"], run.settings["dataset"])][run.seed]
        scores = {k: v / 100 * unit for k, v in percent.items()}
        d = root / run.path
        d.mkdir(parents=True)
        config = {**{k: v for k, v in run.settings.items()}, "devices": 1}
        metrics = {
            "status": "complete",
            "test_acc": percent["acc"] / 100 if "acc" in percent else None,
            "test_task_metrics": scores,
            "test_task_score": sum(scores.values()) / len(scores),
            "config": config,
        } | ({"metrics_version": 2, "test_is_val": True} if version == 2 else {})
        (d / "metrics.json").write_text(json.dumps(metrics))
    return collect_runs([root / r.path for r in planned], root)


def test_glue_runs_in_percent_and_in_fractions_make_the_same_table(tmp_path):
    """Run directories written before scores were fractions (version 1: GLUE's in %) read as fractions."""
    pytest.importorskip("transformers", reason="GLUE runs need the nlp extra")
    spec = ex.resolve(GLUE_CONFIG, "t6")
    made = {}
    for version in (1, 2):
        frame = write_glue_runs(tmp_path / str(version), spec, version)
        assert frame["test_task_score"].between(0, 1).all() and (frame["metrics_version"] == 2).all()
        cells = tables.cell_table(spec, frame)
        made[version] = (frame.drop(columns="test_is_val", errors="ignore"), tables.render(spec, cells, None))
    pd.testing.assert_frame_equal(made[1][0], made[2][0])
    assert made[1][1] == made[2][1]  # markdown, LaTeX and CSV
    assert "| 55.5 ± 2.1 " in made[1][1].markdown  # SAM's CoLA Mcc in %, 1 decimal


def test_glue_table_has_each_tasks_metrics_and_the_glue_average(glue_runs):
    import statistics

    spec, frame = glue_runs
    cells = tables.cell_table(spec, frame)
    shown = {(c.dataset, c.metric) for c in cells.itertuples() if c.arm == "SAM"}
    assert shown == {
        ("Average", "glue_score"),
        ("CoLA", "glue_mcc"),
        ("MRPC", "glue_acc"),
        ("MRPC", "glue_f1"),
        ("STS-B", "glue_pearson"),
        ("STS-B", "glue_spearman"),
    }  # no Acc for CoLA, no Mcc for MRPC
    for arm in ("AdamW", "SAM"):  # per seed: the mean over tasks of each task's mean metric
        per_seed = [
            statistics.fmean(
                statistics.fmean(GLUE_RESULTS[(arm, task)][seed].values())
                for task in ("glue-cola", "glue-mrpc", "glue-stsb")
            )
            for seed in (0, 1)
        ]
        average = cell(cells, arm=arm, dataset="Average", metric="glue_score")
        assert average["mean"] == pytest.approx(statistics.fmean(per_seed))
        assert average["std"] == pytest.approx(statistics.stdev(per_seed))
        f1 = cell(cells, arm=arm, dataset="MRPC", metric="glue_f1")
        assert f1["mean"] == pytest.approx(
            statistics.fmean(r["f1"] for r in GLUE_RESULTS[(arm, "glue-mrpc")])
        )
    assert cell(cells, arm="SAM", dataset="Average", metric="glue_score")["best"]

    text = tables.render(spec, cells, cmp.compare(spec, cells, frame))
    header = next(line for line in text.markdown.splitlines() if line.startswith("| Method"))
    assert [h.strip() for h in header.strip("|").split("|")] == [
        "Method",
        "Average / GLUE score",
        "CoLA / Mcc",
        "MRPC / Acc",
        "MRPC / F1",
        "STS-B / Pearson",
        "STS-B / Spearman",
    ]
    assert "| SAM " in text.markdown and "55.5 ± 2.1" in text.markdown  # CoLA Mcc of SAM, 1 decimal
    # the paper bolds only the GLUE average: SAM's best CoLA Mcc (55.5) is not bold, its Average is
    assert cell(cells, arm="SAM", dataset="CoLA", metric="glue_mcc")["best"]
    sam_row = next(line for line in text.markdown.splitlines() if line.startswith("| SAM "))
    assert sam_row.count("**") == 2 and sam_row.split("|")[2].strip().startswith("**")
    assert text.latex.count(r"\textbf{") == 1 and "best mean of the Average column in bold" in text.markdown
    compared = cmp.compare(spec, cells, frame).frame
    mrpc_f1 = compared[(cells.loc[compared.index, "dataset"] == "MRPC") & (compared["metric"] == "glue_f1")]
    assert sorted(mrpc_f1["paper_mean"]) == [89.9, 90.5]  # AdamW's and SAM's F1 beside ours
    comparison = cmp.compare(spec, cells, frame)
    assert any("GLUE" in u for u in comparison.unmatched)  # our average of 3 tasks is not the paper's of 9
    # 52 paper cells, 10 compared (2 arms x CoLA Mcc, MRPC Acc/F1, STS-B Pearson/Spearman): two groups
    line = (
        "Paper cells without a counterpart here (42): BERT-base on GLUE (AdamW, SAM; GLUE score, SST-2 Acc, "
        "QQP Acc/F1, MNLI Acc, QNLI Acc, RTE Acc, WNLI Acc); BERT-base on GLUE (SAMPa-0, SAMPa-0.1; GLUE "
        "score, CoLA Mcc, SST-2 Acc, MRPC Acc/F1, STS-B Pearson/Spearman, QQP Acc/F1, MNLI Acc, QNLI Acc, "
        "RTE Acc, WNLI Acc)."
    )
    assert len(comparison.unmatched) == 42 and cmp.unmatched_line(comparison) == line
    assert line in text.markdown.splitlines()
    caption = next(c for c in text.latex.splitlines() if c.startswith(r"\caption{Against the paper"))
    assert caption.endswith(" " + line + "}")  # shown in the comparison's caption, not a comment
    assert r"\begin{tabular}" in text.latex


STSB_NEEDS = "needs GLUE STS-B at /d/glue (STS-B/ TSVs or stsb/ parquet files)"


def test_glue_table_without_one_tasks_data_shows_the_others_and_says_what_it_needs(tmp_path):
    import statistics

    pytest.importorskip("transformers", reason="GLUE runs need the nlp extra")
    spec = ex.resolve(GLUE_CONFIG, "t6")
    spec["needs"] = {"glue-stsb bert-tiny": [STSB_NEEDS]}  # as the plan marks it without STS-B's files
    frame = write_glue_runs(tmp_path, spec)  # CoLA and MRPC only
    cells = tables.cell_table(spec, frame)
    stsb = cell(cells, arm="SAM", dataset="STS-B", metric="glue_pearson")
    assert (stsb["text"], stsb["n"], stsb["n_planned"], stsb["needs"]) == ("— [a]", 0, 0, STSB_NEEDS)
    assert not stsb["missing"] and not cells["missing"].astype(bool).any()  # not "missing runs"
    assert cell(cells, arm="SAM", dataset="CoLA", metric="glue_mcc")["text"] == "55.5 ± 2.1"  # as before
    for arm in ("AdamW", "SAM"):  # the average over the two tasks that ran, and it says so
        per_seed = [
            statistics.fmean(
                statistics.fmean(GLUE_RESULTS[(arm, task)][seed].values())
                for task in ("glue-cola", "glue-mrpc")
            )
            for seed in (0, 1)
        ]
        average = cell(cells, arm=arm, dataset="Average", metric="glue_score")
        assert average["mean"] == pytest.approx(statistics.fmean(per_seed))
        assert average["partial"] == "2 of 3 datasets" and average["text"].endswith(" (2 of 3 datasets)")

    comparison = cmp.compare(spec, cells, frame)
    assert not (cells.loc[comparison.frame.index, "dataset"] == "Average").any()  # not compared
    assert "BERT-base SAM GLUE" in comparison.unmatched
    verdicts = comparison.frame["verdict"][cells.loc[comparison.frame.index, "dataset"] == "STS-B"]
    assert set(verdicts) == {cmp.NOT_HERE}
    text = tables.render(spec, cells, comparison)
    md = text.markdown
    assert "| — [a] " in md and "| 67.5 ± 1.4 (2 of 3 datasets) " in md
    assert f"\n\n[a] not run here: {STSB_NEEDS}.\n\n{tables.NOT_RUN_HINT}\n" in md
    assert md.count("[a] not run here") == 1 and "Missing runs" not in md
    assert "Average (k of m): over the k that ran here, not compared with the paper's" in md
    assert r"--{\scriptsize\,[a]}" in text.latex
    assert r"[a] not run here: needs GLUE STS-B at /\allowbreak{}d/\allowbreak{}glue" in text.latex
    csv = pd.read_csv(io.StringIO(text.csv), keep_default_na=False)
    assert set(csv.loc[csv["dataset"] == "STS-B", "needs"]) == {STSB_NEEDS}


def test_a_table_missing_two_things_marks_each_cell_with_its_own(tmp_path):
    pytest.importorskip("transformers", reason="GLUE runs need the nlp extra")
    spec = ex.resolve(GLUE_CONFIG, "t6")
    mrpc = "needs GLUE MRPC at /d/glue (MRPC/ TSVs or mrpc/ parquet files)"
    spec["needs"] = {"glue-mrpc bert-tiny": [mrpc], "glue-stsb bert-tiny": [STSB_NEEDS]}
    cells = tables.cell_table(spec, write_glue_runs(tmp_path, spec))  # CoLA only
    assert cell(cells, arm="SAM", dataset="MRPC", metric="glue_f1")["text"] == "— [a]"
    assert cell(cells, arm="SAM", dataset="STS-B", metric="glue_pearson")["text"] == "— [b]"
    assert cell(cells, arm="SAM", dataset="Average", metric="glue_score")["partial"] == "1 of 3 datasets"
    assert tables.needs_lines(cells) == [
        f"[a] not run here: {mrpc}.",
        f"[b] not run here: {STSB_NEEDS}.",
        tables.NOT_RUN_HINT,
    ]


def test_paper_cells_are_summarised_as_products_of_where_method_and_metric():
    from sampa.report import paper

    assert paper.summarise(paper.rows_of("Table 6")) == [
        "BERT-base on GLUE (AdamW, SAM, SAMPa-0, SAMPa-0.1; GLUE score, CoLA Mcc, SST-2 Acc, MRPC Acc/F1, "
        "STS-B Pearson/Spearman, QQP Acc/F1, MNLI Acc, QNLI Acc, RTE Acc, WNLI Acc)"
    ]
    assert paper.summarise(paper.rows_of("Table 1")) == [
        "DenseNet-121, ResNet-56, VGG19-BN, WRN-28-2, WRN-28-10, Average on CIFAR-10 "
        "(SGD, SAM, SAMPa-0, SAMPa-0.2, SAMPa-0.2 (grey column); Test accuracy)"
    ]
    table7 = paper.rows_of("Table 7")
    assert paper.summarise(table7.iloc[1:]) == [  # without 0 % SGD: not one product, two groups
        "ResNet-32 on CIFAR-10, label noise 0% (SAM, SAMPa-0, SAMPa-0.2; Test accuracy)",
        "ResNet-32 on CIFAR-10, label noise 20%, 40%, 60%, 80% (SGD, SAM, SAMPa-0, SAMPa-0.2; Test accuracy)",
    ]
    assert paper.summarise(paper.rows_of("Table 12"))[0].startswith(
        "ResNet-56 on CIFAR-10, batch size 64, 128,"
    )
    assert paper.summarise(table7.iloc[:0]) == []


def test_averages_over_different_datasets_are_not_ranked(tmp_path):
    """SAMPa (WRN-28-2) lacks CIFAR-100 here: its Average over CIFAR-10 alone is never bold against SAM's and
    SGD's over both datasets, nor against an Average over another single dataset."""
    arms = {
        "sgd": {"label": "SGD", "optimizer": "sgd", "run": {"model": "resnet56"}},
        "sam": {"label": "SAM", "optimizer": "sam", "hparams": {"rho": 0.05}, "run": {"model": "resnet56"}},
        "sampa": {
            "label": "SAMPa",
            "optimizer": "sampa",
            "hparams": {"lam": 0.2},
            "run": {"model": "wrn28-2"},
        },
    }
    table = {"rows": ["dataset"], "columns": ["arm"], "metrics": ["test_acc"], "average_row": True}
    experiment = {"kind": "table", "title": "x", "arms": list(arms), "table": table}
    experiment["grid"] = {"dataset": ["cifar10", "cifar100"]}
    spec = ex.resolve({**CONFIG, "arms": arms, "experiments": {"t": experiment}}, "t")
    acc = {("SGD", "cifar10"): 0.94, ("SAM", "cifar10"): 0.95, ("SAMPa", "cifar10"): 0.97}
    acc |= {("SGD", "cifar100"): 0.75, ("SAM", "cifar100"): 0.77, ("SAMPa", "cifar100"): 0.78}
    root = tmp_path / "runs"
    planned = ex.expand_experiment(spec)
    for run in planned:
        write_run(root, run, acc[(run.cell["arm"], run.settings.get("dataset", "cifar10"))] + run.seed / 1000)
    frame = collect_runs([root / r.path for r in planned], root)

    def averages(needs: list[str]) -> pd.DataFrame:
        spec["needs"] = {key: ["needs it"] for key in needs}
        cells = tables.cell_table(spec, frame)
        return cells[cells["dataset"] == "Average"].set_index("arm")

    same = averages(["cifar100 wrn28-2", "cifar100 resnet56"])  # every arm over CIFAR-10 alone: ranked
    assert set(same["partial"]) == {"1 of 2 datasets"} and same["best"].tolist() == [False, False, True]
    assert same["second"].tolist() == [False, True, False]
    for needs in (["cifar100 wrn28-2"], ["cifar100 wrn28-2", "cifar10 resnet56"]):
        cells = averages(needs)
        assert cells.loc["SAMPa", "partial"] == "1 of 2 datasets" and cells.loc["SAMPa", "n"] == 3
        assert not cells["best"].any() and not cells["second"].any(), needs
    text = tables.render(spec, tables.cell_table(spec, frame), None)
    assert "**" not in text.markdown.split("| Average")[1].splitlines()[0]
    assert "; Averages over different datasets are not compared (none in bold)." in text.markdown


def test_paper_cells_in_words_name_the_dataset_where_their_table_has_several():
    """Table 5 has the same ViT cells on CIFAR-10 and CIFAR-100: each reads differently, also when only the
    CIFAR-100 ones are listed; a table of one dataset does not repeat it."""
    from sampa.report import paper

    for name in paper.paper_results()["paper"].unique():
        words = paper.describe_rows(paper.rows_of(name))
        assert len(set(words)) == len(words), name
    table5 = paper.rows_of("Table 5")
    left = paper.describe_rows(table5[table5["benchmark"] == "CIFAR-100"], table=False)
    assert "ViT-B/16 (pretrained, fine-tuned) on CIFAR-100 SAM test_acc" in left
    assert paper.describe_rows(paper.rows_of("Table 1"))[0] == "Table 1 DenseNet-121 SGD test_acc"
