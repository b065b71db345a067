"""Fixtures shared by the test modules."""

from __future__ import annotations

import signal

import pytest
import torch


@pytest.fixture
def float64():
    """Exact comparisons: the test runs in float64 (on one CPU thread, as every test:
    :func:`one_torch_thread`), then the default dtype is restored. Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("float64")``."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Every test runs torch on one intra-op thread, as the runs of the suite's subprocesses do
    (``--threads 1``): its tensors are tiny and the machine's cores are shared by the tests' own
    processes, so more threads only contend (the README loop's test: 19.5 s with 2 threads on a loaded
    2-core machine, 2.5 s with 1). The count a test sets itself (``threads`` of a run) is undone after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True, scope="session")
def ctrl_c_as_in_a_terminal():
    """The Ctrl-C tests (``SAMPA_KILL_SIGNAL=INT``) need SIGINT to raise ``KeyboardInterrupt``, here and in
    the runs they start. A runner started in the background by a shell without job control ignores
    SIGINT, and an ignored signal stays ignored in every child: there the interrupted runs would finish
    instead. Python's own handler is put back for the session (children then start with the default)."""
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)
