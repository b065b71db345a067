"""Entry point of one rank started by :mod:`sampa.launch`: ``python -m sampa.rank RANK LAUNCHER_PID
ERROR_FILE SPEC_JSON``.

A rank must never outlive its launcher, at any moment of its start-up. So the first statements, before
torch (or anything heavy) is imported, ask the kernel to SIGKILL this process when its parent dies
(``PR_SET_PDEATHSIG``), then check that the parent is still the launcher: if the launcher died before
the signal was armed, this process has already been re-parented and exits at once.

On failure the rank writes one line (its error) to ERROR_FILE and exits with status 1; the launcher
puts that line into its own one-line error.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

from sampa.rundir import one_line  # light (no torch): the error as the launcher reports it

PR_SET_PDEATHSIG = 1
ORPHANED = 3  # exit status of a rank whose launcher was gone before the parent-death signal was armed


def die_with_parent(launcher_pid: int) -> None:
    """Arm SIGKILL-on-parent-death (Linux), then exit if the launcher is no longer the parent."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != launcher_pid:
        os._exit(ORPHANED)


def main(argv: list[str]) -> int:
    rank, launcher_pid, error_file, spec = int(argv[0]), int(argv[1]), argv[2], argv[3]
    die_with_parent(launcher_pid)
    try:
        import json

        from sampa.launch import spawned_rank  # imports torch: only now

        spawned_rank(rank, json.loads(spec))
    except BaseException as err:  # every failure becomes the launcher's one line
        with open(error_file, "w", encoding="utf-8") as handle:
            handle.write(one_line(err))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
