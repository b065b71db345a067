"""Fixtures shared by the test modules."""

from __future__ import annotations

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
