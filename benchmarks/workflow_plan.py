"""Time ``snakemake -n`` (planning the whole DAG) on a workflow config, default the paper's.

    python benchmarks/workflow_plan.py [--config configs/paper.yaml] [--repeats 3]

The first dry run in a fresh directory plans and validates every run (importing torch with
sampa.config); later ones reuse the cached plan (``.snakemake/sampa/plan-<name>.json``, keyed on the
config and the package's source). Prints both, the number of jobs, and, measured in this process, the
cost of ``sampa.experiments.plan`` alone. Target: a paper dry run in under 5 s. Timings depend on the
machine's load; the load average is printed with them.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def dry_run(config: Path, workdir: Path) -> tuple[float, float, int]:
    """Wall and CPU seconds (user + system, less sensitive to other load) of one dry run, and its jobs."""
    cpu_before = _children_cpu()
    start = time.perf_counter()
    command = [sys.executable, "-m", "snakemake", "-n", "-s", str(REPO / "Snakefile")]
    proc = subprocess.run(
        [*command, "--directory", str(workdir), "--configfile", str(config)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=True,
    )
    seconds = time.perf_counter() - start
    total = re.search(r"^total\s+(\d+)", proc.stdout + proc.stderr, re.MULTILINE)
    return seconds, _children_cpu() - cpu_before, int(total.group(1)) if total else 0


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def in_process(config: Path) -> tuple[float, float, int]:
    start = time.perf_counter()
    import sampa.config  # noqa: F401  (what validation needs: torch, models, optimizers)
    from sampa import experiments

    imported = time.perf_counter()
    plan = experiments.plan(experiments.load_config(config))
    planned = time.perf_counter()
    return imported - start, planned - imported, len(plan.unique_runs())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "paper.yaml")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    cold, warm = [], []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            cold.append(dry_run(args.config, Path(tmp)))
            warm.append(dry_run(args.config, Path(tmp)))
    print(f"snakemake -n {args.config.name}: {cold[0][2]} jobs (target < 5 s)")
    for name, runs in (("first (plans, validates)", cold), ("again (cached plan)", warm)):
        wall = statistics.median(t for t, _, _ in runs)
        cpu = statistics.median(c for _, c, _ in runs)
        shown = ", ".join(f"{t:.2f}" for t, _, _ in runs)
        print(f"  {name:<25} wall {shown} s (median {wall:.2f} s); CPU median {cpu:.2f} s")
    import_s, plan_s, n_runs = in_process(args.config)
    print(f"in this process: import sampa.config {import_s:.2f} s, plan {plan_s:.2f} s ({n_runs} runs)")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
