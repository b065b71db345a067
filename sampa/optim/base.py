r"""The method contract: one class per optimizer method, one call per update.

A *method* wraps a model, a per-sample loss and a base optimizer (``torch.optim.SGD`` or ``AdamW``).
``method.step(inputs, targets)`` performs one complete update on one batch and returns a
:class:`StepRecord`. The method decides which gradients it needs; it asks for them through
:meth:`Method.gradients`, which hands *independent* gradient evaluations (:class:`GradJob`) to an
:class:`Executor`. The executor is the only thing a method knows about where gradients run:

* :class:`SequentialExecutor` (here, the default) evaluates the jobs one after the other on the
  model's device; this is the reference implementation.
* ``sampa.backends`` provides executors that evaluate independent jobs at the same time (two
  processes, or one fused pass) or average gradients over data-parallel replicas (see ``GradJob.local``).

What a method may mutate: the model's parameters (only through the base optimizer's ``step``),
``p.grad`` (set to the update direction right before the base step), the base optimizer's state,
BatchNorm running statistics (only in the job marked ``update_bn=True``, see below) and its own state.
Evaluating a gradient never changes the parameters: a job at another point (x + e, y, ...) is
evaluated with ``torch.func.functional_call``, so the point x_t is never perturbed in place and never
needs restoring.

BatchNorm policy (one for all methods): running statistics are updated only by the job a method
marks ``update_bn=True``: its clean pass at x_t where it has one (SGD, SAM and most variants), its
only pass where it has a single pass (RandSAM, OptSAM), and SAMPa's unperturbed extrapolated pass at
y_{t+1}. Every other pass (perturbed points) normalises with batch statistics but leaves the running
statistics untouched (``track_running_stats`` is switched off for that pass).

Loss convention: ``loss_fn(logits, targets)`` returns per-sample losses (``reduction="none"``); a
scalar is accepted too (methods that need per-sample losses say so).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor, nn

from sampa.optim.flat import FlatLayout, FlatParameters, FlatVector, as_flat, plain
from sampa.optim.lookahead import lookahead
from sampa.optim.tensors import TensorList

LossFn = Callable[[Tensor, Tensor], Tensor]


# ----------------------------------------------------------------------------------------------
# Records


@dataclass
class StepRecord:
    """What one update did. Tensors stay on the device (no host synchronisation inside a step).

    ``loss``/``correct``/``count`` describe the method's *reporting pass*: its clean pass at x_t
    where it has one, otherwise the pass documented by the method (SAMPa: the extrapolated pass on
    the newest batch). ``sequential`` counts gradient computations that ran one after the other on
    this executor; ``ideal_sequential`` is the paper's "temporal cost" (independent gradients count
    once, as if run in parallel).
    """

    loss: Tensor
    correct: Tensor
    count: int
    forward: int
    backward: int
    sequential: int
    ideal_sequential: int
    stats: dict[str, Tensor | float] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        """Training accuracy of the reporting pass (synchronises with the device)."""
        return float(self.correct) / max(self.count, 1)


@dataclass
class GradJob:
    """One gradient evaluation: grad of the mean loss on (inputs, targets) at ``point``.

    ``point`` is a list of tensors aligned with the method's parameters; ``None`` means the current
    parameters x_t. ``wrt`` optionally restricts the gradient to a subset of parameter indices
    (the other entries of the result are zero tensors). A data-parallel executor averages every
    gradient over its replicas (as DDP does) except jobs marked ``local``: those stay the replica's own
    gradient of its own shard (e.g. mSAM's per-shard ascent direction).
    """

    inputs: Tensor
    targets: Tensor
    point: TensorList | None = None
    update_bn: bool = False
    wrt: Sequence[int] | None = None
    local: bool = False
    #: losses to differentiate from this job's one forward, one backward each (default: the method's
    #: loss alone); e.g. BiSAM's surrogate. ``GradResult.grads`` is the first one's gradient,
    #: ``extra_grads`` the others'. The reporting values are always those of the method's loss.
    losses: Sequence[LossFn] | None = None

    @property
    def num_backward(self) -> int:
        """Backward passes this job costs."""
        return 1 if self.losses is None else len(self.losses)


@dataclass
class GradResult:
    """Gradient (aligned with the method's parameters) and reporting values of one job.

    ``extra_grads`` holds the gradients of ``GradJob.losses[1:]``; executors treat them like ``grads``.
    ``logits`` are the job's detached outputs (None where an executor does not return them; SAF keeps them).
    """

    grads: TensorList
    loss: Tensor
    correct: Tensor
    count: int
    per_sample_loss: Tensor | None = None
    extra_grads: list[TensorList] = field(default_factory=list)
    logits: Tensor | None = None


# ----------------------------------------------------------------------------------------------
# Executors


class Executor(Protocol):
    """Where gradient jobs run. Methods use only these members."""

    def evaluate(self, method: Method, jobs: Sequence[GradJob]) -> list[GradResult]:
        """Evaluate independent jobs; results in job order, identical on every replica."""
        ...

    def sequential_depth(self, num_jobs: int) -> int:
        """How many of ``num_jobs`` independent evaluations run one after the other.

        An executor whose depth depends on the jobs themselves (the fused executor falls back to
        sequential evaluation for unequal batch sizes) also defines ``depth(jobs) -> int``, which
        :meth:`Method.gradients` then uses instead.
        """
        ...


class SequentialExecutor:
    """Reference executor: evaluates jobs one after the other on the model's own device."""

    def evaluate(self, method: Method, jobs: Sequence[GradJob]) -> list[GradResult]:
        return [evaluate_job(method, job) for job in jobs]

    def sequential_depth(self, num_jobs: int) -> int:
        return num_jobs


@contextlib.contextmanager
def frozen_bn_stats(model: nn.Module, freeze: bool = True) -> Iterator[None]:
    """Normalise with batch statistics but do not update BatchNorm running statistics."""
    modules = [
        m
        for m in model.modules()
        if freeze and isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats
    ]
    for m in modules:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in modules:
            m.track_running_stats = True


def evaluate_job(method: Method, job: GradJob) -> GradResult:
    """Forward and backward of one job on the local device (shared by every executor)."""
    leaves, overrides, to_gradient = _differentiable_point(method, job)
    with frozen_bn_stats(method.model, freeze=not job.update_bn):
        logits = model_forward(method, method.model, job.inputs, overrides)
    per_sample = method.loss_fn(logits, job.targets)
    loss = per_sample.mean()
    losses = [loss] if job.losses is None else _objectives(job, logits, method.loss_fn, loss)
    grads = [
        to_gradient(torch.autograd.grad(obj, leaves, retain_graph=k + 1 < len(losses)))
        for k, obj in enumerate(losses)
    ]
    correct = (logits.detach().argmax(dim=1) == job.targets).sum()
    return GradResult(
        grads=grads[0],
        extra_grads=grads[1:],
        loss=loss.detach(),
        correct=correct,
        count=job.targets.shape[0],
        per_sample_loss=per_sample.detach() if per_sample.dim() > 0 else None,
        logits=logits.detach(),
    )


def _differentiable_point(
    method: Method, job: GradJob
) -> tuple[list[Tensor], dict[str, Tensor], Callable[[Sequence[Tensor]], TensorList]]:
    """The leaves to differentiate, the parameter overrides for the forward pass (empty: the model's own
    parameters) and how the leaves' gradients become a parameter-aligned gradient.

    With flat buffers (and no ``wrt``) the gradient is a FlatVector: at x_t the parameters' gradients
    concatenated, elsewhere the gradient of ONE leaf, the point's flat buffer.
    """
    params, flat = method.params, method.flat
    if flat is not None and job.wrt is None:
        if job.point is None:  # the model's own parameters: no functional call, one concatenation
            return list(params), {}, lambda grads: FlatVector(flat.layout.flatten(grads), flat.layout)
        leaf = as_flat(job.point, flat.layout).detach().requires_grad_(True)
        overrides = dict(zip(method.param_names, flat.layout.views(leaf), strict=True))
        return [leaf], overrides, lambda grads: FlatVector(grads[0], flat.layout)
    wrt = range(len(params)) if job.wrt is None else job.wrt
    if job.point is None:
        return [params[i] for i in wrt], {}, lambda grads: _scatter(params, wrt, grads)
    leaves = [job.point[i].detach().requires_grad_(True) for i in wrt]
    overrides = {method.param_names[i]: job.point[i].detach() for i in range(len(params))}
    for i, leaf in zip(wrt, leaves, strict=True):
        overrides[method.param_names[i]] = leaf
    return leaves, overrides, lambda grads: _scatter(params, wrt, grads)


def _objectives(job: GradJob, logits: Tensor, loss_fn: LossFn, loss: Tensor) -> list[Tensor]:
    """Mean of each of the job's losses on the logits (the method's own loss is reused, not recomputed)."""
    if not job.losses:
        raise ValueError("GradJob.losses must name at least one loss (or be None for the method's loss)")
    return [loss if fn is loss_fn else fn(logits, job.targets).mean() for fn in job.losses]


def model_forward(
    method: Method, model: nn.Module, inputs: Tensor, params: dict[str, Tensor] | None = None
) -> Tensor:
    """Logits of ``model`` (at ``params`` if given) as every pass computes them.

    With ``method.autocast`` set (the engine's fast path, e.g. ``torch.bfloat16``) the forward runs
    under ``torch.autocast`` and the logits are cast back to float32, so the loss and everything after
    it stay in float32 as in the reference path.
    """
    autocast = method.autocast
    context = torch.autocast(inputs.device.type, dtype=autocast) if autocast else contextlib.nullcontext()
    with context:
        logits = (
            torch.func.functional_call(model, params, (inputs,), strict=False) if params else model(inputs)
        )
    return logits.float() if autocast else logits


def laid_out_like(grad: Tensor, param: Tensor) -> Tensor:
    """``grad`` with the parameter's strides, copied only if they differ."""
    return grad if grad.stride() == param.stride() else torch.empty_like(param).copy_(grad)


def _scatter(params: Sequence[Tensor], wrt: Sequence[int], grads: Sequence[Tensor]) -> TensorList:
    if len(wrt) == len(params):
        return list(grads)
    out = [torch.zeros_like(p) for p in params]
    for i, g in zip(wrt, grads, strict=True):
        out[i] = g
    return out


# ----------------------------------------------------------------------------------------------
# Method base class


class HyperparameterError(ValueError):
    """A method hyperparameter is invalid (one-line message naming the value and the valid range)."""


@dataclass(frozen=True)
class Hyperparameters:
    """Base for a method's hyperparameters; subclasses add fields and ``check`` ranges."""

    def check(self) -> None:
        """Raise :class:`HyperparameterError` for an invalid value."""

    def __post_init__(self) -> None:
        self.check()


class Method:
    """Base class. A subclass sets ``name``, ``Hparams`` and implements :meth:`direction`.

    Subclasses read like their paper's algorithm box: they compute gradients with
    :meth:`gradient`/:meth:`gradients`, combine them into the update direction G and return it;
    :meth:`step` writes G to ``p.grad`` and lets the base optimizer take the step from x_t.
    """

    name: ClassVar[str] = ""  # registry key (lower case, e.g. "sampa", "sampa-asam")
    display_name: ClassVar[str] = ""  # the paper's name for tables (e.g. "SAMPa", "ASAM+SAMPa")
    Hparams: ClassVar[type[Hyperparameters]] = Hyperparameters
    #: stats keys recorded per step (not only averaged per epoch) by the training engine
    trace_keys: ClassVar[tuple[str, ...]] = ()
    #: independent gradient jobs a step evaluates at once; a two-device backend runs a method with
    #: ``parallel_jobs >= 2`` task-parallel (one job per device), every other method data-parallel
    parallel_jobs: ClassVar[int] = 1

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        base_optimizer: torch.optim.Optimizer,
        *,
        executor: Executor | None = None,
        seed: int = 0,
        **hparams: Any,
    ) -> None:
        self.hp = make_hparams(type(self), hparams)
        self.rng = torch.Generator().manual_seed(seed)  # CPU generator: same draws on every device
        self.model = model
        self.loss_fn = loss_fn
        self.base_optimizer = base_optimizer
        self.executor: Executor = executor if executor is not None else SequentialExecutor()
        self.params, self.param_names = _optimized_parameters(model, base_optimizer)
        self._passes = _PassCounter()
        self.step_count = 0
        self.batch_indices: Tensor | None = (
            None  # sample indices of the current batch, if the engine gives them
        )
        self.epoch, self.epochs, self.steps_per_epoch = 0, 0, 0
        #: forward passes run under torch.autocast with this dtype (set by the engine's fast path, never
        #: by a method)
        self.autocast: torch.dtype | None = None
        #: the parameters as one flat buffer (``sampa.optim.flat.flatten_parameters``), or None
        self.flat: FlatParameters | None = None
        self._layout: FlatLayout | None = None

    #: whether ``step`` needs the samples' dataset indices (``indices=``), e.g. for per-sample state
    needs_indices: ClassVar[bool] = False

    # -- the contract -------------------------------------------------------------------------

    def start_epoch(self, epoch: int, epochs: int, steps_per_epoch: int) -> None:
        """Called by a training loop before each epoch (0-based ``epoch`` of ``epochs``).

        Methods with epoch-dependent behaviour (warm-ups, schedules) read ``self.epoch``; a loop that never
        calls this leaves them at epoch 0.
        """
        self.epoch, self.epochs, self.steps_per_epoch = epoch, epochs, steps_per_epoch

    def step(self, inputs: Tensor, targets: Tensor, indices: Tensor | None = None) -> StepRecord:
        """Perform one complete update on the batch (inputs, targets).

        ``indices`` are the samples' dataset indices (only methods with ``needs_indices`` use them).
        """
        if self.needs_indices and indices is None:
            raise ValueError(
                f"method {self.name!r} needs the samples' dataset indices: call step(x, y, indices)"
            )
        self.batch_indices = indices
        self._passes = _PassCounter()
        direction, report, stats = self.direction(inputs, targets)
        self.apply_update(direction)
        self.step_count += 1
        return self._passes.record(report, stats)

    def direction(self, inputs: Tensor, targets: Tensor) -> tuple[TensorList, GradResult, dict[str, Any]]:
        """Return (update direction G aligned with ``self.params``, reporting pass, per-step stats)."""
        raise NotImplementedError

    def apply_update(self, direction: TensorList) -> None:
        """x_{t+1} = BaseOpt(x_t, G): write G into ``p.grad`` and take the base optimizer's step.

        Each ``p.grad`` gets its parameter's strides (copied only where they differ): torch's fused
        optimizer kernels read the raw memory of parameter and gradient alike.
        """
        for p, g in zip(self.params, direction, strict=True):
            p.grad = laid_out_like(g, p)
        _base_step(self.base_optimizer)
        for p in self.params:
            p.grad = None

    # -- shared mechanics ---------------------------------------------------------------------

    def gradient(
        self,
        inputs: Tensor,
        targets: Tensor,
        *,
        point: TensorList | None = None,
        update_bn: bool = False,
        wrt: Sequence[int] | None = None,
    ) -> GradResult:
        """One gradient evaluation (a sequential step of its own)."""
        return self.gradients([GradJob(inputs, targets, point, update_bn, wrt)])[0]

    def gradients(self, jobs: Sequence[GradJob]) -> list[GradResult]:
        """Independent gradient evaluations; an executor may run them at the same time."""
        backward = sum(job.num_backward for job in jobs)
        depth_of = getattr(self.executor, "depth", None)  # optional, see Executor.sequential_depth
        depth = depth_of(jobs) if depth_of is not None else self.executor.sequential_depth(len(jobs))
        self._passes.add_gradients(len(jobs), depth, backward)
        return self.executor.evaluate(self, jobs)

    def forward_only(
        self,
        inputs: Tensor,
        *,
        point: TensorList | None = None,
        update_bn: bool = False,
        model: nn.Module | None = None,
    ) -> Tensor:
        """A forward pass without gradient (counted as one forward pass)."""
        self._passes.forward += 1
        target = self.model if model is None else model
        params = None if point is None else dict(zip(self.param_names, point, strict=True))
        with torch.no_grad(), frozen_bn_stats(target, freeze=not update_bn):
            return model_forward(self, target, inputs, params)

    def param_layout(self) -> FlatLayout:
        """Where each parameter sits in a flat vector (sizes, shapes, memory formats): the flat buffers'
        layout, and how executors pack gradients into one buffer."""
        if self.flat is not None:
            return self.flat.layout
        if self._layout is None:
            self._layout = FlatLayout(self.params)
        return self._layout

    def current_point(self) -> TensorList:
        """x_t as detached views of the parameters (no copy); a FlatVector with flat buffers."""
        if self.flat is not None:
            return self.flat.point()
        return [p.detach() for p in self.params]

    def learning_rates(self) -> list[float]:
        """The base optimizer's current learning rate for each parameter (eta_t)."""
        return [group["lr"] for group in self.base_optimizer.param_groups for _ in group["params"]]

    def lookahead(self, grads: TensorList) -> TensorList:
        """Point the base optimizer would reach from x_t with gradient ``grads``; its state is unchanged."""
        return lookahead(self.base_optimizer, self.params, grads)

    # -- state (checkpointing) ----------------------------------------------------------------

    def method_state(self) -> dict[str, Any]:
        """Method-specific state (tensors, numbers, lists, dicts only); override to add more."""
        return {}

    def load_method_state(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`method_state`."""

    def load_vector(self, saved: Sequence[Tensor] | None) -> TensorList | None:
        """A parameter-aligned vector from :meth:`method_state` (None stays None) on the parameters'
        device; a FlatVector when the method uses flat buffers."""
        if saved is None:
            return None
        vector = [t.to(self.params[0].device) for t in saved]
        if self.flat is not None:
            return FlatVector(self.flat.layout.flatten(vector), self.flat.layout)
        return vector

    def state_dict(self) -> dict[str, Any]:
        """Base optimizer state + method state; loadable with ``torch.load(weights_only=True)``."""
        return {
            "base_optimizer": self.base_optimizer.state_dict(),
            "method": plain(self.method_state()),
            "step_count": self.step_count,
            "rng": self.rng.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base_optimizer.load_state_dict(state["base_optimizer"])
        self.load_method_state(state["method"])
        self.step_count = int(state["step_count"])
        self.rng.set_state(state["rng"])


# ----------------------------------------------------------------------------------------------
# Helpers


def make_hparams(cls: type[Method], hparams: dict[str, Any]) -> Hyperparameters:
    """Build ``cls.Hparams`` from keyword arguments with one-line errors for unknown names."""
    valid = [f.name for f in dataclasses.fields(cls.Hparams)]
    unknown = sorted(set(hparams) - set(valid))
    if unknown:
        raise HyperparameterError(
            f"unknown hyperparameter {unknown[0]!r} for method {cls.name!r}; "
            f"valid: {', '.join(valid) if valid else '(none)'}"
        )
    return cls.Hparams(**hparams)


@torch.compiler.disable
def _base_step(optimizer: torch.optim.Optimizer) -> None:
    """The base optimizer's step, always eager: a compiled step (``torch.compile`` of ``Method.step``)
    would specialise on the learning rate and recompile at every schedule change."""
    optimizer.step()


def _optimized_parameters(
    model: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[list[Tensor], list[str]]:
    names = {id(p): n for n, p in model.named_parameters()}
    params: list[Tensor] = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) not in names:
                raise ValueError("the base optimizer holds a tensor that is not a parameter of the model")
            if p.requires_grad:
                params.append(p)
    if not params:
        raise ValueError("the base optimizer holds no trainable parameter of the model")
    return params, [names[id(p)] for p in params]


class _PassCounter:
    """Counts the passes of one step (shared by every method)."""

    def __init__(self) -> None:
        self.forward = 0
        self.backward = 0
        self.sequential = 0
        self.ideal_sequential = 0

    def add_gradients(self, num_jobs: int, depth: int, backward: int | None = None) -> None:
        self.forward += num_jobs
        self.backward += num_jobs if backward is None else backward
        self.sequential += depth
        self.ideal_sequential += 1 if num_jobs else 0

    def record(self, report: GradResult, stats: dict[str, Any]) -> StepRecord:
        return StepRecord(
            loss=report.loss,
            correct=report.correct,
            count=report.count,
            forward=self.forward,
            backward=self.backward,
            sequential=self.sequential,
            ideal_sequential=self.ideal_sequential,
            stats=stats,
        )
