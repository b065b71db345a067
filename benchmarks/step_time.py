"""Per-step time of optimizer methods on one device, side by side, with ratios to SGD.

    python benchmarks/step_time.py                       # ResNet-56, batch 128, SGD / SAM / SAMPa
    python benchmarks/step_time.py --methods sgd,sam,sampa --model resnet56 --steps 20 --device cuda
    python benchmarks/step_time.py --methods all         # every registered method

Each method trains a fresh copy of the same model (same seed) on random CIFAR-shaped batches. Methods
are timed in interleaved rounds (so drift of the machine hits all of them alike); each round runs
``--warmup`` untimed steps, then ``--steps`` timed steps between two device synchronisations. The
table reports the median over rounds of the mean step time, the ratio to SGD, and the passes per step
(forward, backward, sequential gradients on this device, ideal sequential gradients), averaged over all
timed steps (LookSAM, AE-SAM and vSAM vary from step to step). Each method starts at epoch 100 of 200
(``start_epoch``), so epoch-dependent methods run in their steady state (SAF/MESA trajectory term on,
vSAM past its warm-up; AE-SAM's and vSAM's SAM-step rates then depend on these random batches, not on
a real training run); methods that need sample indices get them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch

from sampa.backends.single import resolve_device
from sampa.losses import make_loss
from sampa.metrics import synchronize
from sampa.models import build_model
from sampa.optim import METHOD_NAMES, build_method, method_class


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--methods",
        default="sgd,sam,sampa",
        help=f"comma-separated, from: {', '.join(METHOD_NAMES)}; or 'all'",
    )
    p.add_argument("--model", default="resnet56")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="timed steps per round")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--json", help="also write the results as JSON to this file")
    return p.parse_args()


PASS_KEYS = ("forward", "backward", "sequential", "ideal_sequential")
STEADY_EPOCH, EPOCHS = 100, 200


class Bench:
    """One method on one model, ready to step."""

    def __init__(self, name: str, args: argparse.Namespace, device: torch.device) -> None:
        torch.manual_seed(0)
        self.model = build_model(args.model, 10).to(device).train()
        base = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        self.method = build_method(name, self.model, make_loss(0.1), base)
        self.method.start_epoch(STEADY_EPOCH, EPOCHS, steps_per_epoch=352)  # the paper's 45k / 128
        gen = torch.Generator().manual_seed(1)
        self.batches = [
            (
                torch.randn(args.batch_size, 3, 32, 32, generator=gen).to(device),
                torch.randint(0, 10, (args.batch_size,), generator=gen).to(device),
                torch.arange(i * args.batch_size, (i + 1) * args.batch_size),
            )
            for i in range(2)
        ]
        self.i = 0
        self.passes = dict.fromkeys(PASS_KEYS, 0)
        self.steps = 0

    def step(self, timed: bool = False) -> None:
        record = self.method.step(*self.batches[self.i % 2])
        self.i += 1
        if timed:
            for key in PASS_KEYS:
                self.passes[key] += getattr(record, key)
            self.steps += 1

    def mean_passes(self) -> dict[str, float]:
        return {key: value / max(self.steps, 1) for key, value in self.passes.items()}


def time_round(bench: Bench, args: argparse.Namespace, device: torch.device) -> float:
    for _ in range(args.warmup):
        bench.step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        bench.step(timed=True)
    synchronize(device)
    return (time.perf_counter() - start) / args.steps


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    names = method_names(args.methods)
    benches = {name: Bench(name, args, device) for name in names}
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.rounds):
        for name, bench in benches.items():
            times[name].append(time_round(bench, args, device))
    results = summarise(benches, times)
    print_table(results, args, device)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


def method_names(spec: str) -> list[str]:
    """'all' or a comma-separated list of registered names; one-line error for an unknown name."""
    names = list(METHOD_NAMES) if spec == "all" else [n.strip() for n in spec.split(",") if n.strip()]
    for name in names:
        try:
            method_class(name)
        except ValueError as err:
            raise SystemExit(f"step_time.py: error: {err}") from None
    return list(dict.fromkeys(names))


def summarise(benches: dict[str, Bench], times: dict[str, list[float]]) -> list[dict[str, Any]]:
    reference = statistics.median(times["sgd"]) if "sgd" in times else None
    out = []
    for name, bench in benches.items():
        t = statistics.median(times[name])
        out.append(
            {"method": name, "step_ms": 1e3 * t, "ratio_to_sgd": t / reference if reference else None}
            | bench.mean_passes()
        )
    return out


def print_table(results: list[dict[str, Any]], args: argparse.Namespace, device: torch.device) -> None:
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({torch.get_num_threads()} threads)"
    )
    print(
        f"{args.model}, batch {args.batch_size}, {name}, torch {torch.__version__}; "
        f"median of {args.rounds} rounds x {args.steps} steps"
    )
    print(f"{'method':<10} {'ms/step':>9} {'x SGD':>7} {'fwd':>5} {'bwd':>5} {'seq':>5} {'ideal':>6}")
    for r in results:
        ratio = f"{r['ratio_to_sgd']:.2f}" if r["ratio_to_sgd"] is not None else "-"
        print(
            f"{r['method']:<10} {r['step_ms']:>9.1f} {ratio:>7} {r['forward']:>5.2f} {r['backward']:>5.2f} "
            f"{r['sequential']:>5.2f} {r['ideal_sequential']:>6.2f}"
        )


if __name__ == "__main__":
    main()
