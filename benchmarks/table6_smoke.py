"""Smoke Table 6 re-measured: each method's test accuracy per seed and the CPU time of its runs, side by side.

    python benchmarks/table6_smoke.py                           # configs/smoke.yaml's table6, seeds 0-4
    python benchmarks/table6_smoke.py --seeds 0-9 --set lr=0.002 --set warmup=0

Each run is ``python -m sampa train --settings ... --gpus 0 --threads 1`` with the settings the workflow
plans for the experiment's arms (a fresh process, start-up included, as a workflow job), the seed replaced
and ``--set key=value`` (YAML values) applied over them, into a temporary directory. CPU time is the
child's user + system time (less sensitive to other load than wall time; the load average is printed).
The last line is the mean CPU time of one table: one run per method, one seed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sampa.config import RunConfig  # noqa: E402
from sampa.experiments import load_config, plan  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO / "configs" / "smoke.yaml"))
    p.add_argument("--experiment", default="table6")
    p.add_argument("--seeds", default="0-4", help="a range 'a-b' or a comma-separated list")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a run setting")
    return p.parse_args()


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def parse_seeds(text: str) -> list[int]:
    try:
        if "-" in text:
            low, high = (int(part) for part in text.split("-"))
            seeds = list(range(low, high + 1))
        else:
            seeds = [int(part) for part in text.split(",")]
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0:
        fail(f"--seeds {text!r}: give a range like 0-4 or a list like 0,2,5 of seeds >= 0")
    return seeds


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    fields = sorted(RunConfig().to_dict())
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in fields:
            fail(f"--set {pair!r}: need KEY=VALUE with KEY one of {', '.join(fields)}")
        out[key] = yaml.safe_load(value)
    return out


def arm_settings(config_path: str, experiment: str, overrides: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The settings of each arm of ``experiment`` as the workflow plans them (its first seed's run)."""
    try:
        runs = plan(load_config(config_path)).runs
    except (OSError, ValueError) as err:
        fail(f"--config {config_path!r}: {err}")
    if experiment not in runs:
        fail(f"--experiment {experiment!r} is not planned by {config_path}; choose from {', '.join(runs)}")
    arms: dict[str, dict[str, Any]] = {}
    for run in runs[experiment]:
        arms.setdefault(run.cell["arm"], {**run.settings, **overrides})
    return arms


def train(settings: dict[str, Any], seed: int, out: Path) -> tuple[float | None, float]:
    """Test accuracy (None when the run failed) and CPU seconds of one run in a fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    command = [sys.executable, "-m", "sampa", "train", "--settings", json.dumps({**settings, "seed": seed})]
    proc = subprocess.run(
        [*command, "--gpus", "0", "--threads", "1", "--out", str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"run failed (seed {seed}, exit {proc.returncode}): {tail}", file=sys.stderr)
        return None, cpu
    return json.loads((out / "metrics.json").read_text())["test_acc"], cpu


def row(label: str, accs: list[float | None], cpus: list[float]) -> str:
    done = [100 * a for a in accs if a is not None]
    cells = " ".join(f"{100 * a:5.1f}" if a is not None else " fail" for a in accs)
    stats = f"{statistics.mean(done):5.1f} {statistics.pstdev(done):4.1f} {min(done):5.1f}" if done else "-"
    return f"{label:<12} {cells} | {stats} | " + " ".join(f"{c:5.1f}" for c in cpus) + f" | {sum(cpus):6.1f}"


def main() -> int:
    args = parse_args()
    seeds = parse_seeds(args.seeds)
    arms = arm_settings(args.config, args.experiment, parse_overrides(args.set))
    load = os.getloadavg()[0]
    print(f"{args.experiment} of {args.config}; overrides {args.set or 'none'}; load {load:.2f}")
    seed_cols = " ".join(f"{f's{s}':>5}" for s in seeds)
    print(f"{'method':<12} {seed_cols} | {'mean':>5} {'sd':>4} {'min':>5} | {seed_cols} | {'total':>6}")
    print(f"{'':<12} {'test accuracy %':<{6 * len(seeds)}}|{'':17}| CPU seconds per run")
    failed, per_seed = False, [0.0] * len(seeds)
    with tempfile.TemporaryDirectory() as tmp:
        for label, settings in arms.items():
            results = [train(settings, s, Path(tmp) / f"{label}-{s}") for s in seeds]
            accs, cpus = [r[0] for r in results], [r[1] for r in results]
            failed |= None in accs
            per_seed = [t + c for t, c in zip(per_seed, cpus, strict=True)]
            print(row(label, accs, cpus), flush=True)
    print(f"CPU seconds of one table ({len(arms)} runs, one seed): mean {statistics.mean(per_seed):.1f} "
          f"over {len(seeds)} seeds (min {min(per_seed):.1f}, max {max(per_seed):.1f})")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
