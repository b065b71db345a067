"""Fault injection for the crash tests: SIGKILL this process at a named point of a run.

``SAMPA_KILL_AT=<point>`` names one point; the process kills itself there without any cleanup, as a
power cut or ``kill -9`` would. Points (``N`` is an epoch, 1-based):

* ``epoch<N>:step``        after the first training step of epoch N
* ``epoch<N>:best``        after ``best.pt`` of epoch N is written
* ``epoch<N>:log``         after ``log.jsonl`` of epoch N is written
* ``epoch<N>:checkpoint``  after ``checkpoint.pt`` of epoch N is written
* ``final:eval``           during the final evaluation
* ``final:log``            after the final ``log.jsonl`` is written
* ``final:metrics``        after ``metrics.json`` is written (the checkpoint is still there)
* ``write:<file>``         inside an atomic write of ``<file>``: its temporary file is complete,
                           not yet renamed
* ``data:<dataset>``       inside the preparation of ``<dataset>`` (CIFAR's extraction or download,
                           the toy ImageFolder's generation): its temporary folder is complete, not
                           yet renamed into place

Unset (always, outside tests), every point is a no-op. ``SAMPA_KILL_SIGNAL=INT`` sends SIGINT instead
of SIGKILL, as Ctrl-C does (Python raises ``KeyboardInterrupt`` there).
"""

from __future__ import annotations

import os
import signal

ENV_VAR = "SAMPA_KILL_AT"
SIGNAL_VAR = "SAMPA_KILL_SIGNAL"  # the signal's name without SIG (default KILL)


def kill_point(point: str) -> None:
    """SIGKILL (or ``$SAMPA_KILL_SIGNAL``) this process if ``$SAMPA_KILL_AT`` names ``point``."""
    if os.environ.get(ENV_VAR) == point:
        os.kill(os.getpid(), signal.Signals["SIG" + os.environ.get(SIGNAL_VAR, "KILL")])
