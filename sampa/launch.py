"""Start a multi-device run (``python -m sampa train --devices N``, N = 2k): N ranks, each running ``train``.

The N processes come from one of three places:

* **This launcher** (the default), on one node. It starts each rank as ``python -m sampa.rank``
  (:mod:`sampa.rank`), which arms the parent-death signal before importing anything heavy and exits if
  the launcher is already gone, so no rank is ever orphaned, at any moment of start-up. The ranks meet
  at a TCPStore served by the launcher on a socket bound to 127.0.0.1 (or ``$MASTER_ADDR``), at a free
  port (or ``$MASTER_PORT``; if that port is busy, a one-line error). Binding the socket here and
  handing it to the store avoids any race for the port, so two jobs on one machine never collide; every
  wait at the store is bounded by ``dist_timeout_s``. The launcher waits for all ranks. When one fails,
  dies or hangs, the others fail within ``dist_timeout_s``. The launcher then stops whatever is left
  (SIGTERM, then SIGKILL) and raises a one-line ``RunError`` naming each failed rank's error.
* **torchrun** (``torchrun --nnodes=M --nproc-per-node=N/M -m sampa train --devices N ...``), which
  sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``.
* **SLURM** (``srun --ntasks=N python -m sampa train --devices N ...``): ``SLURM_PROCID``,
  ``SLURM_STEP_NUM_TASKS`` (or ``SLURM_NTASKS``) and ``SLURM_LOCALID``. ``MASTER_ADDR`` defaults to
  ``SLURM_LAUNCH_NODE_IPADDR``. ``MASTER_PORT`` defaults to 20000 + job id mod 20000. A job step with a
  single task runs this launcher instead.

All three end in :func:`run_rank`: one node or many is the same code path.

Devices: N CUDA devices with NCCL (cuda:RANK, or cuda:LOCAL_RANK under a launcher) when CUDA is
requested, or visible with ``--device auto``. Otherwise all ranks run on the CPU with gloo, each with
one torch thread unless ``--threads`` says otherwise. Bad setups are one-line ``ConfigError``s before
anything starts: a busy ``MASTER_PORT``, fewer than N CUDA devices when CUDA is asked for,
``--device cuda:N``, or a launcher world size other than N.
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

import sampa
from sampa import io
from sampa.backends.pair import PairBackend, mode_for
from sampa.config import ConfigError, RunConfig, config_from_dict
from sampa.data.cifar import CIFAR_SOURCES, DataUnavailableError, ensure_extracted, resolve_root
from sampa.extras import MissingExtraError
from sampa.optim import method_class
from sampa.rundir import one_line
from sampa.train import RunError, train

GRACE_S = 5.0  # after a rank fails, how long the others get to exit before SIGTERM, then SIGKILL
STOP_S = 2.0  # after SIGTERM, how long a rank gets before SIGKILL
POLL_S = 0.05
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Rendezvous:
    """This process's place in a group started by an external launcher."""

    rank: int
    world_size: int
    local_rank: int
    source: str  # "torchrun" or "SLURM"


def launch(cfg: RunConfig, out: str | os.PathLike) -> dict[str, Any] | None:
    """Train ``cfg`` on ``cfg.devices`` devices into ``out``; the metrics (None on a rank other than 0)."""
    out = Path(out)
    joined = external_launcher(os.environ, cfg.devices)
    if joined is not None:
        return _join(cfg, out, joined)
    if (out / "metrics.json").exists():
        return train(cfg, out)  # a finished run is not retrained: train only checks and reads it
    return _spawn(cfg, out)


# ----------------------------------------------------------------------------------------------
# Checks before anything starts


def external_launcher(environ: dict[str, str] | os._Environ, devices: int = 2) -> Rendezvous | None:
    """The group set up by torchrun or SLURM, or None when this launcher must start the ranks."""
    if "RANK" in environ or "WORLD_SIZE" in environ:
        rank, world = _env_int(environ, "RANK"), _env_int(environ, "WORLD_SIZE")
        local = _env_int(environ, "LOCAL_RANK", rank)
        source = "torchrun"
    elif "SLURM_PROCID" in environ and _slurm_tasks(environ) > 1:
        rank, world = _env_int(environ, "SLURM_PROCID"), _slurm_tasks(environ)
        local = _env_int(environ, "SLURM_LOCALID", rank)
        source = "SLURM"
    else:
        return None
    if world != devices:
        raise ConfigError(
            f"--devices {devices} needs exactly {devices} processes, but {source} started {world}"
        )
    if not 0 <= rank < world:
        raise ConfigError(f"rank must be in [0, {world - 1}] (got {rank} from {source})")
    return Rendezvous(rank, world, local, source)


def device_kind(device: str, devices: int = 2) -> str:
    """``cuda`` (``devices`` CUDA devices, NCCL) or ``cpu`` (gloo) for ``--device``; one-line error if
    CUDA cannot give that many devices."""
    if device == "cpu":
        return "cpu"
    if device.startswith("cuda:"):
        raise ConfigError(
            f"--devices {devices} uses cuda:0 {'and' if devices == 2 else 'to'} cuda:{devices - 1}; "
            f"use --device cuda and choose the GPUs "
            f"with CUDA_VISIBLE_DEVICES (got --device {device})"
        )
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device == "auto" and visible == 0:
        return "cpu"
    if visible < devices:
        words = {2: "two"}
        raise ConfigError(
            f"--devices {devices} needs {words.get(devices, devices)} CUDA devices but {visible} "
            f"is visible; use --device cpu to run all ranks on the CPU"
        )
    return "cuda"


def listen(environ: dict[str, str] | os._Environ) -> socket.socket:
    """A listening socket for the rendezvous store: $MASTER_ADDR (default 127.0.0.1), $MASTER_PORT
    (default: a free port chosen by the kernel)."""
    host = environ.get("MASTER_ADDR", LOOPBACK)
    port = _env_int(environ, "MASTER_PORT", 0)
    if not 0 <= port <= 65535:
        raise ConfigError(f"MASTER_PORT must be a port number in [0, 65535] (got {port})")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # refuse only a port someone listens on
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"MASTER_PORT {port} is already in use on {host}; unset MASTER_PORT to use a free port"
            ) from None
        raise ConfigError(
            f"cannot listen on {host}:{port} (MASTER_ADDR/MASTER_PORT): {err.strerror}"
        ) from None
    return sock


def _env_int(environ: dict[str, str] | os._Environ, name: str, default: int | None = None) -> int:
    raw = environ.get(name)
    if raw is None and default is not None:
        return default
    if raw is None:  # e.g. RANK without WORLD_SIZE: a launcher sets both
        raise ConfigError(f"environment variable {name} must be an integer (it is not set)")
    try:
        return int(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"environment variable {name} must be an integer (got {raw!r})") from None


def _slurm_tasks(environ: dict[str, str] | os._Environ) -> int:
    return _env_int(environ, "SLURM_STEP_NUM_TASKS", _env_int(environ, "SLURM_NTASKS", 1))


def prepare_data(cfg: RunConfig) -> None:
    """Download, extract and verify CIFAR once, before the ranks read it (never two extractions at once)."""
    if cfg.dataset in CIFAR_SOURCES:
        ensure_extracted(cfg.dataset, resolve_root(cfg.data_root), cfg.download)


# ----------------------------------------------------------------------------------------------
# Self-spawned ranks


def _spawn(cfg: RunConfig, out: Path) -> dict[str, Any] | None:
    kind = device_kind(cfg.device, cfg.devices)
    prepare_data(cfg)
    listener = listen(os.environ)
    host, port = listener.getsockname()[:2]
    store = dist.TCPStore(  # the store takes over the bound socket (no race for the port)
        host, port, is_master=True, wait_for_workers=False, master_listen_fd=listener.detach()
    )
    spec = json.dumps({"config": cfg.to_dict(), "out": str(out), "host": host, "port": port, "kind": kind})
    with tempfile.TemporaryDirectory(prefix="sampa-ranks-") as errors:
        error_files = [os.path.join(errors, f"rank{rank}.txt") for rank in range(cfg.devices)]
        ranks: list[subprocess.Popen] = []
        try:
            for rank, error_file in enumerate(error_files):
                ranks.append(_start_rank(rank, error_file, spec))
            failure = _supervise(ranks, error_files, cfg.dist_timeout_s)
        finally:
            _stop(ranks)
            del store
    if failure is not None:
        raise RunError(failure)
    metrics = out / "metrics.json"
    return io.read_json(metrics) if metrics.exists() else None


def _start_rank(rank: int, error_file: str, spec: str) -> subprocess.Popen:
    """``python -m sampa.rank`` with this code first on the path (the ranks run what the launcher runs)."""
    code_root = str(Path(sampa.__file__).resolve().parents[1])
    path = os.pathsep.join(filter(None, [code_root, os.environ.get("PYTHONPATH")]))
    argv = [sys.executable, "-m", "sampa.rank", str(rank), str(os.getpid()), error_file, spec]
    return subprocess.Popen(argv, env={**os.environ, "PYTHONPATH": path}, stdin=subprocess.DEVNULL)


def gloo_on_loopback() -> None:
    """Bind gloo's own sockets to the loopback interface too (unless the user chose one): by default gloo
    picks the interface of the host name, which may face a network. Call before the process group exists."""
    if "lo" in {name for _, name in socket.if_nameindex()}:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")


def spawned_rank(rank: int, spec: dict[str, Any]) -> None:
    """Body of a rank started by this launcher (called by :mod:`sampa.rank` once it is armed)."""
    cfg = config_from_dict(spec["config"])
    host, port = spec["host"], spec["port"]
    if host == LOOPBACK:
        gloo_on_loopback()
    store = dist.TCPStore(host, port, is_master=False, timeout=_timeout(cfg))
    device = torch.device("cuda", rank) if spec["kind"] == "cuda" else torch.device("cpu")
    run_rank(cfg, spec["out"], rank, device, store)


def _supervise(ranks: list[subprocess.Popen], error_files: list[str], timeout_s: float) -> str | None:
    """Wait for every rank; None when all succeeded, else the failure line (after giving the other ranks
    ``GRACE_S`` to fail on their own and stopping the rest)."""
    while True:
        codes = [process.poll() for process in ranks]
        if all(code == 0 for code in codes):
            return None
        failed = [rank for rank, code in enumerate(codes) if code not in (None, 0)]
        if failed:
            break
        time.sleep(POLL_S)
    first = min(failed, key=lambda rank: (codes[rank] >= 0, rank))  # a rank killed by a signal first
    deadline = time.monotonic() + GRACE_S
    while any(process.poll() is None for process in ranks) and time.monotonic() < deadline:
        time.sleep(POLL_S)
    stopped = {rank for rank, process in enumerate(ranks) if process.poll() is None}
    _stop(ranks)
    codes = [process.returncode for process in ranks]
    return failure_summary(codes, [_read_error(path) for path in error_files], first, stopped, timeout_s)


def _stop(ranks: list[subprocess.Popen]) -> None:
    """SIGTERM, then SIGKILL, any rank still running, and reap them all."""
    for process in ranks:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + STOP_S
    for process in ranks:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def failure_summary(
    codes: list[int | None], errors: list[str | None], first: int, stopped: set[int], timeout_s: float
) -> str:
    """One line with each failed rank's error, the first failure first (ranks the launcher stopped and
    ranks that succeeded are left out; ranks with the same error share it)."""
    grouped: dict[str, list[int]] = {}
    for rank in [first, *(r for r in range(len(codes)) if r != first)]:
        message = errors[rank]
        if message is None and rank not in stopped and codes[rank] != 0:
            message = _exit_description(codes[rank])
        if message is not None:
            if "timed out" in message.lower() or "timeout" in message.lower():
                message += f" (collective timeout dist_timeout_s={timeout_s:g})"
            grouped.setdefault(message, []).append(rank)
    parts = [f"{_rank_names(ranks)}: {message}" for message, ranks in grouped.items()]
    return f"{_devices_word(len(codes))} run failed: " + "; ".join(parts)


def _rank_names(ranks: list[int]) -> str:
    if len(ranks) == 1:
        return f"rank {ranks[0]}"
    numbers = list(map(str, sorted(ranks)))
    return f"ranks {', '.join(numbers[:-1])} and {numbers[-1]}"


def _devices_word(world: int) -> str:
    return "two-device" if world == 2 else f"{world}-device"


def _read_error(path: str) -> str | None:
    """The one line a rank left (see :mod:`sampa.rank`), or None."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip() or None
    except OSError:
        return None


def _exit_description(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


# ----------------------------------------------------------------------------------------------
# One rank (both ways of starting)


def run_rank(
    cfg: RunConfig,
    out: str | os.PathLike,
    rank: int,
    device: torch.device,
    store: Any = None,
    prepare: bool = False,
) -> dict[str, Any] | None:
    """Join the process group (``store``, else the ``env://`` variables) and train as ``rank``;
    ``prepare``: rank 0 prepares the data while the others wait (several nodes: a shared ``data_root``)."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(cfg.threads or 1)
    rendezvous = {"store": store} if store is not None else {"init_method": "env://"}
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo",
        rank=rank,
        world_size=cfg.devices,
        timeout=_timeout(cfg),
        **rendezvous,
    )
    if prepare:
        if rank == 0:
            prepare_data(cfg)
        dist.barrier()
    metrics = train(cfg, out, rank_backend(cfg, rank, device))
    dist.destroy_process_group()
    return metrics


def rank_backend(cfg: RunConfig, rank: int, device: torch.device) -> PairBackend:
    """The backend of ``rank`` in a joined process group: the method's mode, and whether a rank may load
    only its part of each batch (``Method.whole_batch_jobs``)."""
    method = method_class(cfg.optimizer)
    return PairBackend(rank, device, mode_for(method), cfg.devices, whole_batch_jobs=method.whole_batch_jobs)


def _timeout(cfg: RunConfig) -> datetime.timedelta:
    return datetime.timedelta(seconds=cfg.dist_timeout_s)


def _join(cfg: RunConfig, out: Path, joined: Rendezvous) -> dict[str, Any] | None:
    """Run as one rank of a torchrun/SLURM group."""
    device = _launcher_device(cfg, joined)
    if joined.source == "SLURM":
        os.environ.setdefault("MASTER_ADDR", os.environ.get("SLURM_LAUNCH_NODE_IPADDR", LOOPBACK))
        os.environ.setdefault("MASTER_PORT", str(20000 + _env_int(os.environ, "SLURM_JOB_ID", 0) % 20000))
    try:
        metrics = run_rank(cfg, out, joined.rank, device, prepare=True)
    except (DataUnavailableError, MissingExtraError):
        raise  # the command line's own one-line errors
    except RuntimeError as err:  # e.g. a dead peer, a collective timeout, a replica mismatch
        raise RunError(f"rank {joined.rank}: {one_line(err)}") from None
    return metrics if joined.rank == 0 else None


def _launcher_device(cfg: RunConfig, joined: Rendezvous) -> torch.device:
    """Under a launcher each rank takes cuda:LOCAL_RANK (or, under SLURM with one GPU bound per task,
    its only GPU); it must exist."""
    if cfg.device == "cpu":
        return torch.device("cpu")
    if cfg.device.startswith("cuda:"):
        raise ConfigError(
            f"under {joined.source} each rank uses cuda:LOCAL_RANK; use --device cuda "
            f"(got --device {cfg.device})"
        )
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if cfg.device == "auto" and visible == 0:
        return torch.device("cpu")
    if joined.local_rank < visible:
        return torch.device("cuda", joined.local_rank)
    if visible == 1 and joined.source == "SLURM":  # srun --gpus-per-task=1: each task sees its own GPU
        return torch.device("cuda", 0)
    raise ConfigError(
        f"rank {joined.rank} (LOCAL_RANK {joined.local_rank}) needs cuda:{joined.local_rank} but {visible} "
        f"CUDA device(s) are visible; use --device cpu to run on the CPU"
    )
