"""Checks that run the project's own tools: the CUDA-only tests (3) and the GPU smoke workflow (7).

The workflow runs in a temporary folder (``snakemake --directory``), never in the checkout; with two GPUs
a two-device SAMPa arm is added to ``configs/gpu-smoke.yaml``'s table.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from sampa import io
from sampa.doctor.common import FAIL, ROOT, SKIP, Machine, Row, not_a_checkout, verdict

#: the tests that only run on CUDA (no host synchronisation in a step; CUDA batches equal CPU batches)
CUDA_TESTS = ["tests/test_fastpath.py", "tests/test_data.py", "-k", "synchronises or cuda_batches"]
TWO_DEVICE_ARM = {
    "label": "SAMPa-0.2 (2 GPUs)",
    "optimizer": "sampa",
    "hparams": {"rho": 0.1, "lam": 0.2},
    "run": {"devices": 2},
}


def check_cuda_tests(m: Machine) -> list[Row]:
    if m.kind != "cuda":
        return [Row("3 CUDA-only tests (no host sync)", "no GPU: they skip here", "-", SKIP)]
    if why := not_a_checkout("tests"):
        return [Row("3 CUDA-only tests (no host sync)", why, "-", SKIP)]
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *CUDA_TESTS]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    print(proc.stdout[-4000:], proc.stderr[-2000:])
    summary = (proc.stdout.strip().splitlines() or ["no output"])[-1]
    passed = int(m_.group(1)) if (m_ := re.search(r"(\d+) passed", summary)) else 0
    ok = proc.returncode == 0 and passed > 0 and "skipped" not in summary
    return [
        Row("3 CUDA-only tests (no host sync)", "pytest " + " ".join(CUDA_TESTS[:2]), summary, verdict(ok))
    ]


def check_workflow(m: Machine) -> list[Row]:
    """Check 7: the gpu-smoke workflow through snakemake; where snakemake (or jsonschema) is not installed,
    the same jobs through the commands its rules run (train per run, aggregate, table)."""
    name = "7 gpu-smoke workflow"
    if m.kind != "cuda":
        return [Row(name, "no GPU (the CPU workflow is the slow test tests/test_workflow.py)", "-", SKIP)]
    if why := not_a_checkout("configs/gpu-smoke.yaml", "Snakefile"):
        return [Row(name, why, "-", SKIP)]
    missing = [p for p in ("snakemake", "jsonschema") if importlib.util.find_spec(p) is None]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config = smoke_config(m, work / "gpu-smoke.yaml")
        if missing:
            how, error = f"rules' commands ({', '.join(missing)} not installed)", run_commands(config, work)
        else:
            how, error = "snakemake", run_snakemake(m, config, work)
        table = (work / "results" / "gpu-smoke" / "tables" / "gpu-smoke.md").exists()
        metrics = list((work / "results" / "runs").rglob("metrics.json"))
        complete = sum(io.read_json(p).get("status") == "complete" for p in metrics)
    expected = len(io.read_yaml_mapping(ROOT / "configs" / "gpu-smoke.yaml", "config", ValueError)["arms"])
    expected += m.gpus >= 2
    if error:
        return [Row(name, f"via {how}: failed", error, FAIL)]
    figure = f"{complete}/{expected} runs complete; table made: {table}"
    return [Row(name, f"via {how}, {m.gpus} GPU(s)", figure, verdict(table and complete == expected))]


def run_snakemake(m: Machine, config: Path, work: Path) -> str:
    """Run the workflow in ``work``; the last line of its error output if it failed, else ''."""
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(ROOT / "Snakefile"),
        "--directory",
        str(work),
        "--configfile",
        str(config),
        "--cores",
        "4",
        "--resources",
        f"gpu={m.gpus}",
    ]
    return _run(cmd, work)


def run_commands(config: Path, work: Path) -> str:
    """The workflow's jobs without snakemake: ``sampa train`` per planned run, ``aggregate``, ``table``."""
    from sampa.experiments import load_config, plan, spec_json

    planned = plan(load_config(config), schema_checked=True)
    results, runs_root = work / "results" / "gpu-smoke", work / "results" / "runs"
    sampa = [sys.executable, "-m", "sampa"]
    for run in planned.unique_runs().values():
        settings = json.dumps(run.settings, sort_keys=True)
        gpus = str(run.gpus(planned.use_gpus))
        out = str(runs_root / run.path)
        error = _run(
            [*sampa, "train", "--settings", settings, "--out", out, "--gpus", gpus, "--threads", "1"], work
        )
        if error:
            return error
    dirs = [str(runs_root / path) for path in planned.unique_runs()]
    runs_csv = results / "runs.csv"
    error = _run([*sampa, "aggregate", "--runs-root", str(runs_root), "--out", str(runs_csv), *dirs], work)
    spec = spec_json(planned.specs["gpu-smoke"])
    md = str(results / "tables" / "gpu-smoke.md")
    return error or _run([*sampa, "table", "--spec", spec, "--runs", str(runs_csv), "--md", md], work)


def _run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    print("$", " ".join(cmd[:6]), "...\n", proc.stdout[-3000:], proc.stderr[-3000:], flush=True)
    if proc.returncode == 0:
        return ""
    lines = (proc.stderr + proc.stdout).strip().splitlines() or ["no output"]
    return f"exit {proc.returncode}: {lines[-1][:150]}"


def smoke_config(m: Machine, path: Path) -> Path:
    """``configs/gpu-smoke.yaml``, with the two-device SAMPa arm where two GPUs exist."""
    config = io.read_yaml_mapping(ROOT / "configs" / "gpu-smoke.yaml", "config", ValueError)
    if m.gpus >= 2:
        config["arms"]["sampa-0.2-2dev"] = TWO_DEVICE_ARM
        config["experiments"]["gpu-smoke"]["arms"].append("sampa-0.2-2dev")
    io.write_text(path, yaml.safe_dump(config, sort_keys=False))
    return path
