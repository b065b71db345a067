"""Checks that run the project's own tools: the CUDA-only tests (3) and the GPU smoke workflow (7).

The workflow runs in a temporary folder (``snakemake --directory``), never in the checkout; with two GPUs
a two-device SAMPa arm is added to ``configs/gpu-smoke.yaml``'s table.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from sampa import io
from sampa.doctor.common import FAIL, ROOT, SKIP, Machine, Row, verdict

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
    if not (ROOT / "tests").is_dir():
        return [Row("3 CUDA-only tests (no host sync)", "tests/ not found (not a checkout)", "-", SKIP)]
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "", *CUDA_TESTS]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    print(proc.stdout[-4000:], proc.stderr[-2000:])
    summary = (proc.stdout.strip().splitlines() or ["no output"])[-1]
    passed = int(m_.group(1)) if (m_ := re.search(r"(\d+) passed", summary)) else 0
    ok = proc.returncode == 0 and passed > 0 and "skipped" not in summary
    return [
        Row("3 CUDA-only tests (no host sync)", "pytest " + " ".join(CUDA_TESTS[:2]), summary, verdict(ok))
    ]


def check_workflow(m: Machine) -> list[Row]:
    name = "7 gpu-smoke workflow"
    if m.kind != "cuda":
        return [Row(name, "no GPU (the CPU workflow is the slow test tests/test_workflow.py)", "-", SKIP)]
    missing = [p for p in ("snakemake", "jsonschema") if importlib.util.find_spec(p) is None]
    if missing:
        return [Row(name, f"not installed here: {', '.join(missing)} (README: GPU acceptance)", "-", SKIP)]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config = smoke_config(m, work / "gpu-smoke.yaml")
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
        proc = subprocess.run(cmd, capture_output=True, text=True)
        print(proc.stdout[-6000:], proc.stderr[-6000:])
        table = work / "results" / "gpu-smoke" / "tables" / "gpu-smoke.md"
        runs = list((work / "results" / "runs").rglob("metrics.json"))
        complete = sum(io.read_json(p).get("status") == "complete" for p in runs)
        expected = len(io.read_yaml_mapping(config, "config", ValueError)["experiments"]["gpu-smoke"]["arms"])
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:160]
            return [Row(name, f"snakemake exited {proc.returncode}", tail, FAIL)]
        return [
            Row(
                name,
                f"{expected} runs + table, {m.gpus} GPU(s)",
                f"{complete}/{expected} runs complete; table: {table.exists()}",
                verdict(table.exists() and complete == expected),
            )
        ]


def smoke_config(m: Machine, path: Path) -> Path:
    """``configs/gpu-smoke.yaml``, with the two-device SAMPa arm where two GPUs exist."""
    config = io.read_yaml_mapping(ROOT / "configs" / "gpu-smoke.yaml", "config", ValueError)
    if m.gpus >= 2:
        config["arms"]["sampa-0.2-2dev"] = TWO_DEVICE_ARM
        config["experiments"]["gpu-smoke"]["arms"].append("sampa-0.2-2dev")
    io.write_text(path, yaml.safe_dump(config, sort_keys=False))
    return path
