"""The single-device backend: one process, gradients evaluated one after the other (the reference)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from sampa.batch import Inputs
from sampa.optim import Executor, SequentialExecutor


class SingleDevice:
    """One process on one device."""

    rank = 0
    world_size = 1

    def __init__(self, device: torch.device, executor: Executor | None = None) -> None:
        self.device = device
        self.executor: Executor = executor if executor is not None else SequentialExecutor()

    @property
    def is_writer(self) -> bool:
        return True

    def shard(self, inputs: Inputs, targets: Tensor, indices: Tensor) -> tuple[Inputs, Tensor, Tensor]:
        return inputs, targets, indices

    def input_rows(self, size: int) -> slice:
        return slice(0, size)

    def eval_rows(self, size: int) -> slice:
        return slice(0, size)

    def before_eval(self, model: nn.Module) -> None:
        return None

    def check_replicas(self, model: nn.Module, epoch: int) -> None:
        return None

    def sum_over_replicas(self, values: list[float]) -> list[float]:
        return values

    def gather(self, obj: Any) -> list[Any]:
        return [obj]

    def stats(self) -> dict[str, float]:
        return {}

    def describe(self) -> dict[str, Any]:
        return {}


def resolve_device(name: str) -> torch.device:
    """``auto`` -> the first CUDA device if there is one, else the CPU; one-line error if unavailable."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {name!r} requested but CUDA is not available; use --device cpu")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise RuntimeError(
                f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
        return torch.device("cuda", index)
    return device
