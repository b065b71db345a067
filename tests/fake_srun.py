"""A stand-in for ``srun`` on one machine (tests): ``python fake_srun.py --ntasks=N [--flags] COMMAND...``.

Starts N copies of COMMAND with the environment srun gives each task of a step (``SLURM_PROCID``,
``SLURM_NTASKS``, ``SLURM_STEP_NUM_TASKS``, ``SLURM_LOCALID``, ``SLURM_JOB_ID``,
``SLURM_LAUNCH_NODE_IPADDR``), writes their pids (one a line, in task order) to ``$FAKE_SRUN_PIDS``
if set, waits for all of them and exits with the first non-zero status. Other flags are ignored.
"""

from __future__ import annotations

import os
import subprocess
import sys


def main(argv: list[str]) -> int:
    start = next(i for i, arg in enumerate(argv) if not arg.startswith("--"))
    flags, command = argv[:start], argv[start:]
    tasks = int(next(f.split("=", 1)[1] for f in flags if f.startswith("--ntasks=")))
    base = {**os.environ, "SLURM_JOB_ID": "4242", "SLURM_LAUNCH_NODE_IPADDR": "127.0.0.1"}
    procs = []
    for rank in range(tasks):
        env = {"SLURM_PROCID": str(rank), "SLURM_NTASKS": str(tasks), "SLURM_STEP_NUM_TASKS": str(tasks)}
        procs.append(subprocess.Popen(command, env={**base, **env, "SLURM_LOCALID": str(rank)}))
    if os.environ.get("FAKE_SRUN_PIDS"):
        with open(os.environ["FAKE_SRUN_PIDS"], "w") as handle:
            handle.write("".join(f"{p.pid}\n" for p in procs))
    codes = [p.wait() for p in procs]
    return next((abs(code) or 1 for code in codes if code), 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
