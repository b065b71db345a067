"""GPU slots for concurrent jobs on one machine: a lock file per GPU, ``CUDA_VISIBLE_DEVICES`` per job.

Snakemake counts GPUs as a resource (``--resources gpu=2``) but does not say *which* GPU a job gets
(snakemake issue #281), so two concurrent jobs would both use GPU 0. ``python -m sampa train --gpus N``
therefore claims N GPUs before it touches CUDA: it takes an exclusive ``flock`` on one lock file per
GPU (named by the GPU's UUID, in a directory shared by all jobs of the machine), retrying until N are
free, and exports their UUIDs in ``CUDA_VISIBLE_DEVICES``. The locks belong to the training process
and are released when it exits, however it exits.

* An existing non-empty ``CUDA_VISIBLE_DEVICES`` defines the pool the job chooses from (a user's
  ``CUDA_VISIBLE_DEVICES=2,3 snakemake ...``, or the GPUs a scheduler gave the job). Its entries are
  locked by UUID: an index is resolved through NVML (PCI bus order, as with
  ``CUDA_DEVICE_ORDER=PCI_BUS_ID``), so jobs whose local indices name different physical GPUs (SLURM
  jobs on one node) never block each other, and two jobs in one pool never share a GPU.
* ``--gpus 0`` hides every GPU (``CUDA_VISIBLE_DEVICES=""``): a job that was given no GPU uses none.
* Asking for more GPUs than the machine has is an error, not an endless wait.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import TextIO

ENV = "CUDA_VISIBLE_DEVICES"
LOCK_DIR_ENV = "SAMPA_GPU_LOCK_DIR"
DEFAULT_LOCK_DIR = Path("/tmp/sampa-gpu-locks")

_held: list[int] = []  # lock file descriptors of this process (kept open until it exits)


class GpuError(RuntimeError):
    """GPUs cannot be assigned (message: one line)."""


def detect_gpus() -> list[str]:
    """UUIDs of this machine's GPUs in NVML order; [] without an NVIDIA driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return []
    try:
        uuids = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            uuid = pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(i))
            uuids.append(uuid.decode() if isinstance(uuid, bytes) else str(uuid))
        return uuids
    finally:
        pynvml.nvmlShutdown()


def has_nvml_bindings() -> bool:
    """Whether pynvml (nvidia-ml-py), which lists the GPUs, is installed."""
    import importlib.util

    return importlib.util.find_spec("pynvml") is not None


def lock_dir(path: str | os.PathLike | None = None) -> Path:
    """The lock directory: ``path``, else ``$SAMPA_GPU_LOCK_DIR``, else /tmp/sampa-gpu-locks."""
    choices = (
        ("--gpu-lock-dir", path),
        (f"${LOCK_DIR_ENV}", os.environ.get(LOCK_DIR_ENV)),
        ("the default lock directory", DEFAULT_LOCK_DIR),
    )
    source, value = next((source, value) for source, value in choices if value)
    chosen = Path(value)
    try:
        chosen.mkdir(parents=True, exist_ok=True)
    except (OSError, ValueError) as err:  # a file, no permission, a NUL byte
        why = getattr(err, "strerror", None) or err
        raise GpuError(f"{source} {str(chosen)!r} cannot hold the GPU locks: {why}") from None
    with contextlib.suppress(PermissionError):  # shared by every user's jobs on this machine, like /tmp
        chosen.chmod(0o1777)
    return chosen


def try_lock(gpus: Sequence[str], count: int, directory: Path) -> list[tuple[str, int]] | None:
    """Lock ``count`` of ``gpus`` (first free first) without waiting; None (none held) if too few are free."""
    taken: list[tuple[str, int]] = []
    for gpu in gpus:
        fd = os.open(directory / f"{gpu}.lock", os.O_RDONLY | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        taken.append((gpu, fd))
        if len(taken) == count:
            return taken
    for _, fd in taken:
        os.close(fd)
    return None


def pool(visible: str, machine: Sequence[str]) -> list[str]:
    """The GPUs ``CUDA_VISIBLE_DEVICES`` names, as UUIDs where an index can be resolved on ``machine``."""
    ids = [entry.strip() for entry in visible.split(",") if entry.strip()]
    return [machine[int(i)] if i.isdigit() and int(i) < len(machine) else i for i in ids]


def available(env: Mapping[str, str] = os.environ) -> list[str]:
    """The GPUs jobs may use: those ``CUDA_VISIBLE_DEVICES`` names if set, else the machine's."""
    machine = detect_gpus()
    return pool(env[ENV], machine) if env.get(ENV) else machine


def claim(
    count: int,
    *,
    gpus: Sequence[str] | None = None,
    directory: str | os.PathLike | None = None,
    env: MutableMapping[str, str] = os.environ,
    poll_s: float = 2.0,
    log: TextIO = sys.stderr,
) -> list[str]:
    """Give this process ``count`` GPUs of :func:`available`; return their ids."""
    if count < 0:
        raise GpuError(f"--gpus must be >= 0 (got {count})")
    if count == 0:
        env[ENV] = ""
        return []
    machine = detect_gpus() if gpus is None else list(gpus)
    if env.get(ENV):
        gpus = pool(env[ENV], machine)
        if len(gpus) < count:
            raise GpuError(f"this run needs {count} GPUs but {ENV}={env[ENV]!r} names {len(gpus)}")
    else:
        gpus = machine
        if count > len(gpus):
            hint = (
                "" if gpus or has_nvml_bindings() else " (pynvml is not installed: pip install nvidia-ml-py)"
            )
            raise GpuError(f"this run needs {count} GPUs but this machine has {len(gpus)}{hint}")
    directory = lock_dir(directory)
    waiting = False
    while (taken := try_lock(gpus, count, directory)) is None:
        if not waiting:
            print(f"waiting for {count} free GPU(s) (locks in {directory})", file=log, flush=True)
            waiting = True
        time.sleep(poll_s)
    _held.extend(fd for _, fd in taken)
    ids = [gpu for gpu, _ in taken]
    env[ENV] = ",".join(ids)
    return ids


def release() -> None:
    """Release this process's GPU locks (they are released at exit anyway)."""
    while _held:
        os.close(_held.pop())
