"""SAMPa on 2k devices (two groups of k) side by side with DDP-SGD and DDP-SAM on the same 2k devices.

    python benchmarks/group_speedup.py                               # resnet20, batch 128, k = 1, 2, CPU
    python benchmarks/group_speedup.py --device cuda --ks 1 2 4 --model resnet56 --steps 50 --warmup 10

For each k, 2k ranks are started (gloo on CPU with one thread each, NCCL on 2k GPUs) and run, in
interleaved rounds, SAMPa-0.2 (task parallel: each of its two gradients on a group of k ranks, the
group's halves summed by an in-group all-reduce, the two results swapped by one cross-group exchange),
SGD and SAM (plain data parallel on all 2k ranks, i.e. DDP). Every method trains a fresh copy of the
same model on the same random CIFAR-shaped batches of the global batch size. The table gives the median
over rounds of the mean step time (rank 0), SAMPa / DDP-SGD and SAMPa / DDP-SAM at the same device
count, and, per step, the time rank 0 was blocked at in-group all-reduces and at the cross-group
exchange and the MiB it put into each.

What a 2-core machine can show: the communication pattern and its volume per step (exact), and that
every configuration runs. What it cannot show: speed-up with k. At k = 2 four single-threaded ranks
share two cores, so each rank runs at about half speed and "blocked" time includes waiting for a rank
that was descheduled; compare methods within one k, not across k. Real numbers need 2k GPUs.
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
from pair_speedup import random_batches  # benchmarks/ is on sys.path when a script here runs

from sampa import io
from sampa.backends.pair import PairBackend, mode_for
from sampa.launch import device_kind, listen
from sampa.losses import make_loss
from sampa.metrics import synchronize
from sampa.models import build_model
from sampa.optim import METHODS, Method

#: (label, method, hyperparameters)
BENCHES: list[tuple[str, str, dict[str, Any]]] = [
    ("SAMPa-0.2", "sampa", {"rho": 0.1, "lam": 0.2}),
    ("DDP-SGD", "sgd", {}),
    ("DDP-SAM", "sam", {"rho": 0.05}),
]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--batch-size", type=int, default=128, help="global batch size")
    p.add_argument("--ks", type=int, nargs="+", default=[1, 2], help="group sizes k (2k ranks each)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per round")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (2k GPUs, NCCL)")
    p.add_argument("--timeout-s", type=float, default=600.0, help="collective timeout")
    p.add_argument("--json", help="also write the results as JSON to this file")
    return p.parse_args()


class Bench:
    """One method on this rank, ready to step."""

    def __init__(self, label: str, name: str, hparams: dict[str, Any], rank: int, args, device) -> None:
        self.label = label
        cls: type[Method] = METHODS[name]
        torch.manual_seed(0)
        model = build_model(args.model, 10).to(device).train()
        base = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        self.backend = PairBackend(rank, device, mode_for(cls))
        self.method = cls(model, make_loss(0.1), base, executor=self.backend.executor, **hparams)
        self.batches = random_batches(args.batch_size, device)
        self.i = 0

    def step(self) -> None:
        inputs, targets = self.batches[self.i % 2]
        indices = torch.arange(targets.shape[0], device=targets.device)
        self.method.step(*self.backend.shard(inputs, targets, indices))
        self.i += 1


def time_round(bench: Bench, args, device: torch.device) -> dict[str, float]:
    for _ in range(args.warmup):
        bench.step()
    synchronize(device)
    dist.barrier()
    bench.backend.stats()  # reset the counters
    start = time.perf_counter()
    for _ in range(args.steps):
        bench.step()
    synchronize(device)
    seconds = time.perf_counter() - start
    stats = bench.backend.stats()
    dist.barrier()
    per_step = {key: value / args.steps for key, value in stats.items() if key != "comm_share"}
    return {"step_s": seconds / args.steps, **per_step}


def bench_rank(rank: int, world: int, port: int, args: argparse.Namespace, kind: str, out: str) -> None:
    device = torch.device("cuda", rank) if kind == "cuda" else torch.device("cpu")
    if kind == "cuda":
        torch.cuda.set_device(device)
    torch.set_num_threads(1)
    timeout = datetime.timedelta(seconds=args.timeout_s)
    store = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=timeout)
    backend = "nccl" if kind == "cuda" else "gloo"
    dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)
    benches = [Bench(*spec, rank, args, device) for spec in BENCHES]
    rounds: dict[str, list[dict[str, float]]] = {b.label: [] for b in benches}
    for _ in range(args.rounds):
        for bench in benches:
            rounds[bench.label].append(time_round(bench, args, device))
    if rank == 0:
        rows = [
            {"method": label, "k": world // 2, "devices": world}
            | {key: statistics.median(r[key] for r in values) for key in values[0]}
            for label, values in rounds.items()
        ]
        with open(out, "w") as handle:
            json.dump(rows, handle)
    dist.destroy_process_group()


def run_world(world: int, args: argparse.Namespace, kind: str) -> list[dict[str, Any]]:
    listener = listen({})  # a free port on 127.0.0.1
    port = listener.getsockname()[1]
    store = dist.TCPStore(
        "127.0.0.1", port, is_master=True, wait_for_workers=False, master_listen_fd=listener.detach()
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rows.json")
        spawn_args = (world, port, args, kind, out)
        mp.start_processes(bench_rank, args=spawn_args, nprocs=world, start_method="spawn")
        with open(out) as handle:
            rows = json.load(handle)
    del store
    return rows


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace, kind: str, load: tuple) -> None:
    where = "NCCL GPUs" if kind == "cuda" else f"CPU (gloo, 1 thread per rank, {os.cpu_count()} cores)"
    print(
        f"{args.model}, global batch {args.batch_size}, {where}, torch {torch.__version__}; median of "
        f"{args.rounds} rounds x {args.steps} steps; load average before/after: "
        f"{load[0]:.2f} / {load[1]:.2f}"
    )
    head = ("k", "dev", "ms/step", "vs SGD", "vs SAM", "group ms", "cross ms", "group MiB", "cross MiB")
    print(f"{'method':<10} " + " ".join(f"{h:>9}" for h in head))
    for r in rows:
        same = {x["method"]: x for x in rows if x["devices"] == r["devices"]}
        print(
            f"{r['method']:<10} {r['k']:>9} {r['devices']:>9} {1e3 * r['step_s']:>9.1f} "
            f"{r['step_s'] / same['DDP-SGD']['step_s']:>9.2f} "
            f"{r['step_s'] / same['DDP-SAM']['step_s']:>9.2f} "
            f"{1e3 * r['comm_group_s']:>9.1f} {1e3 * r['comm_cross_s']:>9.1f} "
            f"{r['comm_group_mib']:>9.2f} {r['comm_cross_mib']:>9.2f}"
        )


def main() -> None:
    args = parse_args()
    bad = [k for k in args.ks if k < 1]
    if bad:
        raise SystemExit(f"group_speedup: error: every k must be >= 1 (got {bad[0]})")
    kind = device_kind(args.device, 2 * max(args.ks))
    load_before = os.getloadavg()[0]
    rows = [row for k in args.ks for row in run_world(2 * k, args, kind)]
    load_after = os.getloadavg()[0]
    print_table(rows, args, kind, (load_before, load_after))
    if args.json:  # atomically: an interrupted benchmark leaves the previous record or none
        record = {"rows": rows, "load_average": [load_before, load_after], "args": vars(args)}
        io.write_text(args.json, json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
