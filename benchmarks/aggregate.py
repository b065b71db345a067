"""Time the aggregation of many run directories (``python -m sampa aggregate``) and one table on them.

    python benchmarks/aggregate.py [--runs 2000]

Writes ``--runs`` synthetic run directories (config.json + metrics.json shaped like the engine's,
with 200-epoch log.jsonl files) into a temporary directory, then times, side by side in this run:
the aggregate command as the workflow calls it (a fresh process, startup included), the same
aggregation in this process, and building one paper-sized table from the resulting runs table.
Target: aggregating 2,000 runs in under 10 s. The load average is printed with the timings.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = ("densenet121", "resnet56", "vgg19bn", "wrn28-2", "wrn28-10")
ARMS = (("sgd", {}, 400), ("sam", {"rho": 0.05}, 200), ("sampa", {"rho": 0.05, "lam": 0.0}, 200))


def fake_run(root: Path, index: int, rng: random.Random) -> Path:
    model = MODELS[index % len(MODELS)]
    optimizer, hparams, epochs = ARMS[(index // len(MODELS)) % len(ARMS)]
    seed = index // (len(MODELS) * len(ARMS))
    slug = ",".join(f"{k}={v}" for k, v in hparams.items()) or "default"
    run = root / "cifar10" / model / optimizer / slug / f"epochs={epochs}" / f"seed{seed}"
    run.mkdir(parents=True)
    config = {"dataset": "cifar10", "model": model, "optimizer": optimizer, "hparams": hparams, "seed": seed}
    config |= {"epochs": epochs, "batch_size": 128, "lr": 0.1, "devices": 1, "betas": [0.9, 0.999]}
    (run / "config.json").write_text(json.dumps(config))
    metrics = {
        "status": "complete",
        "diverged": False,
        "test_acc": 0.94 + 0.01 * rng.random(),
        "best_val_acc": 0.95,
        "best_epoch": epochs,
        "time": {"epoch_median_s": 10 + rng.random(), "step_median_s": 0.03, "first_epoch_s": 12.0},
        "passes_per_step": {"forward": 2.0, "backward": 2.0, "sequential": 2.0, "ideal_sequential": 2.0},
        "config": config,
        "memory": {
            "cpu_peak_rss_mib": 2000.0,
            "devices": [{"nvml_peak_mib": 2290.0, "nvml_method": "per-process"}],
        },
        "provenance": {"git": {"sha": "0" * 40, "dirty": False}, "devices": [{"name": "A100"}], "resumes": 0},
        "backend": {"name": "SingleDevice", "world_size": 1},
    }
    (run / "metrics.json").write_text(json.dumps(metrics, indent=2))
    rows = [
        {"epoch": e, "train_loss": 1 / e, "val_acc": 0.9, "epoch_time_s": 10.0} for e in range(1, epochs + 1)
    ]
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from sampa.report.runs import collect_runs, write_csv

    rng = random.Random(0)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "runs"
        dirs = [fake_run(root, i, rng) for i in range(args.runs)]
        metrics = [str(d / "metrics.json") for d in dirs]

        start = time.perf_counter()
        command = [
            sys.executable,
            "-m",
            "sampa",
            "aggregate",
            "--runs-root",
            str(root),
            "--out",
            f"{tmp}/cli.csv",
        ]
        subprocess.run(
            [*command, *metrics],
            check=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            capture_output=True,
        )
        cli_s = time.perf_counter() - start

        start = time.perf_counter()
        frame = collect_runs(metrics, root)
        write_csv(frame, f"{tmp}/inproc.csv")
        inproc_s = time.perf_counter() - start

        table_s = time_table(frame, Path(tmp))
        same = Path(f"{tmp}/cli.csv").read_bytes() == Path(f"{tmp}/inproc.csv").read_bytes()
    print(
        f"{args.runs} runs -> runs table, {len(frame.columns)} columns; CLI and in-process CSV equal: {same}"
    )
    print(f"  python -m sampa aggregate (fresh process): {cli_s:.2f} s (target < 10 s)")
    per_run = 1000 * inproc_s / args.runs
    print(f"  collect_runs + write_csv in this process:  {inproc_s:.2f} s ({per_run:.2f} ms/run)")
    print(f"  one Table-1-sized table from it:           {table_s:.2f} s")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def time_table(frame, tmp: Path) -> float:
    from sampa import experiments as ex
    from sampa.report import tables

    config = {
        "name": "bench",
        "seeds": sorted({int(s) for s in frame["seed"]}),
        "run": {"dataset": "cifar10"},
        "experiments": {
            "t": {
                "kind": "table",
                "title": "bench",
                "arms": [
                    {"label": o, "optimizer": o, "hparams": h, "run": {"epochs": e}} for o, h, e in ARMS
                ],
                "grid": {"model": list(MODELS)},
                "table": {"rows": ["model"], "columns": ["arm"], "metrics": ["test_acc"]},
            }
        },
    }
    spec = ex.plan(config).specs["t"]
    start = time.perf_counter()
    tables.render(spec, tables.cell_table(spec, frame))
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
