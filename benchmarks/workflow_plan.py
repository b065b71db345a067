"""Time ``snakemake -n`` (planning the whole DAG) on a workflow config, default the paper's.

    python benchmarks/workflow_plan.py [--config configs/paper.yaml] [--repeats 3]

Prints the wall time of each dry run (median and min), the number of jobs planned, and, measured in
this process, what the Snakefile's own planning costs: importing ``sampa.experiments`` (torch comes
with it) and ``sampa.experiments.plan``. Target: a paper dry run in under 5 s. Timings depend on
the machine's load; the load average is printed with them.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def dry_run(config: Path, workdir: Path) -> tuple[float, int]:
    start = time.perf_counter()
    command = [sys.executable, "-m", "snakemake", "-n", "-q", "-s", str(REPO / "Snakefile")]
    proc = subprocess.run(
        [*command, "--directory", str(workdir), "--configfile", str(config)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=True,
    )
    seconds = time.perf_counter() - start
    total = re.search(r"^total\s+(\d+)", proc.stdout + proc.stderr, re.MULTILINE)
    return seconds, int(total.group(1)) if total else 0


def in_process(config: Path) -> tuple[float, float, int]:
    start = time.perf_counter()
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
    with tempfile.TemporaryDirectory() as tmp:
        runs = [dry_run(args.config, Path(tmp)) for _ in range(args.repeats)]
    times = [t for t, _ in runs]
    print(f"snakemake -n {args.config.name}: {runs[0][1]} jobs")
    print(f"  wall s per dry run: {', '.join(f'{t:.2f}' for t in times)}")
    print(f"  median {statistics.median(times):.2f} s, min {min(times):.2f} s (target < 5 s)")
    import_s, plan_s, n_runs = in_process(args.config)
    print(f"in this process: import sampa.experiments {import_s:.2f} s, plan {plan_s:.2f} s ({n_runs} runs)")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
