r"""The two-device backend: two processes (ranks) joined by torch.distributed, one device each.

The mode comes from the method (``Method.parallel_jobs``), never from its name:

* **Task parallel**, for methods whose step evaluates independent gradient jobs at once (SAMPa and its
  combinations). Both ranks hold the whole batch and identical state, and each job runs on one rank.
  For SAMPa this is the paper's Algorithm 2:
      rank 0:  g~_t    = \nabla f(x~_t; B_t)       rank 1:  g_{t+1} = \nabla f(y_{t+1}; B_{t+1})
      both:    exchange g~_t and g_{t+1}, then G_t = (1 - \lambda) g~_t + \lambda g_{t+1},
               x_{t+1} = BaseOpt(x_t, G_t)          (the same bits on both ranks)
  Both gradients are exchanged whole, so SAMPa-0 works (the official code divides by \lambda).
  The job that may update BatchNorm statistics (``update_bn``) always runs on rank 1, the
  *statistics rank*; every other job goes to the less loaded rank. A job's result (gradient, loss,
  correct count, per-sample losses) is one flat buffer, broadcast from its owner as soon as it is
  ready. Receives are posted before a rank computes its own job, so transfers overlap computation and
  the traffic per step is one all-gather of the two gradients. (``GradJob.local`` means nothing here:
  no job is averaged.)
* **Data parallel**, for every other method. Each rank takes its half of the global batch
  (``shard``; an odd batch gives rank 0 one more sample). Every job's gradient is averaged over the
  ranks, weighted by shard size: an all-reduce of (n_r g_r, n_r), started as soon as the job is done.
  Jobs marked ``GradJob.local`` (e.g. mSAM's per-shard ascent) are not averaged. Loss, correct count
  and per-sample losses stay per rank, as in DDP; the engine sums the epoch totals over the ranks.
  So ``sgd`` and ``sam`` on two ranks are full-batch SGD and SAM up to round-off. The exception is
  BatchNorm: each half is normalised with its own batch statistics, as in DDP without SyncBatchNorm.
  ``msam`` with micro-batch size = shard size is the paper's "mSAM (m=2)" (App. B.5).

BatchNorm running statistics are made identical on both ranks before every evaluation and checkpoint
(``before_eval``). In task mode they are broadcast from rank 1. Its passes are exactly the passes of
the single-device policy (SAMPa: the extrapolated pass at y_{t+1}), so the evaluated model equals the
single-device one. In data mode the floating-point buffers are averaged over the ranks. For equal
shards the averaged running mean equals the full-batch running mean exactly, because the update is
linear. The running variance becomes the mean of the shards' variances, which misses the spread
between the shard means.

Replica check (``check_replicas``, every epoch): for each parameter, the sum of its elements' bit
patterns (int64, exact, NaN-safe) is compared across ranks. Any difference stops the run.

Measurements per epoch (``stats``):
* ``compute_s``: time in gradient evaluations on this rank.
* ``comm_s``: time blocked at exchanges. This includes the transfer and any wait for the other
  rank's job.
* ``comm_share``: comm / (comm + compute).
On CUDA the intervals are timed with CUDA events, so the step never waits for the host.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from sampa.batch import Inputs, split
from sampa.optim import GradJob, GradResult, Method
from sampa.optim.evaluation import evaluate_job
from sampa.optim.flat import FlatLayout, FlatVector
from sampa.optim.tensors import TensorList

TASK, DATA = "task", "data"
MODES = (TASK, DATA)
WORLD_SIZE = 2
STATS_RANK = 1  # task mode: the rank that runs the jobs allowed to update BatchNorm statistics


class ReplicaMismatchError(RuntimeError):
    """The two replicas' parameters differ (message: one line)."""


def mode_for(method_cls: type[Method]) -> str:
    """``task`` for methods with independent gradient jobs per step, ``data`` for all others."""
    return TASK if method_cls.parallel_jobs >= 2 else DATA


def assign_owners(jobs: Sequence[GradJob], world_size: int = WORLD_SIZE) -> list[int]:
    """The rank that evaluates each job (task mode): BatchNorm-updating jobs on the statistics rank,
    the others on the less loaded rank (ties: the lower rank)."""
    owners = [STATS_RANK if job.update_bn else -1 for job in jobs]
    load = [owners.count(rank) for rank in range(world_size)]
    for i, owner in enumerate(owners):
        if owner < 0:
            rank = min(range(world_size), key=load.__getitem__)
            owners[i] = rank
            load[rank] += 1
    return owners


# ----------------------------------------------------------------------------------------------
# Executor


class PairExecutor:
    """Evaluates a method's gradient jobs over the two ranks (see the module docstring)."""

    def __init__(self, rank: int, device: torch.device, mode: str) -> None:
        self.rank, self.device, self.mode = rank, device, mode
        self.compute = _Intervals(device)
        self.comm = _Intervals(device)
        self.exchanges = 0
        self._per_sample: bool | None = None  # does the loss give per-sample values? (read once)

    def depth(self, jobs: Sequence[GradJob]) -> int:
        return -(-len(jobs) // WORLD_SIZE) if self.mode == TASK else len(jobs)

    def evaluate(self, method: Method, jobs: Sequence[GradJob]) -> list[GradResult]:
        if self.mode == TASK:
            return self._evaluate_task(method, jobs)
        return self._evaluate_data(method, jobs)

    def take_stats(self) -> dict[str, float]:
        """Seconds of compute and communication since the last call, then reset."""
        comm, compute = self.comm.take(), self.compute.take()
        busy = comm + compute
        stats = {
            "comm_s": comm,
            "compute_s": compute,
            "comm_share": comm / busy if busy else 0.0,
            "exchanges": float(self.exchanges),
        }
        self.exchanges = 0
        return stats

    # -- task parallel ------------------------------------------------------------------------

    def _evaluate_task(self, method: Method, jobs: Sequence[GradJob]) -> list[GradResult]:
        buffers, works = [], []
        for job, owner in zip(jobs, assign_owners(jobs), strict=True):
            if owner == self.rank:
                buffer = _pack(method, self._compute(method, job), job)
            else:
                size = _grad_size(method) * job.num_backward + 3 + job.targets.shape[0]
                buffer = torch.empty(size, dtype=_grad_dtype(method), device=self.device)
            works.append(dist.broadcast(buffer, src=owner, async_op=True))  # starts now
            buffers.append(buffer)
        self._wait(works)
        return [self._unpack(method, job, buffer) for job, buffer in zip(jobs, buffers, strict=True)]

    def _unpack(self, method: Method, job: GradJob, buffer: Tensor) -> GradResult:
        """Inverse of :func:`_pack`. The owner unpacks its own buffer too: both ranks get the same bits."""
        grads = _split_gradients(buffer, method, job.num_backward)
        size = _grad_size(method) * job.num_backward
        if self._per_sample is None:
            self._per_sample = bool(buffer[size + 2])  # one host read per run
        return GradResult(
            grads=grads[0],
            extra_grads=grads[1:],
            loss=buffer[size],
            correct=buffer[size + 1].long(),
            count=job.targets.shape[0],
            per_sample_loss=buffer[size + 3 :] if self._per_sample else None,
        )

    # -- data parallel ------------------------------------------------------------------------

    def _evaluate_data(self, method: Method, jobs: Sequence[GradJob]) -> list[GradResult]:
        results, pending = [], []
        for job in jobs:
            result = self._compute(method, job)
            if not job.local:  # sum of n_r g_r and of n_r over the ranks, started right away
                one = torch.ones(1, dtype=_grad_dtype(method), device=self.device)
                buffer = torch.cat([*_gradient_pieces(method, result), one]).mul_(result.count)
                pending.append((len(results), buffer, dist.all_reduce(buffer, async_op=True)))
            results.append(result)
        self._wait([work for _, _, work in pending])
        for index, buffer, _ in pending:
            k = jobs[index].num_backward
            mean = buffer[:-1].div_(buffer[-1])  # (n_0 g_0 + n_1 g_1) / (n_0 + n_1)
            grads = _split_gradients(mean, method, k)
            results[index] = dataclasses.replace(results[index], grads=grads[0], extra_grads=grads[1:])
        return results

    # -- shared -------------------------------------------------------------------------------

    def _compute(self, method: Method, job: GradJob) -> GradResult:
        if job.targets.shape[0] == 0:  # an empty shard (one-sample batch) contributes nothing
            zero = torch.zeros((), device=self.device)
            grads = [[torch.zeros_like(p) for p in method.params] for _ in range(job.num_backward)]
            return GradResult(grads[0], zero, zero.long(), 0, extra_grads=grads[1:])
        with self.compute.interval():
            return evaluate_job(method, job)

    def _wait(self, works: list[Any]) -> None:
        with self.comm.interval():
            for work in works:
                work.wait()
        self.exchanges += len(works)


def _grad_size(method: Method) -> int:
    return sum(p.numel() for p in method.params)


def _grad_dtype(method: Method) -> torch.dtype:
    dtypes = {p.dtype for p in method.params}
    if len(dtypes) != 1:
        raise ValueError(f"the two-device backend needs one parameter dtype, got {sorted(map(str, dtypes))}")
    return dtypes.pop()


def _gradient_pieces(method: Method, result: GradResult) -> list[Tensor]:
    """The job's gradient, then the gradients of its extra losses (``GradJob.losses``), as 1-d pieces in the
    parameters' memory order (``Method.param_layout``): a flat gradient is one piece."""
    layout = method.param_layout()
    return [
        piece
        for grads in (result.grads, *result.extra_grads)
        for piece in ([grads.flat] if isinstance(grads, FlatVector) else layout.pieces(grads))
    ]


def _split_gradients(flat: Tensor, method: Method, count: int) -> list[TensorList]:
    """``count`` parameter-aligned gradients from the front of ``flat``: views with the parameters' strides
    (FlatVectors with flat buffers)."""
    size, layout = _grad_size(method), method.param_layout()
    pieces = [flat[k * size : (k + 1) * size] for k in range(count)]
    if method.flat is not None:
        return [FlatVector(piece, layout) for piece in pieces]
    return [layout.views(piece) for piece in pieces]


def _pack(method: Method, result: GradResult, job: GradJob) -> Tensor:
    """[gradients (one per loss) | loss | correct | has per-sample losses | per-sample losses or NaN]."""
    count = job.targets.shape[0]
    per_sample = result.per_sample_loss
    has_per_sample = per_sample is not None and per_sample.numel() == count
    gradients = _gradient_pieces(method, result)
    dtype, device = gradients[0].dtype, gradients[0].device
    scalars = torch.stack([result.loss.to(dtype), result.correct.to(dtype)])
    flag = torch.full((1,), float(has_per_sample), dtype=dtype, device=device)
    tail = (
        per_sample.to(dtype)
        if has_per_sample
        else torch.full((count,), torch.nan, dtype=dtype, device=device)
    )
    return torch.cat([*gradients, scalars, flag, tail])


class _Intervals:
    """Sum of timed intervals: CUDA events on a GPU (no host synchronisation), a wall clock on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.seconds = 0.0
        self._events: list[tuple[Any, Any]] = []

    @contextlib.contextmanager
    def interval(self) -> Iterator[None]:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self._events.append((start, end))
            return
        begin = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - begin

    def take(self) -> float:
        """Seconds since the last call (waits for the last recorded CUDA event), then reset."""
        if self._events:
            self._events[-1][1].synchronize()
        total = self.seconds + sum(start.elapsed_time(end) for start, end in self._events) / 1e3
        self.seconds, self._events = 0.0, []
        return total


# ----------------------------------------------------------------------------------------------
# Backend


class PairBackend:
    """One of the two ranks; the process group must be initialised (see ``sampa.launch``)."""

    world_size = WORLD_SIZE

    def __init__(self, rank: int, device: torch.device, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown pair mode {mode!r}; choose one of: {', '.join(MODES)}")
        self.rank, self.device, self.mode = rank, device, mode
        self.executor = PairExecutor(rank, device, mode)

    @property
    def is_writer(self) -> bool:
        return self.rank == 0

    def shard(self, inputs: Inputs, targets: Tensor, indices: Tensor) -> tuple[Inputs, Tensor, Tensor]:
        if self.mode == TASK:
            return inputs, targets, indices
        targets, indices = (t.tensor_split(WORLD_SIZE)[self.rank] for t in (targets, indices))
        return split(inputs, WORLD_SIZE)[self.rank], targets, indices

    def before_eval(self, model: nn.Module) -> None:
        """BatchNorm statistics: rank 1's (task mode) or the ranks' average (data mode) on both ranks."""
        for group in _by_dtype(list(model.buffers())):
            layout = FlatLayout(group)
            flat = layout.flatten(group)
            if self.mode == DATA and flat.is_floating_point():
                dist.all_reduce(flat)
                flat.div_(WORLD_SIZE)
            else:
                dist.broadcast(flat, src=STATS_RANK if self.mode == TASK else 0)
            torch._foreach_copy_(group, layout.views(flat))

    def check_replicas(self, model: nn.Module, epoch: int) -> None:
        names = [name for name, _ in model.named_parameters()]
        mine = parameter_checksums(model)
        both = torch.empty(WORLD_SIZE * mine.numel(), dtype=mine.dtype, device=mine.device)
        dist.all_gather_into_tensor(both, mine)
        first, second = both.view(WORLD_SIZE, -1)
        differ = (first != second).nonzero().flatten().tolist()
        if differ:
            raise ReplicaMismatchError(
                f"the two replicas differ after epoch {epoch} in {len(differ)} parameter tensor(s), "
                f"first {names[differ[0]]!r}; the run is stopped"
            )

    def sum_over_replicas(self, values: list[float]) -> list[float]:
        if self.mode == TASK:  # both ranks saw the whole batch
            return values
        totals = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(totals)
        return totals.tolist()

    def gather(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * WORLD_SIZE
        dist.all_gather_object(out, obj)
        return out

    def stats(self) -> dict[str, float]:
        return self.executor.take_stats()

    def describe(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "dist_backend": str(dist.get_backend()),
            "batchnorm_statistics": "rank 1 (the single-device passes)"
            if self.mode == TASK
            else "average over ranks of per-shard statistics",
        }


def parameter_checksums(model: nn.Module) -> Tensor:
    """One int64 per parameter: the sum of its elements' bit patterns (exact; NaN-safe)."""
    sums = []
    for p in model.parameters():
        bits = p.detach().reshape(-1).view(_INT_OF_SIZE[p.element_size()])
        sums.append(bits.sum(dtype=torch.int64))
    return torch.stack(sums)


_INT_OF_SIZE = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _by_dtype(tensors: list[Tensor]) -> list[list[Tensor]]:
    groups: dict[torch.dtype, list[Tensor]] = {}
    for t in tensors:
        groups.setdefault(t.dtype, []).append(t)
    return list(groups.values())
