"""Every .tex the smoke profile writes: ASCII only, balanced, and (with pdflatex) compiles and fits the page.

The tables are built from run directories written by hand for every run the smoke config plans (a
quarter of them missing or failed, CPU memory only), so no training is needed.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from sampa import experiments as ex
from sampa.report import latex, tables
from sampa.report.compare import compare
from sampa.report.runs import collect_runs
from sampa.report.scorecard import Inputs, scorecard
from sampa.report.scorecard_text import render_latex

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"
#: one single-column NeurIPS page: 5.5 in of text width
DOCUMENT = latex.PREAMBLE + r"\usepackage[textwidth=5.5in]{geometry}\begin{document}%s\end{document}"


def _write_run(root: Path, run: ex.PlannedRun, rng: random.Random) -> None:
    """A finished CPU run directory with the fields the report reads (values drawn from ``rng``)."""
    d = root / run.path
    d.mkdir(parents=True, exist_ok=True)
    config = {"epochs": 2, "devices": 1, **run.settings}
    (d / "config.json").write_text(json.dumps(config))
    metrics = {
        "status": "complete",
        "diverged": False,
        "test_acc": rng.uniform(0.1, 0.3),
        "time": {"epoch_median_s": rng.uniform(1, 3), "step_median_s": rng.uniform(0.01, 0.03)},
        "passes_per_step": {"ideal_sequential": 1.0, "sequential": 2.0, "forward": 2.0},
        "config": config,
        "memory": {"cpu_peak_rss_mib": rng.uniform(600, 800), "per_rank": []},
        "provenance": {"git": {"sha": "abc", "dirty": False}, "devices": [], "resumes": 0},
    }
    (d / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture(scope="module")
def smoke_tex(tmp_path_factory) -> dict[str, str]:
    """The LaTeX of every table of configs/smoke.yaml and of the scorecard, keyed by file name."""
    plan = ex.plan(ex.load_config(SMOKE))
    root = tmp_path_factory.mktemp("runs")
    rng = random.Random(0)
    for i, path in enumerate(plan.unique_runs()):
        if i % 4 != 3:  # every fourth run is missing
            run = next(r for runs in plan.runs.values() for r in runs if r.path == path)
            _write_run(root, run, rng)
    runs = collect_runs([root / p for p in plan.unique_runs()], root)
    specs = dict(plan.specs)
    weights = (
        "/data/root/weights/vit-b16-imagenet21k or in the hub cache (timm/vit_base_patch16_224.orig_in21k)"
    )
    lacks = {"synthetic100 vit-tiny": [f"needs the ViT-B/16 (ImageNet-21k) weights at {weights}"]}
    specs["table5-partial"] = {**plan.specs["table5"], "needs": lacks}  # one row's runs not planned
    out = {}
    for name, spec in specs.items():
        if spec["kind"] == "table":
            cells = tables.cell_table(spec, runs)
            out[f"{name}.tex"] = tables.render_latex(spec, cells, compare(spec, cells, runs))
    card = scorecard(Inputs(plan.specs, runs, None, root))
    out["reproduction.tex"] = render_latex(card)
    return out


def test_every_table_of_the_smoke_profile_is_rendered(smoke_tex):
    assert {"table1.tex", "table4.tex", "table8.tex", "table12.tex", "vsam.tex", "reproduction.tex"} <= set(
        smoke_tex
    )
    assert r"--{\scriptsize\,[a]}" in smoke_tex["table5-partial.tex"]  # Synthetic-100: not run here


def test_tex_is_ascii_with_balanced_environments_and_braces(smoke_tex):
    for name, text in smoke_tex.items():
        assert text.isascii(), f"{name}: {sorted({c for c in text if not c.isascii()})}"
        body = "\n".join(line for line in text.splitlines() if not line.startswith("%"))
        begins = re.findall(r"\\begin\{(\w+\*?)\}", body)
        ends = re.findall(r"\\end\{(\w+\*?)\}", body)
        assert sorted(begins) == sorted(ends), name
        depth = 0
        for match in re.finditer(r"(?<!\\)[{}]", body):
            depth += 1 if match.group() == "{" else -1
            assert depth >= 0, name
        assert depth == 0, name


def test_unmatched_paper_cells_are_summarised_in_a_caption_not_a_comment(smoke_tex):
    caption = next(line for line in smoke_tex["table6.tex"].splitlines() if line.startswith(r"\caption{"))
    assert "Paper cells without a counterpart here (52): BERT-base on GLUE (AdamW, SAM, SAMPa-0" in caption
    comments = [line for text in smoke_tex.values() for line in text.splitlines() if line.startswith("%")]
    assert not [line for line in comments if "without a counterpart" in line]
    assert r"\item Table 6 (52): BERT-base on GLUE (" in smoke_tex["reproduction.tex"]


def test_escape_maps_symbols_to_macros():
    expected = r"$\Delta$ $\le$ 0.1 $\pm$ 2 $\times$ $\lambda$ -- x\_t 50\%"
    assert latex.escape("Δ ≤ 0.1 ± 2 × λ — x_t 50%") == expected
    assert latex.plain("Δ ≤ ±") == "Delta <= +-"
    cell = latex.number_cell("94.70 ± 0.14 (n=2)", bold=True)
    assert cell == r"\textbf{94.70}{\scriptsize\,$\pm$ 0.14 (n=2)}"  # bold: the mean only
    assert latex.number_cell("1.00", underline=True) == r"\underline{1.00}"


@pytest.mark.skipif(
    shutil.which("pdflatex") is None, reason="pdflatex not on PATH (Debian: texlive-latex-recommended)"
)
def test_tex_compiles_and_fits_a_single_column_page(smoke_tex, tmp_path):
    for name, text in smoke_tex.items():
        source = tmp_path / name
        source.write_text(DOCUMENT % text)
        result = subprocess.run(
            ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", source.name],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        log = (tmp_path / name).with_suffix(".log").read_text(errors="replace")
        assert result.returncode == 0, f"{name}: {_first_error(log)}"
        assert "Overfull \\hbox" not in log, f"{name}: {_first_error(log, 'Overfull')}"


def _first_error(log: str, marker: str = "!") -> str:
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(marker):
            return " | ".join(lines[i : i + 3])
    return lines[-1] if lines else ""


def test_vsam_table_keeps_its_rows_without_finished_runs():
    spec = ex.plan(ex.load_config(SMOKE.parent / "paper.yaml")).specs["vsam"]
    cells = tables.cell_table(spec, pd.DataFrame(columns=["run", "status"]))
    assert set(cells["dataset"]) == {"CIFAR-10", "CIFAR-100"}
    table = tables.pivot(spec, cells)
    assert len(table) == 2 * 3  # datasets x models, none dropped
