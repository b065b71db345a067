"""``python -m sampa doctor --out DIR``: one command that proves the GPU paths on the machine it finds.

Each check group runs in its own process session under its own time limit (and all of them under
``--budget-s``), so a hang costs one group, never the window: a fresh interpreter where there is a GPU, else
a fork of a forkserver that imported torch once (the CPU subset spends its time on checks, not imports).
Every check compares against a reference computed in the same run; the tolerances are constants next to the
checks (``sampa.doctor.numerics``, ``.pair``, ``.memory``, ``.speed``). The verdict table (check | result |
figure | status) is printed and written to ``DIR/doctor.json`` (rewritten after every group); each group's
output goes to ``DIR/logs/<group>.log``. A group that times out or dies keeps the rows it finished, followed
by one failed row saying how it ended. Exit status 1 if any check fails. Without a GPU the command says so
in one line and runs the CPU-meaningful subset (the GPU-only checks are listed as skipped, with the reason).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from sampa import io
from sampa.config import ConfigError
from sampa.doctor.common import FAIL, ROOT, SKIP, Row, not_a_checkout

DEFAULT_BUDGET_S = 480.0  # 8 minutes on one H100/H200


@dataclass(frozen=True)
class Group:
    """Checks that run together in one subprocess (``module:function``, called with the Machine)."""

    target: str
    limit_s: float
    what: str
    cpu_skip: str = ""  # why the group does not run without a GPU (empty: it runs on a CPU too)


#: in order of value: the cheap correctness checks first, then speed and the workflow, and last the compiled
#: step (its cold compile is the least predictable time). The limits are hang protection sized from
#: estimates for one H200 (fresh interpreter with torch and CUDA ~10 s per process, CPU float64 references
#: on 16 cores, a cold inductor compile of the tiny CNN's two step graphs); they add up to the default
#: budget, so each group gets its whole limit whatever the groups before it took.
GROUPS = {
    "float64": Group("sampa.doctor.numerics:check_float64", 70, "1: fp32 vs float64, determinism"),
    "fused": Group("sampa.doctor.numerics:check_fused_and_bf16", 35, "2: fused SAMPa, bf16+channels_last"),
    "pair": Group("sampa.doctor.pair:check_pair", 70, "4: two ranks (NCCL or gloo), killed rank"),
    "memory": Group("sampa.doctor.memory:check_memory", 25, "5: NVML vs torch peaks", "no GPU memory"),
    "cuda-tests": Group(
        "sampa.doctor.suite:check_cuda_tests", 40, "3: CUDA-only tests (host sync)", "they skip without CUDA"
    ),
    "speed": Group("sampa.doctor.speed:check_speed", 100, "6: step times, ratios, SGD epoch"),
    "workflow": Group(
        "sampa.doctor.suite:check_workflow", 85, "7: gpu-smoke workflow", "CPU: slow test test_workflow.py"
    ),
    "compile": Group(
        "sampa.doctor.numerics:check_compile", 55, "3: compiled step vs eager", "CPU: slow tests (-m slow)"
    ),
}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(parser().parse_args(argv))
    except ConfigError as err:
        print(f"sampa doctor: error: {err}", file=sys.stderr)
        return 2


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``sampa doctor`` in the ``python -m sampa`` command line."""
    p = sub.add_parser(
        "doctor", help="check the GPU paths on this machine", description=__doc__.split("\n\n")[0]
    )
    add_arguments(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the selected groups, print and write the verdict table; 1 if any check failed.
    ``doctor.json`` is rewritten after every group (``finished`` false until the end), so even a doctor
    killed from outside leaves the rows of the groups it finished."""
    groups = selected_groups(args.only)
    if not args.budget_s > 0:
        raise ConfigError(f"--budget-s must be a positive number of seconds (got {args.budget_s:g})")
    out = Path(args.out)
    if not args.out.strip() or "\0" in args.out or (out.exists() and not out.is_dir()):
        raise ConfigError(f"--out must name a folder (got {args.out!r})")
    (out / "logs").mkdir(parents=True, exist_ok=True)
    where = machine_line()
    print(where, flush=True)
    if why := not_a_checkout():
        print(f"installed package: the speed, CUDA-tests and workflow checks are skipped ({why})", flush=True)
    rows, durations, deadline = [], {}, time.monotonic() + args.budget_s
    gpu = has_gpu()
    for name in groups:
        if not gpu and GROUPS[name].cpu_skip:
            rows.append(Row(f"[{name}] {GROUPS[name].what}", GROUPS[name].cpu_skip, "-", SKIP))
            continue
        started = time.monotonic()
        limit = max(0.0, min(GROUPS[name].limit_s, deadline - started))
        try:
            rows += run_group(name, GROUPS[name], out, limit, forked=not gpu)
        except Interrupted as stop:  # SIGINT (e.g. `timeout -s INT`): the table of what ran, then stop
            rows += stop.rows
            durations[name] = round(time.monotonic() - started, 1)
            finish(out, where, rows, durations, args.budget_s, finished=False)
            return io.INTERRUPTED
        durations[name] = round(time.monotonic() - started, 1)
        write_report(out, where, rows, durations, args.budget_s, finished=False)
    return finish(out, where, rows, durations, args.budget_s, finished=True)


def finish(
    out: Path, where: str, rows: list[Row], durations: dict[str, float], budget_s: float, *, finished: bool
) -> int:
    """Print the table and the summary line, write ``doctor.json``; 1 if a check failed, else 0."""
    print(format_table(rows))
    write_report(out, where, rows, durations, budget_s, finished=finished)
    failed = sum(r.status == FAIL for r in rows)
    total = sum(durations.values())
    print(f"doctor: {len(rows)} checks, {failed} failed, {total:.0f} s; table in {out / 'doctor.json'}")
    return 1 if failed else 0


class Interrupted(Exception):
    """The doctor was interrupted during a group: that group's finished rows and a row saying so."""

    def __init__(self, rows: list[Row]) -> None:
        super().__init__("interrupted")
        self.rows = rows


def write_report(
    out: Path, where: str, rows: list[Row], durations: dict[str, float], budget_s: float, *, finished: bool
) -> None:
    """``doctor.json``: the machine, the rows so far, each group's seconds, and whether all groups ran."""
    io.write_json(
        out / "doctor.json",
        {
            "machine": where,
            "rows": [asdict(r) for r in rows],
            "seconds": durations,
            "budget_s": budget_s,
            "finished": finished,
        },
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sampa doctor", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out", required=True, help="folder for doctor.json and the logs (nothing else is written)"
    )
    p.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S, help="total time limit in seconds")
    p.add_argument("--only", default="", help=f"comma-separated groups, from: {', '.join(GROUPS)}")


def selected_groups(spec: str) -> list[str]:
    names = [n.strip() for n in spec.split(",") if n.strip()] or list(GROUPS)
    for name in names:
        if name not in GROUPS:
            raise ConfigError(f"unknown group {name!r}; choose from: {', '.join(GROUPS)}")
    return names


def has_gpu() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.device_count() > 0


def machine_line() -> str:
    import torch

    if not has_gpu():
        return (
            f"no GPU (torch {torch.__version__} sees no CUDA device): running the CPU subset; GPU-only "
            f"checks are skipped"
        )
    count = torch.cuda.device_count()
    try:
        name = torch.cuda.get_device_name(0)
    except RuntimeError as err:  # a broken device: the groups will say more; the table must still come
        name = f"(name unreadable: {(str(err).strip().splitlines() or [type(err).__name__])[0][:80]})"
    return f"{count} x {name}, torch {torch.__version__}, CUDA {torch.version.cuda}"


def run_group(name: str, group: Group, out: Path, limit_s: float, *, forked: bool = False) -> list[Row]:
    """Run one group in a process of its own session (so a timeout kills its children too): a fresh
    interpreter, or with ``forked`` a fork of a server that has imported torch once (no GPU only: a
    process forked after CUDA's initialisation cannot use CUDA). The rows it finished, then a failed row
    if it timed out or died."""
    if limit_s <= 0:
        return [Row(f"[{name}]", "not run: the time budget is spent", "-", FAIL)]
    result, log = out / "logs" / f"{name}.json", out / "logs" / f"{name}.log"
    result.unlink(missing_ok=True)
    try:
        code = (run_forked if forked else run_fresh)(group.target, result, log, limit_s)
    except KeyboardInterrupt:  # the group's processes are gone (run_fresh/run_forked kill them)
        stopped = Row(f"[{name}]", f"{group.what}: interrupted", "the doctor was stopped (SIGINT)", FAIL)
        rows = finished_rows(result)
        result.unlink(missing_ok=True)
        raise Interrupted([*rows, stopped]) from None
    rows = finished_rows(result)
    result.unlink(missing_ok=True)  # the rows go into doctor.json
    if code is None:
        return [*rows, Row(f"[{name}]", f"{group.what}: timed out", f"limit {limit_s:.0f} s", FAIL)]
    if code == 0 and rows:  # every group reports at least one row
        return rows
    return [*rows, Row(f"[{name}]", f"{group.what}: crashed (exit {code})", last_line(log), FAIL)]


def finished_rows(result: Path) -> list[Row]:
    """The rows a group wrote before it ended (none if it wrote none, or nothing readable)."""
    try:
        return [Row(**row) for row in io.read_json(result)]
    except (OSError, ValueError, TypeError):
        return []


def run_fresh(target: str, result: Path, log: Path, limit_s: float) -> int | None:
    """``python -m sampa.doctor.child``; its exit status, or None after killing it at ``limit_s``."""
    cmd = [sys.executable, "-m", "sampa.doctor.child", target, str(result)]
    with open(log, "w") as handle:
        proc = subprocess.Popen(
            cmd, stdout=handle, stderr=subprocess.STDOUT, env=os.environ | child_env(), start_new_session=True
        )
        try:
            return proc.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            return None
        finally:
            if proc.poll() is None:  # timed out, or the doctor was interrupted
                kill_session(proc.pid, proc.kill)
                proc.wait()


def run_forked(target: str, result: Path, log: Path, limit_s: float) -> int | None:
    """The same in a fork of the forkserver (it imports ``sampa.doctor.child`` and torch once, so a group
    starts in milliseconds instead of seconds)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["sampa.doctor.child"])
    proc = context.Process(target=forked_child, args=(target, str(result), str(log), child_env()))
    started = time.monotonic()
    proc.start()  # the first start waits for the server's imports: part of the limit, as in run_fresh
    try:
        proc.join(max(0.0, limit_s - (time.monotonic() - started)))
        return proc.exitcode
    finally:
        if proc.exitcode is None:
            kill_session(proc.pid, proc.kill)
            proc.join()


def forked_child(target: str, result: str, log: str, env: dict[str, str]) -> None:
    """The forked group: its own session, output to ``log``, then :func:`sampa.doctor.child.main`."""
    from sampa.doctor import child

    os.setsid()
    os.environ.update(env)
    sys.path.insert(0, str(ROOT))
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = sys.stderr = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 (for the process)
    child.main(target, result)


def child_env() -> dict[str, str]:
    return {
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "CUBLAS_WORKSPACE_CONFIG": ":4096:8",  # deterministic cuBLAS (check 1)
        "PYTHONUNBUFFERED": "1",
    }


def kill_session(pid: int, kill: Callable[[], None]) -> None:
    """SIGKILL the session led by ``pid`` (the group and every process it started); ``kill`` the process
    alone if it has not made its session yet."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        kill()


def last_line(path: Path) -> str:
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:160] if lines else "no output"


def format_table(rows: list[Row]) -> str:
    head = ("check", "result", "figure", "status")
    cells = [head, *((r.check, r.result, r.figure, r.status) for r in rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(4)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(cell, widths, strict=True)).rstrip() for cell in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)
