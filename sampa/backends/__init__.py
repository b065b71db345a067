"""Backends: where a run's processes and gradients live.

A backend gives the training engine its device, the :class:`~sampa.optim.contract.Executor` that methods
use for their gradients, and the few collective operations the engine needs (all no-ops on a single
device). ``single`` is the reference; ``pair`` (two processes, torch.distributed) comes on top.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor, nn

from sampa.batch import Inputs
from sampa.optim import Executor


class Backend(Protocol):
    """What the training engine needs from a backend."""

    device: torch.device
    executor: Executor
    rank: int
    world_size: int

    @property
    def is_writer(self) -> bool:
        """Whether this process writes the run's files (exactly one process does)."""
        ...

    def shard(self, inputs: Inputs, targets: Tensor, indices: Tensor) -> tuple[Inputs, Tensor, Tensor]:
        """This process's part of a global batch (data parallel) or the whole batch."""
        ...

    def input_rows(self, size: int) -> slice:
        """The rows of a global batch of ``size`` whose inputs this process's gradients read; a data
        source may leave the other rows' inputs undecoded (filled with NaN). Targets stay whole."""
        ...

    def eval_rows(self, size: int) -> slice:
        """This process's rows of an eval set of ``size``: the processes evaluate disjoint, consecutive,
        near-equal slices and combine per-sample results with :meth:`gather`."""
        ...

    def before_eval(self, model: nn.Module) -> None:
        """Make the evaluated model identical on every process (e.g. BatchNorm running statistics)."""
        ...

    def check_replicas(self, model: nn.Module, epoch: int) -> None:
        """Raise if the replicas' parameters differ after ``epoch`` (1-based, for the message)."""
        ...

    def sum_over_replicas(self, values: list[float]) -> list[float]:
        """Sum per-process totals over data-parallel replicas (unchanged where every process saw the
        whole batch)."""
        ...

    def gather(self, obj: Any) -> list[Any]:
        """Objects from every process, in rank order."""
        ...

    def stats(self) -> dict[str, float]:
        """Backend measurements since the last call (e.g. communication seconds)."""
        ...

    def describe(self) -> dict[str, Any]:
        """Fixed facts about the backend for ``metrics.json`` (e.g. its parallel mode)."""
        ...
