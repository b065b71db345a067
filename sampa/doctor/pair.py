"""Check 4: the two-device backend on this machine, against one-device math computed in the same run.

Two GPUs: one rank per GPU over NCCL. One GPU: both ranks on cuda:0 over gloo with CUDA tensors (NCCL
refuses two ranks on one device). No GPU: both ranks on the CPU over gloo. The ranks train SAMPa-0.2 (task
parallel) and mSAM m=2 (data parallel, micro-batch = shard) for a few steps; the check process trains the
same on one device. Then rank 1 kills itself and rank 0 must end within the collective timeout.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sampa import io
from sampa.backends.pair import PairBackend, mode_for
from sampa.doctor.common import (
    Machine,
    Row,
    Setup,
    Trajectory,
    deterministic,
    relative_distance,
    trajectory,
    verdict,
)
from sampa.launch import gloo_on_loopback
from sampa.optim import method_class

#: rel. distance pair vs one device. Both run with deterministic algorithms: 10 steps of ResNet-20 amplify
#: a mere change of summation order to 4e-3..7e-3 (CPU, 1 vs 2 threads), so nondeterministic cuDNN
#: kernels alone would fail it; one CPU thread per rank is bitwise equal.
EQUAL_TOL = 1e-3
TIMEOUT_S = 20.0  # the collective timeout of the ranks
KILL_GRACE_S = 15.0  # a killed rank must end the other within TIMEOUT_S + this


def scenarios(m: Machine) -> dict[str, tuple[str, dict[str, float]]]:
    half = setup_for(m).batch_size // 2
    return {
        "SAMPa-0.2": ("sampa", {"rho": 0.1, "lam": 0.2}),
        "mSAM m=2": ("msam", {"rho": 0.05, "micro_batch_size": half}),
    }


def setup_for(m: Machine) -> Setup:
    """ResNet-20 on a GPU; a tiny CNN on one CPU thread per process (the CPU subset: well under a minute)."""
    if m.kind == "cuda":
        return Setup(batch_size=32, steps=10)
    torch.set_num_threads(1)
    return Setup(model="tinycnn", batch_size=16, steps=8)


def layout(m: Machine) -> tuple[str, list[torch.device]]:
    """The process-group backend and the device of each rank."""
    if m.kind == "cuda" and m.gpus >= 2:
        return "nccl", [torch.device("cuda", 0), torch.device("cuda", 1)]
    if m.kind == "cuda":
        return "gloo", [torch.device("cuda", 0)] * 2
    return "gloo", [torch.device("cpu")] * 2


def check_pair(m: Machine) -> Iterator[Row]:
    backend, devices = layout(m)
    where = f"{backend}, {' + '.join(map(str, devices))}"
    with tempfile.TemporaryDirectory() as tmp:
        ended_s = run_ranks(m, Path(tmp))
        saved = [io.load_torch(Path(tmp) / f"rank{r}.pt") for r in (0, 1)]
    results = [{label: Trajectory(**fields) for label, fields in ranks.items()} for ranks in saved]
    for label, (name, hparams) in scenarios(m).items():
        with deterministic():  # as the ranks: only the exchange may differ from one device
            reference = trajectory(name, hparams, setup_for(m), devices[0])
        dist_ = max(relative_distance(results[r][label], reference) for r in (0, 1))
        same = all(
            torch.equal(a, b) for a, b in zip(results[0][label].params, results[1][label].params, strict=True)
        )
        yield Row(
            f"4 pair {label} vs one device",
            f"{where}; tol {EQUAL_TOL:g}",
            f"rel. distance {dist_:.2e}",
            verdict(dist_ <= EQUAL_TOL),
        )
        yield Row(
            f"4 pair {label} replicas",
            "parameters of rank 0 and rank 1",
            f"bit-identical: {same}",
            verdict(same),
        )
    limit = TIMEOUT_S + KILL_GRACE_S
    figure = (
        f"rank 0 ended {ended_s:.1f} s after rank 1 died" if ended_s is not None else "rank 0 still running"
    )
    yield Row(
        "4 pair killed rank",
        f"{where}; timeout {TIMEOUT_S:g} s, limit {limit:g} s",
        figure,
        verdict(ended_s is not None and ended_s <= limit),
    )


def run_ranks(m: Machine, out: Path, fresh: bool | None = None) -> float | None:
    """Start both ranks; wait for their results, then for rank 0 to end after rank 1 kills itself. Returns
    the seconds from rank 1's death to rank 0's end (None: rank 0 outlived the limit and was killed).
    ``fresh``: ranks in fresh interpreters meeting at a TCP store (default: on CUDA devices)."""
    if fresh is None:
        fresh = layout(m)[1][0].type == "cuda"
    if fresh:  # CUDA cannot be used in a forked process: fresh interpreters
        server = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
        store, start_method = ("tcp", str(server.port)), "spawn"
    else:  # CPU: fork (no second import of torch per rank); a file store has no server thread to fork
        store, start_method = ("file", str(out / "store")), "fork"
    context = mp.start_processes(
        _rank, args=(m, store, str(out)), nprocs=2, join=False, start_method=start_method
    )
    first, second = context.processes
    try:
        second.join()  # rank 1 kills itself once both results are written
        died = time.monotonic()
        first.join(TIMEOUT_S + KILL_GRACE_S + 5)
        return time.monotonic() - died if not first.is_alive() else None
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
            process.join()
        for rank in (0, 1):
            if not (out / f"rank{rank}.pt").exists():
                raise RuntimeError(f"rank {rank} wrote no results (exit {context.processes[rank].exitcode})")


def connect(store: tuple[str, str], timeout: datetime.timedelta) -> dist.Store:
    """The rendezvous store of a rank: ("tcp", port of the check process's server) or ("file", path)."""
    kind, where = store
    if kind == "tcp":
        return dist.TCPStore("127.0.0.1", int(where), is_master=False, timeout=timeout)
    return dist.FileStore(where, 2)


def _rank(rank: int, m: Machine, store: tuple[str, str], out: str) -> None:
    backend, devices = layout(m)
    device = devices[rank]
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(1)
    if backend == "gloo":
        gloo_on_loopback()  # as the launcher does: the ranks meet on 127.0.0.1
    timeout = datetime.timedelta(seconds=TIMEOUT_S)
    dist.init_process_group(backend, store=connect(store, timeout), rank=rank, world_size=2, timeout=timeout)
    results = {}
    for label, (name, hparams) in scenarios(m).items():
        pair = PairBackend(rank, device, mode_for(method_class(name)))
        with deterministic():
            trained = trajectory(name, hparams, setup_for(m), device, backend=pair)
        results[label] = dataclasses.asdict(trained)
    io.save_torch(Path(out) / f"rank{rank}.pt", results)
    dist.barrier()
    if rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    name, hparams = scenarios(m)["SAMPa-0.2"]  # rank 0 goes on alone: its first exchange must fail
    trajectory(
        name, hparams, setup_for(m), device, backend=PairBackend(0, device, mode_for(method_class(name)))
    )
