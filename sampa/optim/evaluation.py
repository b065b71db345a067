r"""Gradient jobs and how one is evaluated on the local device (shared by every executor).

A method asks for gradients as :class:`GradJob`\ s and gets :class:`GradResult`\ s back (see
:mod:`sampa.optim.contract`). This module holds those two records and the mechanics behind them:
:func:`evaluate_job` (one forward, one backward per loss), the differentiable point it builds, the
BatchNorm policy and the autocast of every forward pass. Executors in ``sampa.backends`` call
:func:`evaluate_job` (or :func:`model_forward` for their own batched pass); they need nothing private.

Evaluating a gradient never changes the parameters: a job at another point (x + e, y, ...) is
evaluated with ``torch.func.functional_call``, so x_t is never perturbed in place and never restored.

BatchNorm policy (one for all methods): running statistics are updated only by the job a method marks
``update_bn=True`` (its clean pass at x_t where it has one, its only pass where it has a single pass, and
SAMPa's unperturbed extrapolated pass at y_{t+1}). Every other pass normalises with batch statistics
but leaves the running statistics untouched (``track_running_stats`` is off for that pass).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor, nn

from sampa.batch import Inputs, batch_size, call_model, device_of
from sampa.optim.eager import never_compiled
from sampa.optim.flat import FlatParameters, FlatVector, as_flat
from sampa.optim.tensors import TensorList

#: ``loss_fn(logits, targets)``: per-sample losses, shape (batch,) (``reduction="none"``; not a scalar)
LossFn = Callable[[Tensor, Tensor], Tensor]


@dataclass
class GradJob:
    """One gradient evaluation: grad of the mean loss on (inputs, targets) at ``point``.

    ``inputs`` is a tensor or a mapping of tensors (keyword arguments of the model, see
    :mod:`sampa.batch`). ``point`` is a list of tensors aligned with the method's parameters; ``None``
    means the current parameters x_t. ``wrt`` optionally restricts the gradient to a subset of
    parameter indices (the other entries of the result are zero tensors). A data-parallel executor
    averages every gradient over its replicas (as DDP does) except jobs marked ``local``: those stay the
    replica's own gradient of its own shard (e.g. mSAM's per-shard ascent direction).
    """

    inputs: Inputs
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


class Evaluable(Protocol):
    """What evaluating a job reads of a method (``sampa.optim.contract.Method`` has all of it)."""

    model: nn.Module
    loss_fn: LossFn
    params: list[Tensor]
    param_names: list[str]
    flat: FlatParameters | None
    autocast: torch.dtype | None
    masks: bool

    def job_seed(self, index: int, part: int) -> int: ...


class SequentialExecutor:
    """Reference executor: evaluates jobs one after the other on the model's own device."""

    def evaluate(self, method: Evaluable, jobs: Sequence[GradJob]) -> list[GradResult]:
        return [evaluate_job(method, job, stream=(index, 0)) for index, job in enumerate(jobs)]

    def depth(self, jobs: Sequence[GradJob]) -> int:
        return len(jobs)

    def share_rows(self, indices: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
        return indices, rows  # one replica holds every sample of the batch


def evaluate_job(method: Evaluable, job: GradJob, stream: tuple[int, int] | None = None) -> GradResult:
    """Forward and backward of one job on the local device; ``stream`` = (index of the job in its
    ``gradients`` call, part of it this process computes: 0 for the whole job) keys its dropout masks
    (:func:`mask_stream`; None: torch's global generator draws them)."""
    check_batch(job.inputs, job.targets, method.params[0].device)
    leaves, overrides, to_gradient = _differentiable_point(method, job)
    masks = mask_stream(method, *stream) if stream is not None else contextlib.nullcontext()
    with frozen_bn_stats(method.model, freeze=not job.update_bn), masks:
        logits = model_forward(method, method.model, job.inputs, overrides)
    per_sample = method.loss_fn(logits, job.targets)
    check_per_sample(per_sample, job.targets.shape[0])
    loss = per_sample.mean()
    losses = [loss] if job.losses is None else _objectives(job, logits, method.loss_fn, loss)
    grads = [
        to_gradient(torch.autograd.grad(obj, leaves, retain_graph=k + 1 < len(losses)))
        for k, obj in enumerate(losses)
    ]
    return GradResult(
        grads=grads[0],
        extra_grads=grads[1:],
        loss=loss.detach(),
        correct=num_correct(logits, job.targets),
        count=job.targets.shape[0],
        per_sample_loss=per_sample.detach(),
        logits=logits.detach(),
    )


#: modules that draw random masks in training mode (their rate: ``p``, or timm's ``drop_prob``)
MASK_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


def draws_masks(model: nn.Module) -> bool:
    """Whether ``model`` has a dropout (or timm DropPath) module with a nonzero rate."""
    return any(
        (isinstance(m, MASK_MODULES) and m.p > 0) or getattr(m, "drop_prob", 0) > 0 for m in model.modules()
    )


@contextlib.contextmanager
def mask_stream(method: Evaluable, index: int, part: int) -> Iterator[None]:
    """Dropout masks of one gradient job from a generator seeded by (the method's seed, its step, the job's
    number within the step, ``part``), not from torch's global stream, which stays untouched.

    So the masks of a job do not depend on where or after what it runs: two processes that each
    evaluate one of SAMPa's two jobs draw what one device draws for them, and the process computing
    part i of a job (``part`` i + 1) draws its own. Only where the model draws masks (``method.masks``)
    and is training; otherwise a no-op (nothing for ``torch.compile`` to trace)."""
    if not (method.masks and method.model.training):
        yield
        return
    saved = _seed_generators(method, method.job_seed(index, part))
    try:
        yield
    finally:
        _restore_generators(saved)


@never_compiled
def _seed_generators(method: Evaluable, seed: int) -> tuple[Tensor, torch.device, Tensor | None]:
    """Seed the CPU generator and the parameters' CUDA device's; return their states before."""
    device = method.params[0].device
    saved = torch.get_rng_state(), device, None
    torch.random.default_generator.manual_seed(seed)
    if device.type == "cuda":
        saved = saved[0], device, torch.cuda.get_rng_state(device)
        torch.cuda.default_generators[device.index or 0].manual_seed(seed)
    return saved


@never_compiled
def _restore_generators(saved: tuple[Tensor, torch.device, Tensor | None]) -> None:
    cpu, device, cuda = saved
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)


def stream_seed(*key: int) -> int:
    """A 63-bit seed from integers (a hash: nearby keys give unrelated seeds)."""
    digest = hashlib.blake2b("/".join(map(str, key)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def check_batch(inputs: Inputs, targets: Tensor, device: torch.device) -> None:
    """One-line ``ValueError`` unless inputs and targets hold the same number of samples and lie on the
    parameters' ``device`` (metadata only: no host synchronisation)."""
    size = batch_size(inputs)
    if targets.dim() == 0 or targets.shape[0] != size:
        raise ValueError(f"the batch has {size} inputs but targets of shape {tuple(targets.shape)}")
    for what, where in (("inputs", device_of(inputs)), ("targets", targets.device)):
        if where != device:
            raise ValueError(
                f"the batch's {what} are on {where} but the model's parameters on {device}: "
                f"move the batch first (sampa.batch.to_device(inputs, device), targets.to(device))"
            )


def check_per_sample(losses: Tensor, size: int) -> None:
    """One-line ``ValueError`` unless ``loss_fn`` gave one loss per sample (``reduction="none"``): a
    scalar cannot tell a mean from a sum (a sum scales every step by the batch size), and per-sample
    values feed ESAM's sample selection and the data-parallel backends."""
    if tuple(losses.shape) != (size,):
        raise ValueError(
            f"loss_fn must return one loss per sample, shape ({size},), got shape {tuple(losses.shape)}: "
            f"use reduction='none' (e.g. sampa.losses.make_loss(0.1) or "
            f"torch.nn.functional.cross_entropy(logits, targets, reduction='none'))"
        )


def num_correct(logits: Tensor, targets: Tensor) -> Tensor:
    """Samples whose arg-max class is the target (a 0-d tensor, stays on the device)."""
    return (logits.detach().argmax(dim=1) == targets).sum()


def _differentiable_point(
    method: Evaluable, job: GradJob
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


def model_forward(
    method: Evaluable, model: nn.Module, inputs: Inputs, params: dict[str, Tensor] | None = None
) -> Tensor:
    """Logits of ``model`` (at ``params`` if given) as every pass computes them.

    With ``method.autocast`` set (the engine's fast path, e.g. ``torch.bfloat16``) the forward runs
    under ``torch.autocast`` and the logits are cast back to float32, so the loss and everything after
    it stay in float32 as in the reference path.
    """
    autocast = method.autocast
    device_type = device_of(inputs).type
    context = torch.autocast(device_type, dtype=autocast) if autocast else contextlib.nullcontext()
    with context:
        logits = call_model(model, inputs, params)
    return logits.float() if autocast else logits


def laid_out_like(grad: Tensor, param: Tensor) -> Tensor:
    """``grad`` with the parameter's strides, copied only if they differ."""
    return grad if grad.stride() == param.stride() else torch.empty_like(param).copy_(grad)


@dataclass
class PassCount:
    """Passes of one step: forward/backward passes, gradient computations run one after the other, and
    the "temporal cost" (independent gradients counted once; ``sampa.optim.contract.StepRecord``)."""

    forward: int = 0
    backward: int = 0
    sequential: int = 0
    ideal_sequential: int = 0

    def add(self, jobs: Sequence[GradJob], depth: int) -> None:
        """Count independent jobs of which ``depth`` ran one after the other."""
        self.forward += len(jobs)
        self.backward += sum(job.num_backward for job in jobs)
        self.sequential += depth
        self.ideal_sequential += 1 if jobs else 0


@never_compiled
def base_step(optimizer: torch.optim.Optimizer) -> None:
    """The base step, always eager: compiled, it would specialise on the learning rate and recompile."""
    optimizer.step()


def held_tensors(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    """Every tensor the optimizer holds, trainable or not, in its order."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def optimized_parameters(
    model: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[list[Tensor], list[str]]:
    """The optimizer's trainable parameters (in its order) and their names in the model."""
    names = {id(p): n for n, p in model.named_parameters()}
    params = held_tensors(optimizer)
    strangers = [p for p in params if id(p) not in names]
    if strangers:
        raise ValueError(
            f"the base optimizer holds a tensor of shape {tuple(strangers[0].shape)} that is not a parameter "
            f"of the model: build it from this model's parameters (model.parameters())"
        )
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("the base optimizer holds no trainable parameter of the model")
    return params, [names[id(p)] for p in params]


def _objectives(job: GradJob, logits: Tensor, loss_fn: LossFn, loss: Tensor) -> list[Tensor]:
    """Mean of each of the job's losses on the logits (the method's own loss is reused, not recomputed)."""
    if not job.losses:
        raise ValueError("GradJob.losses must name at least one loss (or be None for the method's loss)")
    return [loss if fn is loss_fn else fn(logits, job.targets).mean() for fn in job.losses]


def _scatter(params: Sequence[Tensor], wrt: Sequence[int], grads: Sequence[Tensor]) -> TensorList:
    if len(wrt) == len(params):
        return list(grads)
    out = [torch.zeros_like(p) for p in params]
    for i, g in zip(wrt, grads, strict=True):
        out[i] = g
    return out
