"""Table 11 of the SAMPa paper: per-step time of SAM on 1 device, SAMPa on 2, mSAM on 2, SGD on 1.

    python benchmarks/pair_speedup.py                          # ResNet-56, batch 128, CPU: 1 thread/rank
    python benchmarks/pair_speedup.py --device cuda --steps 50 --warmup 10

Two ranks are started (gloo on CPU, NCCL on two GPUs); rank 0 runs the one-device methods while rank 1
waits at a barrier, and both ranks run the two-device methods (``sampa.backends.pair``: SAMPa task
parallel, mSAM data parallel with micro-batch = per-rank shard, i.e. the paper's "mSAM (m=2)").
Every method trains a fresh copy of the same model (same seed) on random CIFAR-shaped batches.
Methods are timed in interleaved rounds, so drift of a shared machine hits all of them alike; each
round runs ``--warmup`` untimed steps, then ``--steps`` timed steps between two barriers (after a
device synchronisation). The table reports the median over rounds of the mean step time, the ratios
SAM / method and method / SGD, the communication share of the two-device methods (time blocked at
exchanges / (that + gradient compute), per rank 0) and the passes per step. The load average is
printed with it, since CPU numbers on a shared machine are noisy. The "cpu ms" columns give the process
CPU time per step of the busier rank (all its threads): on a machine shared with other jobs the wall
clock measures the contention too, the CPU time still shows how the work was split.
A control row runs one-device SGD on both ranks at the same time (no exchange): on a small CPU box two
busy ranks are each slower than one rank alone (shared caches and memory bandwidth), and the ratio
SAMPa / "SGD, both ranks busy" separates that machine effect from SAMPa's own overhead.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import tempfile
import time
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor

from sampa import io
from sampa.backends.pair import PairBackend, mode_for
from sampa.backends.single import SingleDevice
from sampa.launch import device_kind, listen
from sampa.losses import make_loss
from sampa.metrics import synchronize
from sampa.models import build_model
from sampa.optim import METHODS, Method, StepRecord

#: a control, not a method: each rank runs its own one-device SGD step at the same time (no exchange),
#: so it shows what two busy ranks cost on this machine (shared caches, memory bandwidth, clocks)
BOTH_BUSY = "SGD, both ranks busy"

#: (label, method class, hyperparameters, devices) in the paper's Table 11 order, plus SGD
BENCHES: list[tuple[str, type[Method], dict[str, Any], int]] = [
    ("SAM", METHODS["sam"], {"rho": 0.05}, 1),
    ("SAMPa-0.2", METHODS["sampa"], {"rho": 0.1, "lam": 0.2}, 2),
    ("mSAM m=2", METHODS["msam"], {"rho": 0.05, "micro_batch_size": 64}, 2),
    ("SGD", METHODS["sgd"], {}, 1),
    (BOTH_BUSY, METHODS["sgd"], {}, 2),
]


def random_batches(size: int, device: torch.device, count: int = 2) -> list[tuple[Tensor, Tensor]]:
    """``count`` fixed CIFAR-shaped batches of random images and labels (seeded), on ``device``."""
    gen = torch.Generator().manual_seed(1)
    return [
        (
            torch.randn(size, 3, 32, 32, generator=gen).to(device),
            torch.randint(0, 10, (size,), generator=gen).to(device),
        )
        for _ in range(count)
    ]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet56")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=4, help="timed steps per round")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (two GPUs, NCCL)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per rank (and for SAM/SGD)")
    p.add_argument("--timeout-s", type=float, default=600.0, help="collective timeout")
    p.add_argument("--json", help="also write the results as JSON to this file")
    return p.parse_args()


class Bench:
    """One method on one model on this rank, ready to step."""

    def __init__(self, spec: tuple[str, type[Method], dict[str, Any], int], rank: int, args, device) -> None:
        self.label, cls, hparams, self.devices = spec
        torch.manual_seed(0)
        self.model = build_model(args.model, 10).to(device).train()
        base = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        pair = self.devices == 2 and self.label != BOTH_BUSY
        self.backend = PairBackend(rank, device, mode_for(cls)) if pair else SingleDevice(device)
        self.method = cls(self.model, make_loss(0.1), base, executor=self.backend.executor, **hparams)
        self.batches = random_batches(args.batch_size, device)
        self.i = 0
        self.last: StepRecord | None = None

    def step(self) -> None:
        inputs, targets = self.batches[self.i % 2]
        indices = torch.arange(targets.shape[0], device=targets.device)
        self.last = self.method.step(*self.backend.shard(inputs, targets, indices))
        self.i += 1


def time_round(bench: Bench, rank: int, args, device: torch.device) -> tuple[float, float, float]:
    """Wall seconds per step (rank 0), CPU seconds per step of the busier rank, communication share."""
    active = bench.devices == 2 or rank == 0
    if active:
        for _ in range(args.warmup):
            bench.step()
        bench.backend.stats()  # reset the communication counters
    synchronize(device)
    dist.barrier()
    start, cpu_start = time.perf_counter(), time.process_time()
    if active:
        for _ in range(args.steps):
            bench.step()
    synchronize(device)
    cpu = torch.tensor([(time.process_time() - cpu_start) / args.steps], dtype=torch.float64, device=device)
    dist.barrier()
    seconds = (time.perf_counter() - start) / args.steps
    dist.all_reduce(cpu, op=dist.ReduceOp.MAX)
    stats = bench.backend.stats() if active else {}
    return seconds, float(cpu), stats.get("comm_share", 0.0)


def bench_rank(rank: int, port: int, args: argparse.Namespace, kind: str, out: str) -> None:
    device = torch.device("cuda", rank) if kind == "cuda" else torch.device("cpu")
    if kind == "cuda":
        torch.cuda.set_device(device)
    torch.set_num_threads(args.threads)
    timeout = datetime.timedelta(seconds=args.timeout_s)
    store = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=timeout)
    dist.init_process_group(
        "nccl" if kind == "cuda" else "gloo", store=store, rank=rank, world_size=2, timeout=timeout
    )
    benches = [Bench(spec, rank, args, device) for spec in BENCHES]
    times: dict[str, list[float]] = {b.label: [] for b in benches}
    cpu: dict[str, list[float]] = {b.label: [] for b in benches}
    shares: dict[str, list[float]] = {b.label: [] for b in benches}
    for _ in range(args.rounds):
        for bench in benches:
            seconds, cpu_seconds, share = time_round(bench, rank, args, device)
            times[bench.label].append(seconds)
            cpu[bench.label].append(cpu_seconds)
            shares[bench.label].append(share)
    if rank == 0:
        with open(out, "w") as handle:
            json.dump(summarise(benches, times, cpu, shares), handle)
    dist.destroy_process_group()


def summarise(benches: list[Bench], times, cpu, shares) -> list[dict[str, Any]]:
    step = {label: statistics.median(values) for label, values in times.items()}
    cpu_step = {label: statistics.median(values) for label, values in cpu.items()}
    sam, sgd = step["SAM"], step["SGD"]
    rows = []
    for bench in benches:
        rec = bench.last
        exchanges = isinstance(bench.backend, PairBackend)
        rows.append(
            {
                "method": bench.label,
                "devices": bench.devices,
                "step_ms": 1e3 * step[bench.label],
                "rounds_ms": [1e3 * t for t in times[bench.label]],
                "sam_over_this": sam / step[bench.label],
                "this_over_sgd": step[bench.label] / sgd,
                "cpu_ms": 1e3 * cpu_step[bench.label],
                "cpu_sam_over_this": cpu_step["SAM"] / cpu_step[bench.label],
                "comm_share": statistics.median(shares[bench.label]) if exchanges else None,
                "forward": rec.forward,
                "backward": rec.backward,
                "sequential": rec.sequential,
            }
        )
    return rows


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace, kind: str, load: tuple) -> None:
    where = (
        f"{torch.cuda.get_device_name(0)} x2 (NCCL)"
        if kind == "cuda"
        else f"CPU, {args.threads} thread(s) per rank (gloo), {os.cpu_count()} cores"
    )
    print(
        f"{args.model}, batch {args.batch_size}, {where}, torch {torch.__version__}; median of {args.rounds} "
        f"rounds x {args.steps} steps; load average before/after: {load[0]:.2f} / {load[1]:.2f}"
    )
    head = ("dev", "ms/step", "SAM/this", "this/SGD", "comm", "cpu ms", "SAM/this", "fwd", "seq")
    widths = (3, 9, 9, 9, 6, 9, 9, 4, 4)
    print(f"{'method':<22} " + " ".join(f"{h:>{w}}" for h, w in zip(head, widths, strict=True)))
    for r in rows:
        comm = f"{100 * r['comm_share']:.1f}%" if r["comm_share"] is not None else "-"
        print(
            f"{r['method']:<22} {r['devices']:>3} {r['step_ms']:>9.1f} {r['sam_over_this']:>9.2f} "
            f"{r['this_over_sgd']:>9.2f} {comm:>6} {r['cpu_ms']:>9.1f} {r['cpu_sam_over_this']:>9.2f} "
            f"{r['forward']:>4} {r['sequential']:>4}"
        )
    sampa = next(r for r in rows if r["method"].startswith("SAMPa"))
    sgd = next(r for r in rows if r["method"] == "SGD")
    both = next(r for r in rows if r["method"] == BOTH_BUSY)
    print(
        f"wall clock: SAM / SAMPa = {sampa['sam_over_this']:.2f} (bar >= 1.9; paper 1.72 on A100s; limit 2), "
        f"SAMPa / SGD = {sampa['this_over_sgd']:.2f} (bar: <= 1.05)\n"
        f"CPU time of the busier rank: SAM / SAMPa = {sampa['cpu_sam_over_this']:.2f}, "
        f"SAMPa / SGD = {sampa['cpu_ms'] / sgd['cpu_ms']:.2f}\n"
        f"control: SGD with both ranks busy / SGD alone = {both['step_ms'] / sgd['step_ms']:.2f}; "
        f"SAMPa / SGD with both ranks busy = {sampa['step_ms'] / both['step_ms']:.2f} (SAMPa's own overhead)"
    )


def main() -> None:
    args = parse_args()
    kind = device_kind(args.device)
    listener = listen({})  # a free port on 127.0.0.1
    port = listener.getsockname()[1]
    store = dist.TCPStore(
        "127.0.0.1", port, is_master=True, wait_for_workers=False, master_listen_fd=listener.detach()
    )
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rows.json")
        mp.start_processes(bench_rank, args=(port, args, kind, out), nprocs=2, start_method="spawn")
        with open(out) as handle:
            rows = json.load(handle)
    load_after = os.getloadavg()[0]
    del store
    print_table(rows, args, kind, (load_before, load_after))
    if args.json:  # atomically: an interrupted benchmark leaves the previous record or none
        record = {"rows": rows, "load_average": [load_before, load_after], "args": vars(args)}
        io.write_text(args.json, json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
