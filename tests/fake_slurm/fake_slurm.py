#!/usr/bin/env python3
"""A one-machine SLURM for tests: ``sbatch``, ``sacct``, ``squeue``, ``scancel``, ``srun``, ``sinfo``,
``scontrol``, ``sacctmgr`` and ``sshare`` are links to this file (or copies: an sdist stores links as
files; put its folder first on PATH).

Just enough of SLURM for snakemake-executor-plugin-slurm 2.8 and its jobstep plugin:

* ``sbatch --parsable ... [-t MIN] [--signal=[B:|R:]SIG[@S]] --wrap=CMD`` (or a script file) prints the
  job id and runs the job in the background, in its own supervisor process, with the submitting
  environment (``--export=ALL``; ``NONE``: a bare one) plus ``SLURM_JOB_ID`` and friends, in ``-D``,
  output to ``--output`` (``%j`` is the job id). Unknown options are an error, as for sbatch.
* The time limit (``-t`` minutes, scaled: ``$FAKE_SLURM_MINUTE_S`` seconds a minute, default 60) is
  enforced as slurmd does: the state turns ``TIMEOUT``, every process of the job gets SIGTERM, and
  ``$FAKE_SLURM_KILL_WAIT_S`` later (KillWait, default 30 scaled SLURM seconds) SIGKILL. ``--signal``
  sends SIG to the job's steps (``B:`` the batch shell) S scaled seconds (default 60) before the limit.
  The job's processes are those below its supervisor (a child subreaper, so orphans stay below).
* States: ``PENDING`` -> ``RUNNING`` -> ``COMPLETED`` (exit 0), ``FAILED``, ``TIMEOUT``, ``OUT_OF_MEMORY``
  or ``CANCELLED by <uid>`` (``scancel``: SIGTERM, KillWait, SIGKILL; ``<uid>`` is the canceller's:
  ``$FAKE_SLURM_UID`` of the scancel call, e.g. 0 for an admin, else its own uid), as ``sacct -X
  --parsable2 --format=JobIdRaw,State --name N`` prints them (sacct's State names who cancelled;
  ``squeue --format=%i|%T --name N`` prints ``CANCELLED`` alone).
* Memory (crude): a job that asks ``--mem`` (MB, or a K/M/G/T suffix) or ``--mem-per-cpu`` (x
  ``--cpus-per-task``) less than ``$FAKE_SLURM_MEM_USED_MB`` (what every job pretends to use; unset:
  no limit is enforced, real memory use is never measured) is hit by the cgroup's OOM killer
  ``$FAKE_SLURM_MEM_AFTER_S`` real seconds after it started (default 0): its process with the largest
  real RSS gets SIGKILL, and the job ends as ``OUT_OF_MEMORY`` whatever its exit status (what sacct
  shows for a job whose cgroup saw an oom-kill event). The rest of the job runs on.
* ``squeue --jobs ID --format=%L``: the real seconds the job has left, as H:MM:SS.
* ``scontrol update JobId=N TimeLimit=MIN`` changes a job's limit (below its run time: TIMEOUT now).
* ``srun`` (one task) records itself as a step of ``$SLURM_JOB_ID`` and runs its command with the
  task's environment (``SLURM_PROCID=0``...).

State lives in ``$FAKE_SLURM_DIR`` (required): ``<id>/`` per job with ``request.json`` (argv, options),
``env.json`` (the job's environment), ``state``, ``exit`` and ``steps``; ``log`` lists what was called.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36
FINAL = ("COMPLETED", "FAILED", "TIMEOUT", "CANCELLED", "OUT_OF_MEMORY")


def state_dir() -> Path:
    root = os.environ.get("FAKE_SLURM_DIR")
    if not root:
        sys.exit("fake slurm: set FAKE_SLURM_DIR")
    return Path(root)


def scale() -> float:
    """Real seconds per SLURM second."""
    return float(os.environ.get("FAKE_SLURM_MINUTE_S", "60")) / 60


def log_call(name: str, argv: list[str]) -> None:
    with open(state_dir() / "log", "a") as handle:
        handle.write(json.dumps([name, *argv]) + "\n")


def write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def read(path: Path, default: str = "") -> str:
    try:
        return path.read_text()
    except OSError:
        return default


# ----------------------------------------------------------------------------------------------
# sbatch


def minutes(value: str) -> float:
    """A SLURM time limit in minutes: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S."""
    days, _, rest = value.rpartition("-")
    parts = [float(p) for p in rest.split(":")]
    if days:
        parts += [0.0] * (3 - len(parts))
        return float(days) * 1440 + parts[0] * 60 + parts[1] + parts[2] / 60
    if len(parts) == 3:
        return parts[0] * 60 + parts[1] + parts[2] / 60
    return parts[0] + (parts[1] / 60 if len(parts) == 2 else 0)


def megabytes(value: str) -> float:
    """A SLURM memory size in MB: a number with an optional K, M (default), G or T suffix."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]?)B?", value.upper())
    if not match:
        raise argparse.ArgumentTypeError(f"invalid memory size {value!r}")
    number, unit = match.groups()
    return float(number) * {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024**2}[unit]


def memory_limit(request: dict) -> float | None:
    """The job's memory limit in MB (``--mem``, or ``--mem-per-cpu`` x CPUs), None without one."""
    if request.get("mem") is not None:
        return request["mem"]
    if request.get("mem_per_cpu") is not None:
        return request["mem_per_cpu"] * int(request.get("cpus_per_task") or 1)
    return None


def sbatch_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sbatch", allow_abbrev=False)
    for flag in ("--parsable", "--requeue", "--no-requeue", "--exclusive"):
        p.add_argument(flag, action="store_true")
    p.add_argument("-t", "--time", type=minutes)
    p.add_argument("-D", "--chdir", default=os.getcwd())
    p.add_argument("--output", default="slurm-%j.out")
    p.add_argument("--export", default="ALL")
    p.add_argument("--signal")
    p.add_argument("--wrap")
    p.add_argument("--mem", type=megabytes)
    p.add_argument("--mem-per-cpu", type=megabytes)
    for flag in ("-J", "-A", "-p", "-C"):
        p.add_argument(flag)
    for flag in (
        "--job-name", "--comment", "--account", "--partition", "--clusters", "--constraint", "--qos",
        "--nodes", "--reservation", "--exclude", "--ntasks", "--ntasks-per-gpu",
        "--ntasks-per-node", "--cpus-per-task", "--cpus-per-gpu", "--gpus", "--gres",
    ):  # fmt: skip
        p.add_argument(flag)
    p.add_argument("script", nargs="?")
    return p


def parse_signal(text: str | None) -> tuple[str, int, float] | None:
    """--signal=[B:|R:]SIG[@seconds] -> (target 'steps' or 'batch', signal, seconds before the limit)."""
    if not text:
        return None
    match = re.fullmatch(r"(?:([BR]):)?(\w+)(?:@(\d+))?", text)
    if not match:
        sys.exit(f"sbatch: error: Invalid --signal specification: {text}")
    flag, name, before = match.groups()
    number = (
        int(name)
        if name.isdigit()
        else int(getattr(signal, name if name.startswith("SIG") else "SIG" + name))
    )
    return ("batch" if flag == "B" else "steps", number, float(before or 60))


def sbatch(argv: list[str]) -> int:
    args = sbatch_parser().parse_args(argv)
    if args.wrap is None and args.script is None:
        sys.exit("sbatch: error: no script and no --wrap")
    parse_signal(args.signal)
    with open(state_dir() / "next-id.lock", "a+") as lock:  # job ids: 1001, 1002, ...
        fcntl.flock(lock, fcntl.LOCK_EX)
        counter = state_dir() / "next-id"
        job_id = int(read(counter, "1001"))
        write(counter, str(job_id + 1))
    job = state_dir() / str(job_id)
    job.mkdir()
    script = args.wrap if args.wrap is not None else Path(args.script).read_text()
    if args.wrap is not None:
        script = "#!/bin/sh\n" + script
    (job / "script").write_text(script)
    write(job / "request.json", json.dumps({"argv": argv, **vars(args)}, indent=1))
    env = dict(os.environ) if args.export.split(",")[0] == "ALL" else {"PATH": os.environ.get("PATH", "")}
    env |= {
        "SLURM_JOB_ID": str(job_id),
        "SLURM_JOBID": str(job_id),
        "SLURM_JOB_NAME": args.job_name or args.J or "sbatch",
        "SLURM_SUBMIT_DIR": os.getcwd(),
        "SLURM_CPUS_PER_TASK": args.cpus_per_task or "1",
        "SLURM_NTASKS": args.ntasks or "1",
        "SLURM_JOB_NUM_NODES": "1",
        "SLURM_NODELIST": "localhost",
        **({"SLURM_GPUS": args.gpus} if args.gpus else {}),
    }
    write(job / "env.json", json.dumps(env, indent=1))
    write(job / "state", "PENDING")
    subprocess.Popen(
        # the script itself, beside this command (a link to it, or a copy: an sdist stores links as files)
        [sys.executable, str(Path(__file__).with_name("fake_slurm.py")), "_supervise", str(job_id)],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    print(job_id if args.parsable else f"Submitted batch job {job_id}")
    return 0


# ----------------------------------------------------------------------------------------------
# The job (its supervisor plays slurmd)


def children_table() -> dict[int, list[int]]:
    table: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int(read(entry / "stat").rsplit(")", 1)[1].split()[1])
        except (IndexError, ValueError):
            continue
        table.setdefault(ppid, []).append(int(entry.name))
    return table


def below(pid: int) -> list[int]:
    """``pid``'s descendants (not itself)."""
    table, found, todo = children_table(), [], [pid]
    while todo:
        kids = table.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def kill(pids: list[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def supervise(job_id: str) -> int:
    job = state_dir() / job_id
    request = json.loads((job / "request.json").read_text())
    env = json.loads((job / "env.json").read_text())
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1)
    cancelled: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: cancelled.append(1))  # scancel
    output = request["output"].replace("%j", job_id)
    with open(output, "w") as out:
        batch = subprocess.Popen(
            ["/bin/sh", str(job / "script")], cwd=request["chdir"], env=env, stdout=out, stderr=out
        )
    write(job / "pid", str(os.getpid()))
    write(job / "state", "RUNNING")
    start, factor = time.monotonic(), scale()
    limit = request["time"] * 60 * factor if request["time"] else float("inf")
    warn = parse_signal(request["signal"])
    kill_wait = float(os.environ.get("FAKE_SLURM_KILL_WAIT_S", 30 * factor))
    oom_at = out_of_memory_at(request)
    final, kill_at, code, out_of_memory = None, None, None, False
    wall_start = time.time()
    write(job / "end", str(wall_start + limit))  # for squeue's time left
    while True:
        code = reap(batch.pid, code)
        now = time.monotonic() - start
        if (job / "time-limit").exists():  # scontrol update
            limit = float(read(job / "time-limit")) * 60 * factor
            write(job / "end", str(wall_start + limit))
        if code is not None and (final is None or not below(os.getpid())):
            break
        if warn and now >= limit - warn[2] * factor:
            target, signum, _ = warn
            kill([batch.pid] if target == "batch" else steps(job), signum)
            warn = None
        if oom_at is not None and now >= oom_at:  # the job goes on; it ends as OUT_OF_MEMORY
            oom_at, out_of_memory = None, True
            kill(largest(below(os.getpid()))[:1], signal.SIGKILL)
        if final is None and (now >= limit or cancelled):
            by = read(job / "cancelled-by", str(os.getuid()))
            final = "TIMEOUT" if not cancelled else f"CANCELLED by {by}"
            write(job / "state", final)  # the state changes at once; the processes die after
            kill(below(os.getpid()), signal.SIGCONT)
            kill(below(os.getpid()), signal.SIGTERM)
            kill_at = now + kill_wait
        if kill_at is not None and now >= kill_at:
            kill(below(os.getpid()), signal.SIGKILL)
        time.sleep(0.05)
    kill(below(os.getpid()), signal.SIGKILL)  # the job ended: what is left of it dies with it
    while reap(batch.pid, code) is not None and below(os.getpid()):
        time.sleep(0.05)
    write(job / "exit", str(code))
    ended = "OUT_OF_MEMORY" if out_of_memory else "COMPLETED" if code == 0 else "FAILED"
    write(job / "state", final or ended)
    return 0


def out_of_memory_at(request: dict) -> float | None:
    """When (real seconds after the start) the job's pretended memory use outgrows its limit."""
    used, limit = os.environ.get("FAKE_SLURM_MEM_USED_MB"), memory_limit(request)
    if used is None or limit is None or float(used) <= limit:
        return None
    return float(os.environ.get("FAKE_SLURM_MEM_AFTER_S", "0"))


def largest(pids: list[int]) -> list[int]:
    """``pids`` by real resident memory, largest first (the OOM killer's choice)."""

    def rss(pid: int) -> int:
        fields = read(Path(f"/proc/{pid}/statm")).split()
        return int(fields[1]) if len(fields) > 1 else 0

    return sorted(pids, key=rss, reverse=True)


def reap(batch: int, code: int | None) -> int | None:
    """Reap finished processes of the job (orphans come here); the batch shell's exit status once known."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return code
        if pid == 0:
            return code
        if pid == batch:
            code = os.waitstatus_to_exitcode(status)


def steps(job: Path) -> list[int]:
    """The processes of the job's steps (srun's and below)."""
    pids = [int(p) for p in read(job / "steps").split()]
    return [q for p in pids for q in (p, *below(p))]


# ----------------------------------------------------------------------------------------------
# The other commands


def jobs() -> dict[str, str]:
    return {p.name: read(p / "state") for p in state_dir().iterdir() if p.name.isdigit()}


def names() -> dict[str, str]:
    return {
        p.name: json.loads(read(p / "request.json", "{}")).get("job_name")
        for p in state_dir().iterdir()
        if p.name.isdigit()
    }


def option(argv: list[str], *flags: str) -> str | None:
    for i, arg in enumerate(argv):
        for flag in flags:
            if arg == flag and i + 1 < len(argv):
                return argv[i + 1]
            if flag.startswith("--") and arg.startswith(flag + "="):
                return arg.split("=", 1)[1]
    return None


def sacct(argv: list[str]) -> int:
    """Only the plugin's status query answers (``--name``); a step's Reason and the rest: nothing."""
    name = option(argv, "--name")
    if name is None:
        return 0
    named = names()
    for job_id, state in sorted(jobs().items()):
        if named[job_id] == name:
            print(f"{job_id}|{state}")
    return 0


def squeue(argv: list[str]) -> int:
    """``--name N --format=%i|%T``: the plugin's status query; ``--jobs ID --format=%L``: the real time
    the job has left (what a job sees of its scaled limit)."""
    if option(argv, "--format", "-o") == "%L":
        for job_id in (option(argv, "--jobs", "-j") or "").split(","):
            left = float(read(state_dir() / job_id / "end", "inf")) - time.time()
            print(
                "UNLIMITED" if left == float("inf") else time.strftime("%H:%M:%S", time.gmtime(max(0, left)))
            )
        return 0
    name = option(argv, "--name")
    named = names()
    for job_id, state in sorted(jobs().items()):
        if name is None or named[job_id] == name:
            print(f"{job_id}|{state.split()[0]}")
    return 0


def scancel(argv: list[str]) -> int:
    """Cancel jobs; ``$FAKE_SLURM_UID`` plays the canceller (0: an admin), else this process's uid."""
    by = os.environ.get("FAKE_SLURM_UID", str(os.getuid()))
    for job_id in (a for a in argv if a.isdigit()):
        pid = read(state_dir() / job_id / "pid")
        if pid and not read(state_dir() / job_id / "state").startswith(FINAL):
            write(state_dir() / job_id / "cancelled-by", by)
            kill([int(pid)], signal.SIGTERM)
    return 0


def srun(argv: list[str]) -> int:
    """One task: record this process as a step of the job, then become the command."""
    start = next(i for i, a in enumerate(argv) if not a.startswith("-"))
    flags, command = argv[:start], argv[start:]
    tasks = option(flags, "--ntasks") or next((f[2:] for f in flags if re.fullmatch(r"-n\d+", f)), "1")
    if tasks != "1":
        sys.exit(f"fake srun: one task only (got {tasks}); tests/fake_srun.py starts several")
    job_id = os.environ.get("SLURM_JOB_ID")
    if job_id:
        with open(state_dir() / job_id / "steps", "a") as handle:
            handle.write(f"{os.getpid()}\n")
    env = {"SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NTASKS": "1", "SLURM_STEP_NUM_TASKS": "1"}
    os.environ.update(env)
    os.execvp(command[0], command)
    return 127


def scontrol(argv: list[str]) -> int:
    """``show config``; ``update JobId=N TimeLimit=T`` (a new limit, checked by the job's supervisor)."""
    if argv[:2] == ["show", "config"]:
        print("MaxArraySize            = 1001\nMinJobAge               = 300 sec")
    if argv[:1] == ["update"]:
        fields = dict(a.split("=", 1) for a in argv[1:])
        write(state_dir() / fields["JobId"] / "time-limit", str(minutes(fields["TimeLimit"])))
    return 0


COMMANDS = {
    "sbatch": sbatch,
    "sacct": sacct,
    "squeue": squeue,
    "scancel": scancel,
    "srun": srun,
    "scontrol": scontrol,
    "sinfo": lambda argv: print("PARTITION\ncpu*\ngpu") or 0,
    "sacctmgr": lambda argv: 0,  # no accounts: the plugin then submits without one
    "sshare": lambda argv: 0,
}


def main(argv: list[str]) -> int:
    name = Path(argv[0]).name
    if name == "fake_slurm.py" and argv[1:2] == ["_supervise"]:
        return supervise(argv[2])
    log_call(name, argv[1:])
    return COMMANDS[name](argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
