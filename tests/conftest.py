"""Fixtures shared by the test modules."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def float64():
    """Exact comparisons: the test runs in float64 on one CPU thread (the tensors are tiny; intra-op
    threads only add contention), then the defaults are restored. Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("float64")``."""
    previous, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    yield
    torch.set_default_dtype(previous)
    torch.set_num_threads(threads)
