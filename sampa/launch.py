"""Start a two-device run (``python -m sampa train --devices 2``): two ranks, each running ``train``.

The two processes come from one of three places:

* **This launcher** (the default). It starts both ranks with ``torch.multiprocessing`` (spawn).
  They meet at a TCPStore served by the launcher on a socket bound to 127.0.0.1 (or ``$MASTER_ADDR``),
  at a free port (or ``$MASTER_PORT``; if that port is busy, a one-line error). Binding the socket
  here and handing it to the store avoids any race for the port, so two jobs on one machine never
  collide. The launcher waits for both ranks. When one fails, dies or hangs, the other fails within
  ``dist_timeout_s``. The launcher then stops whatever is left (SIGTERM, then SIGKILL) and raises a
  one-line ``RunError`` naming each rank's error. On Linux each rank also dies with the launcher
  (``PR_SET_PDEATHSIG``), so no rank is ever orphaned.
* **torchrun** (``torchrun --standalone --nproc-per-node=2 -m sampa train --devices 2 ...``), which
  sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``.
* **SLURM** (``srun --ntasks=2 python -m sampa train --devices 2 ...``): ``SLURM_PROCID``,
  ``SLURM_STEP_NUM_TASKS`` (or ``SLURM_NTASKS``) and ``SLURM_LOCALID``. ``MASTER_ADDR`` defaults to
  ``SLURM_LAUNCH_NODE_IPADDR``. ``MASTER_PORT`` defaults to 20000 + job id mod 20000. A job step with a
  single task runs this launcher instead.

Devices: two CUDA devices with NCCL (cuda:0 and cuda:1, or cuda:LOCAL_RANK under a launcher) when CUDA
is requested, or visible with ``--device auto``. Otherwise both ranks run on the CPU with gloo, each
with one torch thread unless ``--threads`` says otherwise. Bad setups are one-line ``ConfigError``s
before anything starts: a busy ``MASTER_PORT``, fewer than two CUDA devices when CUDA is asked for,
``--device cuda:N``, or a launcher world size other than 2.
"""

from __future__ import annotations

import ctypes
import datetime
import errno
import os
import pickle
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sampa import io
from sampa.backends.pair import WORLD_SIZE, PairBackend, ReplicaMismatchError, mode_for
from sampa.config import ConfigError, RunConfig
from sampa.data.cifar import CIFAR_SOURCES, ensure_extracted, resolve_root
from sampa.optim import method_class
from sampa.train import RunError, train

GRACE_S = 5.0  # after a rank fails, how long the others get to exit before SIGTERM, then SIGKILL
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Rendezvous:
    """This process's place in a group started by an external launcher."""

    rank: int
    world_size: int
    local_rank: int
    source: str  # "torchrun" or "SLURM"


def launch(cfg: RunConfig, out: str | os.PathLike) -> dict[str, Any] | None:
    """Train ``cfg`` on two devices into ``out``; the metrics (None on a rank other than 0)."""
    out = Path(out)
    joined = external_launcher(os.environ)
    if joined is not None:
        return _join(cfg, out, joined)
    if (out / "metrics.json").exists():
        return train(cfg, out)  # a finished run is not retrained: train only checks and reads it
    return _spawn(cfg, out)


# ----------------------------------------------------------------------------------------------
# Checks before anything starts


def external_launcher(environ: dict[str, str] | os._Environ) -> Rendezvous | None:
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
    if world != WORLD_SIZE:
        raise ConfigError(f"--devices 2 needs exactly 2 processes, but {source} started {world}")
    if not 0 <= rank < WORLD_SIZE:
        raise ConfigError(f"rank must be 0 or 1 (got {rank} from {source})")
    return Rendezvous(rank, world, local, source)


def device_kind(device: str) -> str:
    """``cuda`` (two CUDA devices, NCCL) or ``cpu`` (gloo) for ``--device``; one-line error if CUDA
    cannot give two devices."""
    if device == "cpu":
        return "cpu"
    if device.startswith("cuda:"):
        raise ConfigError(
            f"--devices 2 uses cuda:0 and cuda:1; use --device cuda and choose the GPUs with "
            f"CUDA_VISIBLE_DEVICES (got --device {device})"
        )
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device == "auto" and visible == 0:
        return "cpu"
    if visible < WORLD_SIZE:
        raise ConfigError(
            f"--devices 2 needs two CUDA devices but {visible} is visible; "
            f"use --device cpu to run both ranks on the CPU"
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
    kind = device_kind(cfg.device)
    prepare_data(cfg)
    listener = listen(os.environ)
    host, port = listener.getsockname()[:2]
    store = dist.TCPStore(  # the store takes over the bound socket (no race for the port)
        host, port, is_master=True, wait_for_workers=False, master_listen_fd=listener.detach()
    )
    context = mp.start_processes(
        _spawned_rank,
        args=(cfg, str(out), host, port, kind),
        nprocs=WORLD_SIZE,
        join=False,
        start_method="spawn",
    )
    try:
        while not context.join(grace_period=GRACE_S):
            pass
    except (mp.ProcessRaisedException, mp.ProcessExitedException) as err:
        raise RunError(failure_summary(context, err.error_index, cfg.dist_timeout_s)) from None
    finally:
        _stop(context)
        del store
    metrics = out / "metrics.json"
    return io.read_json(metrics) if metrics.exists() else None


def _spawned_rank(rank: int, cfg: RunConfig, out: str, host: str, port: int, kind: str) -> None:
    """Entry point of a rank started by this launcher."""
    _die_with_parent()
    if host == LOOPBACK and "lo" in {name for _, name in socket.if_nameindex()}:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # gloo's own sockets on loopback too
    store = dist.TCPStore(host, port, is_master=False, timeout=_timeout(cfg))
    device = torch.device("cuda", rank) if kind == "cuda" else torch.device("cpu")
    run_rank(cfg, out, rank, device, store)


def _die_with_parent() -> None:
    """On Linux, have the kernel SIGKILL this process when the launcher dies."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _stop(context: mp.ProcessContext) -> None:
    """Kill and reap any rank still running (after an error or an interrupt of the launcher)."""
    for process in context.processes:
        if process.is_alive():
            process.kill()
        process.join()


def failure_summary(context: mp.ProcessContext, first: int, timeout_s: float) -> str:
    """One line with each failed rank's error, the first failure first (ranks the launcher stopped are
    left out; ranks with the same error share it)."""
    errors: dict[str, list[int]] = {}
    for rank in [first, *(r for r in range(len(context.processes)) if r != first)]:
        message = _rank_error(context.error_files[rank])
        if message is None and rank == first:
            message = _exit_description(context.processes[rank].exitcode)
        if message is not None:
            if "timed out" in message.lower() or "timeout" in message.lower():
                message += f" (collective timeout dist_timeout_s={timeout_s:g})"
            errors.setdefault(message, []).append(rank)
    parts = [
        f"rank {ranks[0]}: {message}"
        if len(ranks) == 1
        else f"ranks {' and '.join(map(str, sorted(ranks)))}: {message}"
        for message, ranks in errors.items()
    ]
    return "two-device run failed: " + "; ".join(parts)


def _rank_error(error_file: str) -> str | None:
    """The last line of the traceback a rank left (its exception), without the module path."""
    try:
        with open(error_file, "rb") as handle:
            trace = pickle.load(handle)  # written by torch.multiprocessing for this launcher
    except (OSError, EOFError, pickle.UnpicklingError):
        return None
    lines = [line for line in str(trace).strip().splitlines() if line.strip()]
    if not lines:
        return None
    kind, _, message = lines[-1].partition(": ")
    name = kind.rsplit(".", 1)[-1]
    return message if name in ("RunError", "ConfigError", "ReplicaMismatchError") else f"{name}: {message}"


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
    ``prepare``: rank 0 prepares the data while rank 1 waits."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(cfg.threads or 1)
    rendezvous = {"store": store} if store is not None else {"init_method": "env://"}
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo",
        rank=rank,
        world_size=WORLD_SIZE,
        timeout=_timeout(cfg),
        **rendezvous,
    )
    if prepare:
        if rank == 0:
            prepare_data(cfg)
        dist.barrier()
    backend = PairBackend(rank, device, mode_for(method_class(cfg.optimizer)))
    metrics = train(cfg, out, backend)
    dist.destroy_process_group()
    return metrics


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
    except (ReplicaMismatchError, dist.DistError) as err:
        raise RunError(f"rank {joined.rank}: {str(err).strip().splitlines()[0]}") from None
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
