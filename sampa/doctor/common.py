"""What every check group shares: verdict rows, the machine, trajectories of a method on random batches."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sampa.backends.fastpath import FastPath, optimizer_kwargs
from sampa.backends.fused import FusedExecutor
from sampa.losses import make_loss
from sampa.models import build_model
from sampa.optim import build_method

PASS, FAIL, SKIP, INFO = "pass", "fail", "skip", "info"
STATUSES = (PASS, FAIL, SKIP, INFO)
ROOT = Path(__file__).resolve().parents[2]  # a checkout's root where sampa runs from one, else site-packages
#: what the speed, CUDA-tests and workflow checks read from a checkout (an installed package has none of it)
CHECKOUT_FILES = (
    "benchmarks/step_time.py",
    "benchmarks/pair_speedup.py",
    "tests",
    "configs/gpu-smoke.yaml",
    "Snakefile",
)


def not_a_checkout(*paths: str) -> str:
    """'' where ``paths`` (default: all of :data:`CHECKOUT_FILES`) exist under :data:`ROOT`, else one line
    saying which is missing (sampa runs from an installed package, not from a checkout)."""
    missing = [p for p in paths or CHECKOUT_FILES if not (ROOT / p).exists()]
    return f"needs a checkout of sampa-bench: {missing[0]} not found in {ROOT}" if missing else ""


@dataclass(frozen=True)
class Row:
    """One line of the verdict table."""

    check: str
    result: str
    figure: str
    status: str

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}; choose one of: {', '.join(STATUSES)}")


def verdict(ok: bool) -> str:
    return PASS if ok else FAIL


def error_line(err: BaseException) -> str:
    """``Type: first line of the message`` (at most 160 characters), for a failed row's figure."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"[:160]


def guarded(check: str, compute: Callable[[], Row | list[Row]]) -> list[Row]:
    """``compute()``'s row(s), or, if it raises, one failed row ``check`` naming the error (the traceback
    goes to the group's log): one broken check does not stop the group's others."""
    try:
        rows = compute()
    except Exception as err:
        traceback.print_exc()
        return [Row(check, "raised", error_line(err), FAIL)]
    return rows if isinstance(rows, list) else [rows]


@dataclass(frozen=True)
class Machine:
    """Where the checks run: ``cuda`` with ``gpus`` devices, or ``cpu``."""

    kind: str
    gpus: int
    name: str

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", 0) if self.kind == "cuda" else torch.device("cpu")

    @property
    def hopper(self) -> bool:
        """An H100 or H200: the compass's speed targets apply."""
        return self.kind == "cuda" and any(chip in self.name for chip in ("H100", "H200"))


def machine() -> Machine:
    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        return Machine("cuda", torch.cuda.device_count(), torch.cuda.get_device_name(0))
    return Machine("cpu", 0, f"CPU ({os.cpu_count()} cores)")


@contextlib.contextmanager
def deterministic() -> Iterator[list[str]]:
    """Deterministic algorithms, no TF32 and no autotuning; yields the warnings of ops without a deterministic
    implementation (warn_only: they are reported, not fatal)."""
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.allow_tf32,
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
    )
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    notes: list[str] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield notes
    finally:
        notes += sorted({str(w.message).splitlines()[0] for w in caught if "determinis" in str(w.message)})
        torch.use_deterministic_algorithms(saved[0])
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved[1], saved[2]
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[3], saved[4]


# ----------------------------------------------------------------------------------------------
# Trajectories


@dataclass(frozen=True)
class Setup:
    """A short training trajectory on random CIFAR-shaped batches (the same batches on every device)."""

    model: str = "resnet20"
    batch_size: int = 32
    steps: int = 20
    lr: float = 0.002  # small: 20 steps of ResNet-20 amplify round-off (chaotic at lr 0.05)
    optimizer_impl: str = "default"

    def smaller(self, **changes: int | str) -> Setup:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Trajectory:
    start: list[Tensor]  # initial parameters (CPU float64)
    params: list[Tensor]  # final parameters (CPU float64)
    losses: list[float]  # the reporting loss of every step
    first: list[Tensor] = dataclasses.field(default_factory=list)  # parameters after the first step


def trajectory(
    name: str,
    hparams: dict[str, float],
    setup: Setup,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    *,
    fused: bool = False,
    fast: FastPath | None = None,
    backend: Any = None,
) -> Trajectory:
    """Train a fresh ``setup.model`` (seed 0) with method ``name`` for ``setup.steps`` steps; ``backend``: a
    two-device backend (its executor evaluates the jobs, each rank gets its shard of the batch)."""
    fast = fast or FastPath()
    torch.manual_seed(0)
    model = build_model(setup.model, 10).to(device=device, dtype=dtype).train()
    start = _cpu64(model.parameters())
    model = fast.prepare_model(model)
    base = torch.optim.SGD(
        model.parameters(),
        lr=setup.lr,
        momentum=0.9,
        weight_decay=5e-4,
        **optimizer_kwargs(setup.optimizer_impl),
    )
    executor = backend.executor if backend is not None else FusedExecutor() if fused else None
    method = build_method(name, model, make_loss(0.1), base, executor=executor, **hparams)
    step = fast.prepare_method(method)
    gen = torch.Generator().manual_seed(1)
    templates = torch.randn(10, 3, 32, 32, generator=gen, dtype=torch.float64)
    losses = []
    with fast.session():
        for _ in range(setup.steps):
            y = torch.randint(0, 10, (setup.batch_size,), generator=gen)
            x = templates[y] + torch.randn(setup.batch_size, 3, 32, 32, generator=gen, dtype=torch.float64)
            x, y = fast.prepare_batch(x.to(device=device, dtype=dtype)), y.to(device)
            if backend is not None:
                x, y, _ = backend.shard(x, y, torch.arange(setup.batch_size, device=device))
            record = step(x, y)
            losses.append(record.loss.detach())  # stays on the device: no host read per step
            if len(losses) == 1:
                first = _cpu64(model.parameters())
    return Trajectory(start, _cpu64(model.parameters()), [float(loss) for loss in losses], first)


def _cpu64(params) -> list[Tensor]:
    return [p.detach().to("cpu", torch.float64).clone() for p in params]


def relative_distance(got: Trajectory, reference: Trajectory, after_first: bool = False) -> float:
    """||theta_got - theta_ref|| / ||theta_ref - theta_0||: the error relative to the distance travelled,
    after the last step (or the first: before round-off is amplified)."""
    a, b = (got.first, reference.first) if after_first else (got.params, reference.params)
    error = torch.stack([(x - y).pow(2).sum() for x, y in zip(a, b, strict=True)])
    moved = torch.stack([(x - y).pow(2).sum() for x, y in zip(b, reference.start, strict=True)])
    return float(error.sum().sqrt() / moved.sum().sqrt().clamp_min(1e-30))


def loss_band(got: Trajectory, reference: Trajectory) -> float:
    """The largest relative difference of the step losses, max_t |L_got(t) - L_ref(t)| / |L_ref(t)|."""
    return max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(got.losses, reference.losses, strict=True))
