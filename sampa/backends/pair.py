r"""The multi-device backend: 2k processes (ranks, k >= 1) joined by torch.distributed, one device each.

The mode comes from the method (``Method.parallel_jobs``), never from its name:

* **Task parallel**, for methods whose step evaluates independent gradient jobs at once (SAMPa and its
  combinations). The ranks form two *groups* of k: group g holds ranks [g k, (g + 1) k); a rank's
  *local index* is rank mod k. Every rank holds the whole batch and identical state, and each job runs
  on one group. For SAMPa this is the paper's Algorithm 2:
      group 0: g~_t    = \nabla f(x~_t; B_t)       group 1: g_{t+1} = \nabla f(y_{t+1}; B_{t+1})
      all:     exchange g~_t and g_{t+1}, then G_t = (1 - \lambda) g~_t + \lambda g_{t+1},
               x_{t+1} = BaseOpt(x_t, G_t)          (the same bits on every rank)
  Inside a group each rank evaluates its 1/k of the job's samples (``take_shard``: consecutive,
  near-equal parts). One all-reduce *inside the group* sums (n_i g_i, n_i loss_i, correct_i, per-sample
  losses at their positions); dividing by n gives the job's full-batch result. Then one *cross-group
  exchange*: each rank broadcasts its group's result to the rank with the same local index in the other
  group (a process group of two). With k = 1 there is no in-group step, and the exchange is the old
  two-rank broadcast (bit-identical to one-device SAMPa on CPU). Both gradients are exchanged whole, so
  SAMPa-0 works (the official code divides by \lambda). The job that may update BatchNorm statistics
  (``update_bn``) always runs on group 1, the *statistics group*; every other job goes to the less
  loaded group. Receives are posted before a rank computes its own job, so transfers overlap
  computation. (``GradJob.local`` means nothing here: no job is averaged across groups.) The method
  sees every job's full-batch result, so methods do not change with k (mSAM+SAMPa's micro-batches are
  micro-batches of the whole batch, each sharded over the group).
* **Data parallel**, for every other method, on all 2k ranks: each rank takes its 1/(2k) of the global
  batch (``shard``; the first ranks get one more sample when it does not divide). Every job's gradient is
  averaged over the ranks, weighted by shard size: an all-reduce of (n_r g_r, n_r), started as soon as
  the job is done. Jobs marked ``GradJob.local`` (e.g. mSAM's per-shard ascent) are not averaged. Loss,
  correct count and per-sample losses stay per rank, as in DDP; the engine sums the epoch totals over
  the ranks. So ``sgd`` and ``sam`` on 2k ranks are full-batch SGD and SAM up to round-off. ``msam``
  with micro-batch size = shard size is the paper's "mSAM (m=2)" (App. B.5) on two ranks.

Input rows (``input_rows``): the rows of a global batch a rank's gradients read, so a data source
may decode only those (ImageNet): data mode its shard; task mode part i of k when every job is a whole
batch (``Method.whole_batch_jobs``; a batch is group 1's B_{t+1}, then group 0's B_t), else all rows.

Evaluation (``eval_rows``): in both modes the 2k ranks evaluate consecutive, near-equal slices of the
eval set (the first ranks one row more when it does not divide), with the BatchNorm statistics made
identical first (below); the engine gathers the per-sample results, so every rank computes the same
metrics, equal to one device's (see ``sampa.train``).

BatchNorm policy. The forward pass normalises each rank's samples with their own batch statistics, as
DDP without SyncBatchNorm: with k = 1 in task mode that is the whole batch (the one-device model); with
k > 1, or in data mode, it is the rank's shard. Running statistics are made identical on every rank
before every evaluation and checkpoint (``before_eval``). Task mode: only group 1 runs passes that
update them (SAMPa: the extrapolated pass at y_{t+1}, the one-device policy); their floating-point
buffers are averaged over group 1 (k > 1), then broadcast from rank k to all. Data mode: the
floating-point buffers are averaged over all ranks. For equal shards the averaged running mean equals the
full-batch running mean exactly, because the update is linear; the running variance becomes the mean of
the shards' variances, which misses the spread between the shard means.

Dropout: a rank evaluates a job (or its part of one) under the job's own mask seed
(``sampa.optim.evaluation.mask_stream``: job number and part), so k = 1 draws the masks one device draws
and the parts of a job (k > 1, data mode) draw different ones.

Replica check (``check_replicas``, every epoch): for each parameter, the sum of its elements' bit
patterns (int64, exact, NaN-safe) is compared across all ranks. Any difference stops the run.

Measurements per epoch (``stats``):
* ``compute_s``: time in gradient evaluations on this rank.
* ``comm_group_s``: time blocked at all-reduces inside a group (data mode: over all ranks).
* ``comm_cross_s``: time blocked at the cross-group exchange. This includes the transfer and any wait
  for the other group's job.
* ``comm_s`` = both; ``comm_share``: comm / (comm + compute).
* ``comm_group_mib`` / ``comm_cross_mib``: payload this rank put into each kind of collective.
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
GROUPS = 2  # task mode: two groups of k ranks, one per independent job
STATS_GROUP = 1  # task mode: the group that runs the jobs allowed to update BatchNorm statistics
STATS_RANK = 1  # the statistics group's first rank when k = 1


class ReplicaMismatchError(RuntimeError):
    """The replicas' parameters differ (message: one line)."""

    plain_message = True  # a launcher reports it by its message (sampa.rundir.one_line)


def mode_for(method_cls: type[Method]) -> str:
    """``task`` for methods with independent gradient jobs per step, ``data`` for all others."""
    return TASK if method_cls.parallel_jobs >= 2 else DATA


def assign_owners(jobs: Sequence[GradJob], groups: int = GROUPS) -> list[int]:
    """The group that evaluates each job (task mode): BatchNorm-updating jobs on the statistics group,
    the others on the less loaded group (ties: the lower group)."""
    owners = [STATS_GROUP if job.update_bn else -1 for job in jobs]
    load = [owners.count(group) for group in range(groups)]
    for i, owner in enumerate(owners):
        if owner < 0:
            group = min(range(groups), key=load.__getitem__)
            owners[i] = group
            load[group] += 1
    return owners


def take_shard(batch: Inputs, parts: int, index: int) -> Inputs:
    """Part ``index`` of ``parts`` consecutive, near-equal parts of a batch (a tensor or a mapping of
    tensors; the first parts are one larger when the size does not divide)."""
    return split(batch, parts)[index]


def shard_start(size: int, parts: int, index: int) -> int:
    """Where part ``index`` of :func:`take_shard` starts in a batch of ``size``."""
    base, extra = divmod(size, parts)
    return index * base + min(index, extra)


@dataclasses.dataclass(frozen=True)
class Topology:
    """Where a rank sits among ``world_size`` ranks: task mode has two groups of k = world_size / 2
    consecutive ranks; data mode one group of all ranks."""

    rank: int
    world_size: int
    mode: str

    @property
    def group_size(self) -> int:
        return self.world_size // GROUPS if self.mode == TASK else self.world_size

    @property
    def group(self) -> int:
        return self.rank // self.group_size

    @property
    def local_index(self) -> int:
        return self.rank % self.group_size

    def member(self, group: int) -> int:
        """The rank of ``group`` with this rank's local index (its partner in the cross-group exchange)."""
        return group * self.group_size + self.local_index


@dataclasses.dataclass
class ProcessGroups:
    """The process groups of a task-mode topology with k > 1 (None: the default group of all ranks)."""

    inner: Any = None  # this rank's group of k
    cross: Any = None  # this rank and its partner in the other group

    @classmethod
    def create(cls, topology: Topology) -> ProcessGroups:
        """Every rank creates every group, in the same order (torch.distributed requires it)."""
        k = topology.group_size
        if topology.mode != TASK or k == 1:
            return cls()
        inner = [dist.new_group(list(range(g * k, (g + 1) * k))) for g in range(GROUPS)]
        cross = [dist.new_group([g * k + i for g in range(GROUPS)]) for i in range(k)]
        return cls(inner[topology.group], cross[topology.local_index])


# ----------------------------------------------------------------------------------------------
# Executor


class PairExecutor:
    """Evaluates a method's gradient jobs over the ranks (see the module docstring)."""

    def __init__(self, rank: int, device: torch.device, mode: str, world_size: int | None = None) -> None:
        world = dist.get_world_size() if world_size is None else world_size
        if mode == TASK and (world < GROUPS or world % GROUPS):
            raise ValueError(f"task mode needs an even number of ranks (got {world})")
        self.rank, self.device, self.mode = rank, device, mode
        self.topology = Topology(rank, world, mode)
        self.groups = ProcessGroups.create(self.topology)
        self.compute = _Intervals(device)
        self.comm_group = _Intervals(device)
        self.comm_cross = _Intervals(device)
        self.exchanges = 0
        self.group_bytes = self.cross_bytes = 0
        self._per_sample: bool | None = None  # does the loss give per-sample values? (read once)

    def depth(self, jobs: Sequence[GradJob]) -> int:
        return -(-len(jobs) // GROUPS) if self.mode == TASK else len(jobs)

    def evaluate(self, method: Method, jobs: Sequence[GradJob]) -> list[GradResult]:
        if self.mode == TASK:
            return self._evaluate_task(method, jobs)
        return self._evaluate_data(method, jobs)

    def take_stats(self) -> dict[str, float]:
        """Seconds of compute and communication, and MiB sent, since the last call, then reset."""
        group, cross, compute = self.comm_group.take(), self.comm_cross.take(), self.compute.take()
        comm = group + cross
        busy = comm + compute
        stats = {
            "comm_s": comm,
            "comm_group_s": group,
            "comm_cross_s": cross,
            "compute_s": compute,
            "comm_share": comm / busy if busy else 0.0,
            "exchanges": float(self.exchanges),
            "comm_group_mib": self.group_bytes / 2**20,
            "comm_cross_mib": self.cross_bytes / 2**20,
        }
        self.exchanges = self.group_bytes = self.cross_bytes = 0
        return stats

    def share_rows(self, indices: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
        """Per-sample rows (e.g. SAF's recorded outputs) of every rank's shard, with their sample indices,
        so per-sample tables stay identical on every replica (data mode). In task mode every rank holds the
        whole batch already. Costs one host read of the shard sizes."""
        world = self.topology.world_size
        if self.mode == TASK or world == 1:
            return indices, rows
        count = torch.tensor([indices.numel()], device=rows.device)
        counts = [torch.empty_like(count) for _ in range(world)]
        dist.all_gather(counts, count)
        sizes = [int(c) for c in counts]
        padded_indices = indices.new_zeros(max(sizes))
        padded_rows = rows.new_zeros((max(sizes), *rows.shape[1:]))
        padded_indices[: indices.numel()], padded_rows[: rows.shape[0]] = indices, rows
        all_indices = [torch.empty_like(padded_indices) for _ in range(world)]
        all_rows = [torch.empty_like(padded_rows) for _ in range(world)]
        dist.all_gather(all_indices, padded_indices)
        dist.all_gather(all_rows, padded_rows)
        return (
            torch.cat([part[:n] for part, n in zip(all_indices, sizes, strict=True)]),
            torch.cat([part[:n] for part, n in zip(all_rows, sizes, strict=True)]),
        )

    # -- task parallel ------------------------------------------------------------------------

    def _evaluate_task(self, method: Method, jobs: Sequence[GradJob]) -> list[GradResult]:
        topology, buffers, works = self.topology, [], []
        for index, (job, owner) in enumerate(zip(jobs, assign_owners(jobs), strict=True)):
            if owner == topology.group:
                buffer = self._group_result(method, job, index)
            else:
                size = _grad_size(method) * job.num_backward + 3 + job.targets.shape[0]
                buffer = torch.empty(size, dtype=_grad_dtype(method), device=self.device)
            src = topology.member(owner)  # starts now
            works.append(dist.broadcast(buffer, src=src, group=self.groups.cross, async_op=True))
            self.cross_bytes += _nbytes(buffer) if owner == topology.group else 0
            buffers.append(buffer)
        self._wait(works, self.comm_cross)
        return [self._unpack(method, job, buffer) for job, buffer in zip(jobs, buffers, strict=True)]

    def _group_result(self, method: Method, job: GradJob, index: int) -> Tensor:
        """The job's full-batch result packed by :func:`_pack`: this rank's own (k = 1), or the group's
        all-reduced shards (k > 1). ``index``: the job's place in its call (keys its dropout masks)."""
        k, i = self.topology.group_size, self.topology.local_index
        if k == 1:
            return _pack(method, self._compute(method, job, (index, 0)), job)
        count = job.targets.shape[0]
        shard = dataclasses.replace(
            job, inputs=take_shard(job.inputs, k, i), targets=take_shard(job.targets, k, i)
        )
        result = self._compute(method, shard, (index, i + 1))
        buffer = _pack_shard(method, result, shard, count, shard_start(count, k, i), first=i == 0)
        work = dist.all_reduce(buffer, group=self.groups.inner, async_op=True)
        self.group_bytes += _nbytes(buffer)
        self._wait([work], self.comm_group)
        if count:
            buffer[: _grad_size(method) * job.num_backward + 1].div_(count)  # sum_i n_i x_i / n
        return buffer

    def _unpack(self, method: Method, job: GradJob, buffer: Tensor) -> GradResult:
        """Inverse of :func:`_pack`. The owner unpacks its own buffer too: every rank gets the same bits."""
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
        for index, job in enumerate(jobs):
            result = self._compute(method, job, (index, self.rank + 1))
            if not job.local:  # sum of n_r g_r and of n_r over the ranks, started right away
                one = torch.ones(1, dtype=_grad_dtype(method), device=self.device)
                buffer = torch.cat([*_gradient_pieces(method, result), one]).mul_(result.count)
                pending.append((len(results), buffer, dist.all_reduce(buffer, async_op=True)))
                self.group_bytes += _nbytes(buffer)
            results.append(result)
        self._wait([work for _, _, work in pending], self.comm_group)
        for index, buffer, _ in pending:
            k = jobs[index].num_backward
            mean = buffer[:-1].div_(buffer[-1])  # sum_r n_r g_r / sum_r n_r
            grads = _split_gradients(mean, method, k)
            results[index] = dataclasses.replace(results[index], grads=grads[0], extra_grads=grads[1:])
        return results

    # -- shared -------------------------------------------------------------------------------

    def _compute(self, method: Method, job: GradJob, stream: tuple[int, int]) -> GradResult:
        """This rank's evaluation of ``job``; ``stream``: (its index in the call, the part computed here:
        0 for the whole job, i + 1 for part i), as ``evaluation.mask_stream`` keys dropout masks."""
        if job.targets.shape[0] == 0:  # an empty shard (one-sample batch) contributes nothing
            zero = torch.zeros((), device=self.device)
            grads = [[torch.zeros_like(p) for p in method.params] for _ in range(job.num_backward)]
            return GradResult(grads[0], zero, zero.long(), 0, extra_grads=grads[1:])
        with self.compute.interval():
            return evaluate_job(method, job, stream)

    def _wait(self, works: list[Any], intervals: _Intervals) -> None:
        with intervals.interval():
            for work in works:
                work.wait()
        self.exchanges += len(works)


def _nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


def _grad_size(method: Method) -> int:
    return sum(p.numel() for p in method.params)


def _grad_dtype(method: Method) -> torch.dtype:
    dtypes = {p.dtype for p in method.params}
    if len(dtypes) != 1:
        raise ValueError(f"the pair backend needs one parameter dtype, got {sorted(map(str, dtypes))}")
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


def _pack_shard(
    method: Method, result: GradResult, shard: GradJob, count: int, start: int, *, first: bool
) -> Tensor:
    """One rank's part of a job's :func:`_pack` buffer, to be summed over the group: gradients and loss
    times the shard size, the correct count, the flag (from the group's first rank only) and the shard's
    per-sample losses at their place among the job's ``count`` samples (zeros elsewhere)."""
    size = shard.targets.shape[0]
    per_sample = result.per_sample_loss
    has_per_sample = per_sample is not None and per_sample.numel() == size > 0
    gradients = _gradient_pieces(method, result)
    dtype, device = gradients[0].dtype, gradients[0].device
    head = torch.cat([*gradients, result.loss.to(dtype).reshape(1)]).mul_(size)
    flag = torch.full((1,), float(has_per_sample and first), dtype=dtype, device=device)
    tail = torch.zeros(count, dtype=dtype, device=device)
    if has_per_sample:
        tail[start : start + size] = per_sample.to(dtype)
    return torch.cat([head, result.correct.to(dtype).reshape(1), flag, tail])


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
    """One of the 2k ranks; the process group must be initialised (see ``sampa.launch``)."""

    def __init__(
        self,
        rank: int,
        device: torch.device,
        mode: str,
        world_size: int | None = None,
        *,
        whole_batch_jobs: bool = False,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown pair mode {mode!r}; choose one of: {', '.join(MODES)}")
        self.rank, self.device, self.mode = rank, device, mode
        self.whole_batch_jobs = whole_batch_jobs  # the method's ``Method.whole_batch_jobs``
        self.executor = PairExecutor(rank, device, mode, world_size)
        self.topology = self.executor.topology
        self.world_size = self.topology.world_size

    @property
    def is_writer(self) -> bool:
        return self.rank == 0

    def shard(self, inputs: Inputs, targets: Tensor, indices: Tensor) -> tuple[Inputs, Tensor, Tensor]:
        if self.mode == TASK:  # every rank holds the whole batch; the executor shards each job
            return inputs, targets, indices
        parts, rank = self.world_size, self.rank
        return tuple(take_shard(t, parts, rank) for t in (inputs, targets, indices))  # type: ignore[return-value]

    def input_rows(self, size: int) -> slice:
        """Data mode: this rank's shard (:meth:`shard`). Task mode: the part of each job the executor
        gives this rank (its local index of k), if every job is a whole batch (``whole_batch_jobs``);
        else, and with k = 1, the whole batch (each batch is B_{t+1} of group 1, then B_t of group 0)."""
        topology = self.topology
        if self.mode == TASK and not self.whole_batch_jobs:
            return slice(0, size)
        parts, index = topology.group_size, topology.local_index
        return slice(shard_start(size, parts, index), shard_start(size, parts, index + 1))

    def eval_rows(self, size: int) -> slice:
        """Slice ``rank`` of ``world_size`` consecutive, near-equal slices (both modes: after
        :meth:`before_eval` every rank holds the same model)."""
        world, rank = self.world_size, self.rank
        return slice(shard_start(size, world, rank), shard_start(size, world, rank + 1))

    def before_eval(self, model: nn.Module) -> None:
        """BatchNorm statistics: group 1's (averaged over it; task mode) or all ranks' average (data mode)
        on every rank."""
        topology = self.topology
        for group in _by_dtype(list(model.buffers())):
            layout = FlatLayout(group)
            flat = layout.flatten(group)
            if self.mode == DATA and flat.is_floating_point():
                dist.all_reduce(flat)
                flat.div_(self.world_size)
            elif self.mode == DATA:
                dist.broadcast(flat, src=0)
            else:
                k = topology.group_size
                if k > 1 and topology.group == STATS_GROUP and flat.is_floating_point():
                    dist.all_reduce(flat, group=self.executor.groups.inner)
                    flat.div_(k)
                dist.broadcast(flat, src=STATS_GROUP * k)
            torch._foreach_copy_(group, layout.views(flat))

    def check_replicas(self, model: nn.Module, epoch: int) -> None:
        names = [name for name, _ in model.named_parameters()]
        mine = parameter_checksums(model)
        every = [torch.empty_like(mine) for _ in range(self.world_size)]
        dist.all_gather(every, mine)  # not all_gather_into_tensor: deprecated (a FutureWarning per rank)
        rows = torch.stack(every)
        differ = rows != rows[0]
        params = differ.any(dim=0).nonzero().flatten().tolist()
        if params:
            rank = differ.any(dim=1).nonzero().flatten().tolist()[0]
            raise ReplicaMismatchError(
                f"the replicas differ after epoch {epoch} in {len(params)} parameter tensor(s), "
                f"first {names[params[0]]!r} (rank {rank} vs rank 0); the run is stopped"
            )

    def sum_over_replicas(self, values: list[float]) -> list[float]:
        if self.mode == TASK:  # every job's result is the whole batch's
            return values
        totals = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(totals)
        return totals.tolist()

    def gather(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def stats(self) -> dict[str, float]:
        return self.executor.take_stats()

    def describe(self) -> dict[str, Any]:
        k = self.topology.group_size
        if self.mode == DATA:
            statistics = "average over ranks of per-shard statistics"
        elif k == 1:
            statistics = "rank 1 (the single-device passes)"
        else:
            statistics = f"group 1 (the single-device passes, each rank on its 1/{k} shard), averaged over it"
        return {
            "mode": self.mode,
            "dist_backend": str(dist.get_backend()),
            "groups": GROUPS if self.mode == TASK else 1,
            "group_size": k,
            "batchnorm_statistics": statistics,
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
