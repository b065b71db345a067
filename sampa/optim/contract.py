r"""The method contract: one class per optimizer method, one call per update. Read this file first.

A *method* wraps a model, a per-sample loss and a base optimizer (``torch.optim.SGD`` or ``AdamW``).
``method.step(inputs, targets)`` performs one update on one batch and returns a :class:`StepRecord`.
``inputs`` is a tensor or a mapping of tensors (``model(x)`` / ``model(**inputs)``, :mod:`sampa.batch`).
A subclass implements :meth:`Method.direction` like its paper's algorithm box: it asks for gradients
with :meth:`Method.gradients` (independent :class:`~sampa.optim.evaluation.GradJob`\ s), combines them
into the update direction G, and :meth:`Method.step` lets the base optimizer step from x_t with G.
The :class:`Executor` is all a method knows about where gradients run: ``SequentialExecutor``
(:mod:`sampa.optim.evaluation`, the reference) or a backend's (two processes, one fused pass, ...).

A method may mutate only the parameters (through the base optimizer's step), ``p.grad`` (G, right
before that step), the base optimizer's state, BatchNorm running statistics (only in jobs marked
``update_bn``, see :mod:`sampa.optim.evaluation`) and its own state. Loss convention:
``loss_fn(logits, targets)`` returns per-sample losses, shape (batch,) (``reduction="none"``); a scalar
(``reduction="mean"`` or ``"sum"``) is a one-line error at the first step. The model must be in training
mode (``model.train()``) and the batch on the parameters' device; both are checked at every step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor, nn

from sampa.batch import Inputs
from sampa.optim.checks import HyperparameterError, Hyperparameters, make_hparams
from sampa.optim.clipping import clip_by_global_norm
from sampa.optim.eager import never_compiled
from sampa.optim.evaluation import (
    GradJob,
    GradResult,
    LossFn,
    PassCount,
    SequentialExecutor,
    base_step,
    draws_masks,
    frozen_bn_stats,
    held_tensors,
    laid_out_like,
    model_forward,
    optimized_parameters,
    stream_seed,
)
from sampa.optim.flat import FlatLayout, FlatParameters, FlatVector, plain
from sampa.optim.lookahead import lookahead
from sampa.optim.tensors import TensorList

# what a method and an executor see, in one place
__all__ = ["Executor", "GradJob", "GradResult", "HyperparameterError", "Hyperparameters"]
__all__ += ["Inputs", "LossFn", "Method", "SequentialExecutor", "StepRecord", "TensorList"]


@dataclass
class StepRecord:
    """What one update did; tensors stay on the device (no host synchronisation inside a step).

    ``loss``/``correct``/``count`` describe the method's reporting pass (its clean pass at x_t where it
    has one, else the pass its docstring names). ``sequential`` counts gradient computations that ran one
    after the other on this executor; ``ideal_sequential`` is the paper's "temporal cost" (independent
    gradients count once, as if run in parallel).
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


class Executor(Protocol):
    """Where gradient jobs run."""

    def evaluate(self, method: Method, jobs: Sequence[GradJob]) -> list[GradResult]:
        """Evaluate independent jobs; results in job order, identical on every replica."""
        ...

    def depth(self, jobs: Sequence[GradJob]) -> int:
        """How many of these independent evaluations run one after the other."""
        ...

    def share_rows(self, indices: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
        """Per-sample rows with their sample indices, gathered from every replica that saw part of the
        batch (data parallel); on one device the rows as they are."""
        ...


def _check_arguments(model: Any, loss_fn: Any, base_optimizer: Any) -> None:
    """One-line ``TypeError`` for a constructor argument of the wrong kind (e.g. swapped arguments)."""
    expected = (
        ("model", model, nn.Module, "a torch.nn.Module"),
        ("base_optimizer", base_optimizer, torch.optim.Optimizer, "a torch.optim.Optimizer"),
    )
    for name, value, kind, text in expected:
        if not isinstance(value, kind):
            raise TypeError(f"{name} must be {text} (got {type(value).__name__})")
    if isinstance(model, nn.DataParallel | nn.parallel.DistributedDataParallel):
        raise TypeError(
            f"model is wrapped in {type(model).__name__}, which does not average gradients taken with "
            f"torch.autograd.grad (as every method takes them): pass the bare model (model.module); data "
            f"parallelism is an executor's job (the engine's backends: python -m sampa train --devices 2k)"
        )
    if not callable(loss_fn):
        raise TypeError(
            f"loss_fn must be callable as loss_fn(logits, targets) -> per-sample losses "
            f"(got {type(loss_fn).__name__})"
        )


@never_compiled  # traced, it would guard on the whole param_groups (learning rates: recompiles)
def _setup_problem(method: Method) -> str | None:
    """What makes a step wrong that its arguments do not show, as a one-line message (None: nothing)."""
    optimizer, held = method.base_optimizer, method._held
    if (
        sum(len(g["params"]) for g in optimizer.param_groups) != len(held)
        or [p.requires_grad for p in held] != method._held_flags
    ):
        return (
            "the base optimizer's trainable parameters changed since the method was built (requires_grad "
            "switched, or a parameter group added): build the method again after freezing or unfreezing"
        )
    device = method.params[0].device.type
    outer = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
    if torch.float16 in (method.autocast, outer):
        return (
            "float16 autocast is not supported: the step runs backward itself, so no GradScaler can scale "
            "its loss and small gradients would underflow; use bfloat16 (method.autocast = torch.bfloat16)"
        )
    return None


class Method:
    """Base class: a subclass sets ``name``, ``display_name``, ``Hparams``; implements :meth:`direction`."""

    name: ClassVar[str] = ""  # registry key (lower case, e.g. "sampa", "sampa-asam")
    display_name: ClassVar[str] = ""  # the paper's name for tables (e.g. "SAMPa", "ASAM+SAMPa")
    label_hparam: ClassVar[str | None] = None  # a hyperparameter the label carries ("SAMPa-0.2")
    Hparams: ClassVar[type[Hyperparameters]] = Hyperparameters
    trace_keys: ClassVar[tuple[str, ...]] = ()  # stats recorded per step by the engine (not only averaged)
    #: independent jobs per step; a two-device backend runs a method with >= 2 task-parallel
    parallel_jobs: ClassVar[int] = 1
    needs_indices: ClassVar[bool] = False  # whether ``step`` needs the samples' dataset indices
    #: every gradient job's inputs are a whole batch the method was given (this step's or a kept one),
    #: never a part of one; a backend that splits each job over its processes may then load only their rows
    whole_batch_jobs: ClassVar[bool] = False

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
        self.hp = make_hparams(self.Hparams, self.name, hparams)
        _check_arguments(model, loss_fn, base_optimizer)
        self.seed = seed
        self.rng = torch.Generator().manual_seed(seed)  # CPU generator: same draws on every device
        #: whether the model draws dropout masks: then each gradient job draws them from its own seed
        #: (``job_seed``), so they do not depend on the executor (one device, two processes)
        self.masks = draws_masks(model)
        self.model, self.loss_fn, self.base_optimizer = model, loss_fn, base_optimizer
        self.executor: Executor = executor if executor is not None else SequentialExecutor()
        self.params, self.param_names = optimized_parameters(model, base_optimizer)
        self._held = held_tensors(base_optimizer)  # what self.params was chosen from (requires_grad at build)
        self._held_flags = [p.requires_grad for p in self._held]
        self.step_count = 0
        self.epoch, self.epochs, self.steps_per_epoch = 0, 0, 0  # set by start_epoch
        self.batch_indices: Tensor | None = None  # dataset indices of the current batch, if given
        self.autocast: torch.dtype | None = None  # forward dtype under torch.autocast (engine's fast path)
        #: clip G (and a look-ahead's gradient, see :meth:`lookahead`) to this global norm; None: off
        self.clip_norm: float | None = None
        self.flat: FlatParameters | None = None  # parameters as one buffer (``flat.flatten_parameters``)
        self._plain_layout = FlatLayout(self.params)
        self._passes = PassCount()  # pass counts of the current step
        self._first_job = 0  # number of the first job of the current ``gradients`` call within the step

    def start_epoch(self, epoch: int, epochs: int, steps_per_epoch: int) -> None:
        """Called before each epoch (0-based ``epoch`` of ``epochs``, ``steps_per_epoch`` steps each, e.g.
        ``len(loader)``); without it a method stays at epoch 0. Bad values are a one-line ``ValueError``."""
        for name, value, low in (
            ("epoch", epoch, 0),
            ("epochs", epochs, 1),
            ("steps_per_epoch", steps_per_epoch, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"start_epoch: {name} must be an integer >= {low} (got {value!r})")
        self.epoch, self.epochs, self.steps_per_epoch = epoch, epochs, steps_per_epoch

    def step(self, inputs: Inputs, targets: Tensor, indices: Tensor | None = None) -> StepRecord:
        """One complete update on the batch; ``indices``: the samples' dataset indices (``needs_indices``)."""
        self._check_ready(indices)
        self.batch_indices = indices
        self._passes = passes = PassCount()
        direction, report, stats = self.direction(inputs, targets)
        self.apply_update(direction)
        self.step_count += 1
        return StepRecord(report.loss, report.correct, report.count, **vars(passes), stats=stats)

    def _check_ready(self, indices: Tensor | None = None) -> None:
        """One-line error for a step that cannot be right: indices missing for a method that needs them,
        the model in eval mode, the trainable parameters changed since the method was built, float16."""
        if self.needs_indices and indices is None:
            raise ValueError(
                f"method {self.name!r} needs the samples' dataset indices: call step(x, y, indices)"
            )
        if not self.model.training:
            raise RuntimeError(
                "the model is in eval mode: call model.train() before method.step (eval mode would use "
                "BatchNorm running statistics in every pass and switch dropout off; to freeze BatchNorm on "
                "purpose, put only those modules in eval mode)"
            )
        problem = _setup_problem(self)
        if problem is not None:
            raise RuntimeError(problem)

    def direction(self, inputs: Inputs, targets: Tensor) -> tuple[TensorList, GradResult, dict[str, Any]]:
        """Return (update direction G aligned with ``self.params``, reporting pass, per-step stats)."""
        raise NotImplementedError

    def apply_update(self, direction: TensorList) -> None:
        """x_{t+1} = BaseOpt(x_t, G): G into ``p.grad`` (with the parameter's strides: fused kernels read raw
        memory), then the base optimizer's step. With ``clip_norm`` set, G is first clipped to that global
        norm (a copy: a method may keep G)."""
        if self.clip_norm is not None:
            direction, _ = clip_by_global_norm(direction, self.clip_norm)
        for p, g in zip(self.params, direction, strict=True):
            p.grad = laid_out_like(g, p)
        base_step(self.base_optimizer)
        for p in self.params:
            p.grad = None

    def gradient(
        self,
        inputs: Inputs,
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
        self._first_job = self._passes.forward
        self._passes.add(jobs, depth=self.executor.depth(jobs))
        return self.executor.evaluate(self, jobs)

    def job_seed(self, index: int, part: int = 0) -> int:
        """The seed of the dropout masks of job ``index`` of the current ``gradients`` call (``part``: 0 for
        the whole job, i + 1 for the i-th part a process computes); see ``evaluation.mask_stream``."""
        return stream_seed(self.seed, self.step_count, self._first_job + index, part)

    def forward_only(
        self,
        inputs: Inputs,
        *,
        point: TensorList | None = None,
        update_bn: bool = False,
        model: nn.Module | None = None,
    ) -> Tensor:
        """A forward pass without gradient (counted as one forward pass).

        A training-mode model draws its dropout masks here from torch's global generator, not from a
        job's ``evaluation.mask_stream``, and that is enough: a run checkpoints the global generators
        with each epoch (``torch_rng``, ``cuda_rng``), so a resumed run draws what an uninterrupted one
        draws (tests/test_engine_sources.py: ESAM's SDS forward on BERT-tiny), and every rank of a
        two-device run calls this on the same whole batch from the same generator state (gradient jobs
        leave the global stream as they found it), so the replicas stay equal.
        MESA's teacher is in eval mode and draws none."""
        self._passes.forward += 1
        target = self.model if model is None else model
        params = None if point is None else dict(zip(self.param_names, point, strict=True))
        with torch.no_grad(), frozen_bn_stats(target, freeze=not update_bn):
            return model_forward(self, target, inputs, params)

    def param_layout(self) -> FlatLayout:
        """Where each parameter sits in a flat vector (flat buffers' layout, executors' gradient packing)."""
        return self.flat.layout if self.flat is not None else self._plain_layout

    def current_point(self) -> TensorList:
        """x_t as detached views of the parameters (no copy); a FlatVector with flat buffers."""
        return self.flat.point() if self.flat is not None else [p.detach() for p in self.params]

    def lookahead(self, grads: TensorList) -> TensorList:
        """Point the base optimizer would reach from x_t with gradient ``grads``; its state is unchanged.

        With ``clip_norm`` set, ``grads`` is clipped first, as :meth:`apply_update` clips G: the look-ahead
        predicts the next iterate, which the clipped update produces (SAMPa's y_{t+1} from g_t).
        """
        if self.clip_norm is not None:
            grads, _ = clip_by_global_norm(grads, self.clip_norm)
        return lookahead(self.base_optimizer, self.params, grads)

    def method_state(self) -> dict[str, Any]:
        """Method-specific state (tensors, numbers, lists, dicts only); override to add more."""
        return {}

    def load_method_state(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`method_state`."""

    def load_vector(self, saved: Sequence[Tensor] | None) -> TensorList | None:
        """A saved parameter-aligned vector (None stays None) on the parameters' device, flat if need be."""
        if saved is None:
            return None
        vector = [t.to(self.params[0].device) for t in saved]
        return vector if self.flat is None else FlatVector(self.flat.layout.flatten(vector), self.flat.layout)

    def state_dict(self) -> dict[str, Any]:
        """Method name, base optimizer state, method state; loadable with ``torch.load(weights_only=True)``.

        The model's own state (parameters, BatchNorm statistics) is not part of it: checkpoint
        ``model.state_dict()`` beside it."""
        state = {"base_optimizer": self.base_optimizer.state_dict(), "method": plain(self.method_state())}
        return state | {"name": self.name, "step_count": self.step_count, "rng": self.rng.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict` of the same method (a state without a name, from before the
        name was saved, is accepted); another method's state is a one-line ``ValueError``."""
        missing = [key for key in ("base_optimizer", "method", "step_count", "rng") if key not in state]
        if missing:
            raise ValueError(f"not a method state (from method.state_dict()): no key {missing[0]!r}")
        saved = state.get("name", self.name)
        if saved != self.name:
            raise ValueError(
                f"this state was saved by method {saved!r}; it cannot be loaded into {self.name!r} "
                f"(build the method with build_method({saved!r}, ...))"
            )
        self.base_optimizer.load_state_dict(state["base_optimizer"])
        self.load_method_state(state["method"])
        self.step_count = int(state["step_count"])
        self.rng.set_state(state["rng"])
