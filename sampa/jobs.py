"""The workflow's job wrappers: a failed run is a record, not a failed job (``python -m sampa.jobs ...``).

Snakemake runs nothing downstream of a failed job, so one crashed run would block every table. The
training rule therefore runs ``python -m sampa.jobs train``, which runs ``python -m sampa train`` in a
child process and always writes ``outcome.json`` into the run directory (the rule's output):

* ``complete`` / ``diverged``: the engine wrote ``metrics.json`` (the engine's guarantee: its presence
  means the run finished, even if the run was interrupted or killed after writing it); the outcome only
  adds what the machine was shared with (``shared``);
* ``failed`` (the last error line as ``reason``) or ``needs data`` (its dataset could not be prepared):
  no ``metrics.json``. Such a record is never a result: :func:`forget_failures`, called when the
  workflow is planned, deletes it, so the next invocation retries the run (resuming its checkpoint).

The job exits non-zero only when it is interrupted (it received SIGTERM or SIGINT: Ctrl-C, a time
limit), so Snakemake retries it; a run killed by anything else (the kernel's out-of-memory killer's
SIGKILL, a segfault) failed by itself and is recorded as ``failed``. On its last attempt
(``--last-attempt``: Snakemake has no retries left) an interruption is recorded as ``failed`` too, so
a run that keeps being interrupted never blocks the tables. Under SLURM the job stops the run itself
:data:`STOP_BEFORE_LIMIT_S` before its time limit (``squeue``'s time left), as SLURM would end it as
``TIMEOUT``, a failed job to Snakemake whatever it recorded.
``prepare-data`` does the same for a dataset (``results/data/<dataset>.json``), and :func:`summary` is
the one-screen end of a run. :func:`placement` decides, when the workflow is planned, whether a run's ranks
fit one cluster node (one task: our launcher starts them) or span several (``srun`` starts one task per
rank, see :class:`Placement`).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OUTCOME = "outcome.json"
FINISHED = ("complete", "diverged")
FAILED = "failed"
NEEDS_DATA = "needs data"
DATA_READY = "ready"
POLL_S = 5.0
INTERRUPTS = (signal.SIGTERM, signal.SIGINT)  # what a user or a scheduler stops a job with
#: on SLURM, a training job stops its run this long before the job's time limit (at most half the time
#: it has): time to record and exit, as SLURM reports a job still running at its limit as TIMEOUT,
#: which Snakemake treats as a failed job whatever the job recorded. $SAMPA_STOP_BEFORE_LIMIT_S overrides
STOP_BEFORE_LIMIT_S = 120.0
STOP_ENV = "SAMPA_STOP_BEFORE_LIMIT_S"


class JobError(ValueError):
    """Bad arguments of a job (one line)."""


# ----------------------------------------------------------------------------------------------
# What the machine was shared with


def _process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process (Linux /proc; empty elsewhere)."""
    table = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        table[int(entry.name)] = (ppid, cmdline)
    return table


def _is_training(cmdline: str) -> bool:
    return "-m sampa.jobs train" in cmdline or "-m sampa train" in cmdline


def other_training_jobs(me: int, table: Mapping[int, tuple[int, str]] | None = None) -> int:
    """Training jobs on this machine other than ``me`` and its descendants (a job counts once)."""
    table = _process_table() if table is None else table

    def related(pid: int) -> bool:  # pid is me or below me
        seen = set()
        while pid not in seen and pid in table:
            if pid == me:
                return True
            seen.add(pid)
            pid = table[pid][0]
        return pid == me

    count = 0
    for pid, (ppid, cmdline) in table.items():
        if not _is_training(cmdline) or related(pid):
            continue
        parent_is_training = ppid in table and _is_training(table[ppid][1])
        count += not parent_is_training  # a job's child processes belong to the job
    return count


class MachineWatch:
    """Samples, while a run trains, the other training jobs on the machine and the load average."""

    def __init__(self, me: int) -> None:
        self.me = me
        self.jobs: list[int] = []
        self.load: list[float] = []

    def sample(self) -> None:
        self.jobs.append(other_training_jobs(self.me))
        if hasattr(os, "getloadavg"):
            self.load.append(os.getloadavg()[0])

    def record(self) -> dict[str, Any]:
        return {
            "other_training_jobs_max": max(self.jobs, default=None),
            "load_avg_1min_max": round(max(self.load), 2) if self.load else None,
            "cpu_count": os.cpu_count(),
            "samples": len(self.jobs),
        }


# ----------------------------------------------------------------------------------------------
# Training


def run_training(
    train_args: Sequence[str],
    out: Path,
    data_records: Sequence[Path],
    python: str = sys.executable,
    launcher: Sequence[str] = (),
    last_attempt: bool = False,
) -> dict[str, Any]:
    """Train one run in a child process (stdout/stderr inherited), started through ``launcher`` (e.g.
    ``srun ...``: one process per rank, see :class:`Placement`) if given; its outcome record. An
    interruption exits (status 128 + signal) unless ``last_attempt``: then it is a failed run."""
    missing = [r for r in data_records if _read(r).get("status") != DATA_READY]
    if missing:
        reasons = "; ".join(_read(r).get("reason") or _unready(Path(r)) for r in missing)
        print(f"not trained: {reasons}", file=sys.stderr, flush=True)
        return {"status": NEEDS_DATA, "reason": reasons}
    stop_at = _stop_time(os.environ)
    command = [*launcher, python, "-m", "sampa", "train", *train_args, "--out", str(out)]
    print("$ " + " ".join(command), file=sys.stderr, flush=True)
    watch = MachineWatch(os.getpid())
    resumed = (out / "checkpoint.pt").exists()  # an interrupted or failed attempt left its last epoch
    forward = _SignalForwarder()  # before the child starts: no moment without our handlers
    child = subprocess.Popen(command)
    received = forward.to(child)
    tail = _TailReader()
    watch.sample()
    stopped = False
    while True:
        wait = POLL_S if stop_at is None else max(0.0, min(POLL_S, stop_at - time.monotonic()))
        try:
            child.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            if stop_at is not None and time.monotonic() >= stop_at and not received:
                print("stopping the run before the job's time limit", file=sys.stderr, flush=True)
                stopped = True
                received.append(signal.SIGTERM)
                child.send_signal(signal.SIGTERM)
            watch.sample()
    code = child.returncode
    record: dict[str, Any] = {"returncode": code, "shared": watch.record()}
    if resumed:
        record["resumed"] = True  # the closing summary counts these
    metrics = _read(out / "metrics.json")
    if metrics.get("status") in FINISHED:  # written atomically, last: the run is done, however it exited
        return {"status": metrics["status"], **record}
    signum = received[-1] if received else _interrupt_signal(code)
    if signum is not None and not last_attempt:  # interrupted: let Snakemake retry
        sys.exit(128 + signum)
    return {"status": FAILED, "reason": _failure(code, signum, tail, stopped), **record}


def _unready(record: Path) -> str:
    """Why a data record without a reason does not say ready."""
    if not record.exists():
        return f"{record} not found"
    return f"{record} is damaged (not a data record); delete it to check the data again"


def _failure(code: int, interrupt: int | None, tail: _TailReader, stopped: bool = False) -> str:
    """Why a run failed: interrupted on its last attempt, killed by a signal, or its last error line."""
    if stopped:
        return "stopped before the job's time limit on its last attempt (no retries left)"
    if interrupt is not None:
        return f"interrupted by {signal.Signals(interrupt).name} on its last attempt (no retries left)"
    if code < 0:
        hint = " (out of memory, or kill -9)" if -code == signal.SIGKILL else ""
        return f"killed by {_signal_name(-code)}{hint}"
    return tail.last_line()


def _stop_time(environ: Mapping[str, str]) -> float | None:
    """When (``time.monotonic()``) a SLURM job stops its run: :data:`STOP_BEFORE_LIMIT_S` (at most half
    the time left) before its time limit, which ``squeue`` tells; None outside SLURM or without a limit."""
    raw = environ.get(STOP_ENV, str(STOP_BEFORE_LIMIT_S))
    try:
        before = float(raw)
    except ValueError:
        before = -1.0
    if not 0 <= before < math.inf:
        raise JobError(f"environment variable {STOP_ENV} must be a number of seconds >= 0 (got {raw!r})")
    left = slurm_time_left(environ)
    return None if left is None else time.monotonic() + left - min(before, left / 2)


def slurm_time_left(environ: Mapping[str, str]) -> float | None:
    """Seconds the SLURM job ``$SLURM_JOB_ID`` has left (``squeue -o %L``); None outside SLURM, without
    a time limit, or when squeue cannot tell."""
    job = environ.get("SLURM_JOB_ID")
    if not job:
        return None
    try:
        answer = subprocess.run(
            ["squeue", "--noheader", "--jobs", job, "--format=%L"], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return _slurm_duration(answer.stdout.strip()) if answer.returncode == 0 else None


def _slurm_duration(text: str) -> float | None:
    """SLURM's [days-][hours:]minutes:seconds as seconds; None for anything else (UNLIMITED, NOT_SET)."""
    match = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)", text)
    if not match:
        return None
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)


def _interrupt_signal(returncode: int) -> int | None:
    """The interrupting signal a child's status shows (killed by, or exited 128 + SIGTERM/SIGINT)."""
    for signum in INTERRUPTS:
        if returncode in (-signum, 128 + signum):
            return int(signum)
    return None


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class _TailReader:
    """The last line a run printed (its one-line error), read from this job's log after the run."""

    def __init__(self) -> None:
        self.offset = _stderr_size()

    def last_line(self) -> str:
        log = _stderr_path()
        if log is None:
            return "see the job's log"
        with open(log, "rb") as handle:
            handle.seek(self.offset)
            lines = [line.strip() for line in handle.read().decode(errors="replace").splitlines()]
        return next((line for line in reversed(lines) if line), "no output")[:500]


def _stderr_path() -> Path | None:
    """The file this job's stderr goes to (the rule redirects it to the run's log), if a file."""
    try:
        path = Path(os.readlink(f"/proc/self/fd/{sys.stderr.fileno()}"))
    except (OSError, ValueError):
        return None
    return path if path.is_file() else None


def _stderr_size() -> int:
    path = _stderr_path()
    return path.stat().st_size if path else 0


class _SignalForwarder:
    """Passes SIGTERM/SIGINT on to the child: installed before the child starts, so a signal that
    arrives while it is being started is passed on as soon as it exists (:meth:`to`)."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self.pending: list[int] = []
        self.child: subprocess.Popen | None = None
        for signum in INTERRUPTS:
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.received.append(signum)
        if self.child is None:
            self.pending.append(signum)
        else:
            self.child.send_signal(signum)

    def to(self, child: subprocess.Popen) -> list[int]:
        """Forward to ``child`` from now on (and what arrived before); the signals received."""
        self.child = child
        while self.pending:
            child.send_signal(self.pending.pop(0))
        return self.received


def _read(path: Path) -> dict[str, Any]:
    """A JSON record, {} if absent or damaged."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_record(path: Path, record: Mapping[str, Any]) -> None:
    from sampa import io

    io.write_text(path, json.dumps(dict(record), indent=1, sort_keys=True) + "\n")


# ----------------------------------------------------------------------------------------------
# Data


#: the main Snakemake process's retry count, for jobs it runs elsewhere (workflow/rules/common.smk)
RETRIES_ENV = "SAMPA_WORKFLOW_RETRIES"


def retries_of(environ: Mapping[str, str], default: int) -> int:
    """``$SAMPA_WORKFLOW_RETRIES`` (set by the main Snakemake process), else ``default``."""
    raw = environ.get(RETRIES_ENV)
    if raw is None:
        return default
    if not raw.isdigit():
        raise JobError(f"environment variable {RETRIES_ENV} must be an integer >= 0 (got {raw!r})")
    return int(raw)


def rejoin_run_wildcard(wildcards: Mapping[str, str]) -> dict[str, str]:
    """A training job's ``run`` wildcard as the main process sent it to a cluster node. Snakemake passes
    a job to its node as ``--target-jobs 'train_run:run="a/b=1,c=2/seed0"'`` and splits that at every
    comma (snakemake issue #2366), so the node gets ``{"run": "a/b=1", "c": "2/seed0"}``; a run path's
    commas only ever separate ``key=value`` settings, so the pieces join back in order."""
    if "run" not in wildcards or len(wildcards) == 1:
        return dict(wildcards)
    pieces = [f"{key}={value}" for key, value in wildcards.items() if key != "run"]
    return {"run": ",".join([wildcards["run"], *pieces])}


def download_allowed(environ: Mapping[str, str]) -> bool:
    """``$SAMPA_DOWNLOAD``: 1 (or unset) lets data preparation download CIFAR, 0 forbids it."""
    raw = environ.get("SAMPA_DOWNLOAD") or "1"
    if raw not in ("0", "1"):
        raise JobError(f"environment variable SAMPA_DOWNLOAD must be 0 or 1 (got {raw!r})")
    return raw == "1"


def prepare_data(dataset: str, root: str | None = None) -> dict[str, Any]:
    """Verify (extract, or download where allowed) ``dataset`` once, under a lock, or generate it (the
    toy ImageFolder); its data record."""
    from sampa.data.cifar import CIFAR_SOURCES, DataUnavailableError, ensure_extracted, resolve_root
    from sampa.paths import TOY_IMAGEFOLDER

    if dataset == TOY_IMAGEFOLDER:  # generated here, once (under its own lock)
        from sampa.data.imagefolder import ensure_toy_imagefolder

        try:
            return {"status": DATA_READY, "folder": str(ensure_toy_imagefolder(root).resolve())}
        except OSError as err:  # e.g. a read-only or full data root
            return {"status": NEEDS_DATA, "reason": " ".join(str(err).split())}
    if dataset not in CIFAR_SOURCES:
        prepared = ", ".join([*CIFAR_SOURCES, TOY_IMAGEFOLDER])
        raise JobError(f"dataset {dataset!r} needs no preparation; prepared: {prepared}")
    download = download_allowed(os.environ)
    try:  # extracts (or downloads) under the dataset's lock, into place once complete
        path = ensure_extracted(dataset, resolve_root(root), download=download)
    except (DataUnavailableError, OSError) as err:
        return {"status": NEEDS_DATA, "reason": " ".join(str(err).split())}
    return {"status": DATA_READY, "folder": str(path.resolve())}


# ----------------------------------------------------------------------------------------------
# Placement of a run on a cluster (SLURM)


@dataclass(frozen=True)
class Placement:
    """Where the ranks of one run go on a cluster.

    One node (``nodes == 1``): one task that runs ``python -m sampa train``, whose launcher starts the
    ranks (today's path; nothing below is set). Several nodes: one task per rank (GPU), started by
    ``srun`` (:meth:`launcher`); each task joins the group through the SLURM environment
    (:mod:`sampa.launch`). ``cpus_per_rank``: CPU cores per rank (None: the profile's default).
    """

    devices: int
    nodes: int = 1
    cpus_per_rank: int | None = None

    @property
    def tasks(self) -> int:
        return self.devices if self.nodes > 1 else 1

    @property
    def tasks_per_node(self) -> int:
        return self.tasks // self.nodes

    def launcher(self) -> str:
        """The command prefix that starts the ranks: ``srun ...`` across nodes, '' on one node."""
        if self.nodes == 1:
            return ""
        flags = [
            f"--nodes={self.nodes}",
            f"--ntasks={self.tasks}",
            f"--ntasks-per-node={self.tasks_per_node}",
            "--gpus-per-task=1",
            f"--cpus-per-task={self.cpus_per_rank or 1}",
            "--kill-on-bad-exit=1",  # a dead rank ends every task of the step
        ]
        return shlex.join(["srun", *flags])

    def resources(self) -> dict[str, int | str | None]:
        """snakemake-executor-plugin-slurm resources of the job (None: not set).

        Several nodes make an MPI-style job (resource ``mpi``: the plugin then runs the rule's command
        in the batch script instead of in a one-task ``srun``, and the command starts its own step).
        ``tasks_per_gpu=1`` is given because the plugin turns ``tasks`` of a GPU job into
        ``--ntasks-per-gpu`` otherwise; sbatch gets ``--nodes --ntasks --ntasks-per-gpu=1 --gpus``.
        """
        one_node = self.nodes == 1
        cpus = self.cpus_per_rank and self.cpus_per_rank * (max(1, self.devices) if one_node else 1)
        return {
            "nodes": None if one_node else self.nodes,
            "tasks": None if one_node else self.tasks,
            "tasks_per_gpu": None if one_node else 1,
            "mpi": self.launcher() or None,
            "cpus_per_task": cpus or None,
        }


def placement(
    devices: int, gpus: bool, gpus_per_node: int | None = None, cpus_per_rank: int | None = None
) -> Placement:
    """The placement of a run of ``devices`` ranks (``gpus``: one GPU each) on nodes of ``gpus_per_node``
    GPUs (None: every run on one node). A run that needs more GPUs than a node has is spread over the
    fewest nodes that take the same number of its ranks each (8 on 4-GPU nodes: 2 x 4, so each SAMPa
    group is one node; 8 on 3-GPU nodes: 4 x 2). A bad setting is a one-line :class:`JobError`."""
    for name, value in (("gpus_per_node", gpus_per_node), ("cpus_per_rank", cpus_per_rank)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise JobError(f"{name} must be a positive integer, or unset for one node (got {value!r})")
    if not gpus or gpus_per_node is None or devices <= gpus_per_node:
        return Placement(devices, 1, cpus_per_rank)
    nodes = next(n for n in range(-(-devices // gpus_per_node), devices + 1) if devices % n == 0)
    return Placement(devices, nodes, cpus_per_rank)


# ----------------------------------------------------------------------------------------------
# Planning time and the end of a run


def forget_failures(run_dirs: Iterable[Path], data_records: Iterable[Path]) -> int:
    """Delete outcome records without a finished run, or that call a finished run unfinished (written
    before a finished ``metrics.json`` always won), and data records that are not ready (retried)."""
    forgotten = 0
    for run_dir in map(Path, run_dirs):
        outcome = run_dir / OUTCOME
        finished = (run_dir / "metrics.json").exists()
        if outcome.exists() and not (finished and _read(outcome).get("status") in FINISHED):
            outcome.unlink(missing_ok=True)
            forgotten += 1
    for record in map(Path, data_records):
        if record.exists() and _read(record).get("status") != DATA_READY:
            record.unlink(missing_ok=True)
            forgotten += 1
    return forgotten


def summary(runs: Mapping[str, Path], log_of: Mapping[str, str], limit: int = 20, others: int = 0) -> str:
    """One screen: how many runs finished, which did not (with their logs). ``others``: runs of the
    config that the invocation did not need (its targets did not ask for them): mentioned, not counted."""
    status = {}
    for name, run_dir in runs.items():
        record = _read(Path(run_dir) / OUTCOME)
        finished = (Path(run_dir) / "metrics.json").exists()
        status[name] = record.get("status") or ("complete" if finished else "not run")
    counts = Counter(status.values())
    finished = sum(counts[s] for s in FINISHED)
    resumed = sum(
        1 for n, d in runs.items() if status[n] in FINISHED and _read(Path(d) / OUTCOME).get("resumed")
    )
    lines = [
        f"sampa workflow: {finished} of {len(runs)} runs finished"
        + (f" ({resumed} resumed from a checkpoint)" if resumed else "")
        + "".join(f", {n} {s}" for s, n in sorted(counts.items()) if s not in ("complete",))
        + (f" ({others} other run{'s' * (others != 1)} of the config not needed here)" if others else "")
    ]
    bad = [name for name, s in status.items() if s not in FINISHED]
    for name in bad[:limit]:
        reason = _read(Path(runs[name]) / OUTCOME).get("reason", "")
        where = log_of[name]
        if status[name] == "not run" and not Path(where).exists():  # never started: no log to read
            where, reason = str(runs[name]), reason or "not started"
        lines.append(f"  {status[name]}: {where}" + (f"  ({reason[:120]})" if reason else ""))
    if len(bad) > limit:
        lines.append(f"  ... and {len(bad) - limit} more (results/<name>/runs.csv has every status)")
    if bad:
        lines.append("  the next invocation of the same command retries them (finished runs are kept)")
    return "\n".join(lines)


#: a target under one config's outputs, results/<config>/... or figures/<config>/...; results/runs/ and
#: results/data/ hold every config's runs and data records (Snakemake answers for those)
_CONFIG_TARGET = re.compile(r"(?:results/(?!runs/|data/)|figures/)(?P<config>[^/]+)/.+")


def target_error(target: str, name: str, outputs: Iterable[str]) -> str | None:
    """Why ``target`` (a file named on Snakemake's command line) is not an output of config ``name`` (its
    ``outputs``), in one line naming the valid ones; None when it is one, a toy file, or outside the
    config's output folders (Snakemake answers for those)."""
    path = os.path.normpath(target)
    match = _CONFIG_TARGET.fullmatch(path)
    outputs = set(outputs)
    if match is None or path in outputs or path.startswith(f"results/{name}/toy/"):
        return None
    if match["config"] != name:
        return (
            f"target {target!r} is an output of config {match['config']!r}, but the config is {name!r} "
            "(targets go before --configfile; without it: configs/smoke.yaml)"
        )
    tables = _natural({Path(o).stem for o in outputs if o.startswith(f"results/{name}/tables/")})
    figures = _natural({Path(o).stem for o in outputs if o.startswith(f"figures/{name}/")})
    return (
        f"unknown target {target!r}; config {name!r} makes results/{name}/runs.csv, "
        f"results/{name}/tables/<table>.{{md,tex,csv}} for {', '.join(tables)} (reproduction: md, tex) "
        f"and figures/{name}/<figure>.{{pdf,png,csv}} for {', '.join(figures) or 'none'}"
    )


def _natural(names: Iterable[str]) -> list[str]:
    """``names`` sorted with their numbers as numbers (table2 before table10)."""
    return sorted(names, key=lambda n: [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", n)])


def module_files(*modules: str) -> list[str]:
    """The source files ``modules`` import from the sampa package, transitively (and package data
    files beside them, e.g. the paper's numbers): a workflow rule's code dependencies, derived."""
    package = Path(__file__).resolve().parent
    seen: set[str] = set()
    files: set[Path] = set()
    pending = list(modules)
    while pending:
        name = pending.pop()
        if name in seen or not (name == "sampa" or name.startswith("sampa.")):
            continue
        seen.add(name)
        path = _module_path(package, name)
        if path is None:
            continue
        files.add(path)
        if path.name == "__init__.py":
            files |= set(path.parent.glob("*.csv"))
        pending += _imported(path)
    return sorted(str(f) for f in files)


_FROM = re.compile(
    r"^[ \t]*from[ \t]+(sampa(?:\.\w+)*)[ \t]+import[ \t]+(?:\(([^)]*)\)|([\w \t,]+))", re.MULTILINE
)
_IMPORT = re.compile(r"^[ \t]*import[ \t]+(sampa(?:\.\w+)*)", re.MULTILINE)


@functools.cache
def _imported(path: Path) -> list[str]:
    """Modules (or module.name candidates) a source file imports from sampa (a fast textual scan)."""
    text = path.read_text()
    names = [m.group(1) for m in _IMPORT.finditer(text)]
    for match in _FROM.finditer(text):
        module = match.group(1)
        imported = (match.group(2) or match.group(3)).split(",")
        names += [module, *(f"{module}.{n.split()[0]}" for n in imported if n.split())]
    return names


def _module_path(package: Path, name: str) -> Path | None:
    """sampa.x.y -> <package>/x/y.py or <package>/x/y/__init__.py (None: not a module, e.g. a class)."""
    parts = name.split(".")[1:]
    candidates = [package.joinpath(*parts, "__init__.py")]
    if parts:
        candidates.insert(0, package.joinpath(*parts).with_suffix(".py"))
    return next((path for path in candidates if path.is_file()), None)


# ----------------------------------------------------------------------------------------------
# Command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sampa.jobs", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train one run, always record its outcome")
    train.add_argument("--out", required=True, help="the run directory")
    train.add_argument("--data", action="append", default=[], help="data records the run needs")
    train.add_argument(
        "--launcher", default="", help="command prefix that starts the ranks, e.g. 'srun --ntasks=8 ...'"
    )
    train.add_argument(
        "--last-attempt", type=int, choices=(0, 1), default=0,
        help="1: no retries left, record an interruption as failed",
    )  # fmt: skip
    train.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then python -m sampa train arguments")
    data = sub.add_parser("prepare-data", help="verify/extract one dataset, record whether it is ready")
    data.add_argument("dataset")
    data.add_argument("--record", required=True)
    data.add_argument("--root", default=None, help="default $SAMPA_DATA or ./data")
    return parser


def _split_launcher(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError as err:
        raise JobError(f"--launcher is not a valid command prefix ({err}): {text!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "train":
            out = Path(args.out)
            if not args.out.strip():
                raise JobError("--out must name a run directory (got an empty string)")
            train_args = [a for a in args.train_args if a != "--"]
            launcher = _split_launcher(args.launcher)
            data = [Path(d) for d in args.data]
            last = bool(args.last_attempt)
            record = run_training(train_args, out, data, launcher=launcher, last_attempt=last)
            out.mkdir(parents=True, exist_ok=True)
            write_record(out / OUTCOME, record)
            print(f"outcome: {record['status']}", file=sys.stderr)
        else:
            record = prepare_data(args.dataset, args.root)
            write_record(Path(args.record), record)
            print(f"{args.dataset}: {record['status']} {record.get('reason', '')}".strip(), file=sys.stderr)
    except (JobError, ValueError, KeyError) as err:
        print(f"sampa.jobs {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
