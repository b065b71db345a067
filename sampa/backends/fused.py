r"""The fused single-device backend: independent gradient jobs in ONE batched forward/backward.

SAMPa's two gradients per step, \nabla f(x~_t; B_t) and \nabla f(y_{t+1}; B_{t+1}), are independent.
On one device they can run as one pass over two replicas of the model (horizontal fusion):

    W   <- stack(w^(1), ..., w^(n))                   # one [n, ...] tensor per parameter: the jobs' points
    S   <- stack(s, ..., s)                           # BatchNorm buffers, one copy per replica
    X   <- stack(B^(1), ..., B^(n))                   # each replica its own batch (equal sizes)
    Z   <- vmap(functional_call(model))(W, S, X)      # convs become grouped convs, BN per replica
    L   <- sum_k mean_i loss(Z_k,i)                   # replicas share nothing, so
    dW  <- grad(L, W)                                 # dW[k] = \nabla mean loss of job k alone
    s   <- S[k*] where job k* has update_bn=True      # the project's BN policy; other copies dropped

Each replica normalises with its own batch statistics, exactly as the sequential path does; only the
job marked ``update_bn=True`` (SAMPa's extrapolated pass at y_{t+1}) writes its running statistics
back, and the copies of the other replicas are discarded (the sequential path freezes them instead).
The method is unchanged: it still asks for ``GradJob``s and gets ``GradResult``s in job order.

Falls back to sequential evaluation (and says so through ``depth``, hence in every step record's
``sequential`` count) when jobs cannot be stacked: a single job (SGD, SAM's dependent passes, ...),
unequal batch shapes (SAMPa at the end of an epoch: the last partial batch and the kept previous full
batch, twice per epoch), restricted gradients (``wrt``), several losses per job (``losses``, e.g.
BiSAM+SAMPa's surrogate), or more than one job updating BatchNorm statistics.
``local`` means nothing on one device and is ignored, as in the sequential executor.

Dropout draws different masks in each replica (``vmap(randomness="different")``), as the sequential path
draws one mask per pass. They come from torch's global generator, not from the jobs' own seeds
(``evaluation.mask_stream``; one batched draw cannot take a generator per replica), so on a model with
dropout a fused step equals a sequential one in distribution, not in value (measured: SAMPa on a small
CNN with dropout 0.3, 1e-2 apart in the parameters after six steps; 3e-8 without dropout). It is as
reproducible: a run checkpoints the global generators, so a resumed run draws the same masks. The zoo's
only models with dropout are the BERTs, and Hugging Face BERT cannot be batched (``UNBATCHABLE_MODELS``):
the configuration refuses ``backend: fused`` for it.

On a CPU the fused pass is slower than two sequential ones (grouped convolutions are compute-bound
there); it pays off on a GPU, where a ResNet-56 step at batch 128 is mostly launch overhead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from sampa import batch
from sampa.backends.single import SingleDevice
from sampa.models.pretrained import TEXT_MODEL_NAMES
from sampa.optim import GradJob, GradResult, Method, SequentialExecutor
from sampa.optim.evaluation import laid_out_like, model_forward, num_correct
from sampa.optim.flat import FlatVector, as_flat
from sampa.optim.tensors import TensorList

#: models ``torch.func.vmap`` cannot batch: the text models, each a Hugging Face BERT, which chooses its
#: attention mask with data-dependent control flow (``transformers.masking_utils``) that vmap rejects.
#: Derived, so a new text model is refused until it is shown to batch (then list those that cannot here)
UNBATCHABLE_MODELS = TEXT_MODEL_NAMES


class FusedExecutor(SequentialExecutor):
    """Evaluates stackable independent jobs in one vmapped forward/backward, others one by one.

    Which ran how shows in every step record: ``sequential`` is 1 for a fused pass and the number of
    jobs for a fallback (kept out of Python counters so ``torch.compile`` need not guard on them).
    """

    def can_fuse(self, jobs: Sequence[GradJob]) -> bool:
        """Whether ``jobs`` can run as one pass (see the module docstring for the fallbacks)."""
        if len(jobs) < 2 or any(job.wrt is not None or job.losses is not None for job in jobs):
            return False
        if sum(job.update_bn for job in jobs) > 1:
            return False
        shapes = {(batch.signature(job.inputs), job.targets.shape) for job in jobs}
        return len(shapes) == 1

    def depth(self, jobs: Sequence[GradJob]) -> int:
        """Gradient computations that run one after the other for these jobs."""
        return 1 if self.can_fuse(jobs) else len(jobs)

    def evaluate(self, method: Method, jobs: Sequence[GradJob]) -> list[GradResult]:
        if not self.can_fuse(jobs):
            return super().evaluate(method, jobs)
        return evaluate_fused(method, jobs)


def evaluate_fused(method: Method, jobs: Sequence[GradJob]) -> list[GradResult]:
    """One forward/backward over len(jobs) stacked replicas; results in job order."""
    model, n = method.model, len(jobs)
    points = [method.current_point() if job.point is None else job.point for job in jobs]
    leaves, stacked, gradient = _stacked_points(method, points)
    params = dict(zip(method.param_names, stacked, strict=True))
    buffers = {name: torch.stack([b] * n) for name, b in model.named_buffers()}  # one copy per replica
    inputs = batch.stack([job.inputs for job in jobs])

    def replica(params: dict[str, Tensor], buffers: dict[str, Tensor], x: batch.Inputs) -> Tensor:
        return model_forward(method, model, x, {**params, **buffers})

    with _VmapAutocast(method.autocast) if method.autocast else contextlib.nullcontext():
        logits = torch.func.vmap(replica, randomness="different")(params, buffers, inputs)
    per_sample = [method.loss_fn(logits[k], job.targets) for k, job in enumerate(jobs)]
    losses = [loss.mean() for loss in per_sample]
    grads = torch.autograd.grad(torch.stack(losses).sum(), leaves)  # dW[k] = grad of job k's own loss
    _write_back_bn_stats(model, buffers, jobs)
    return [
        GradResult(
            grads=gradient(grads, k),
            loss=losses[k].detach(),
            correct=num_correct(logits[k], job.targets),
            count=job.targets.shape[0],
            per_sample_loss=per_sample[k].detach() if per_sample[k].dim() > 0 else None,
        )
        for k, job in enumerate(jobs)
    ]


def _stacked_points(
    method: Method, points: Sequence[Sequence[Tensor]]
) -> tuple[list[Tensor], list[Tensor], Callable[[Sequence[Tensor], int], TensorList]]:
    """The leaves to differentiate, one ``[n, ...]`` tensor per parameter (the n points stacked), and how
    replica k's gradient is read from the leaves' gradients.

    With flat buffers the n points are one ``[n, numel]`` leaf (one stack; replica k's gradient is row k,
    a FlatVector); otherwise one stacked leaf per parameter.
    """
    flat = method.flat
    if flat is not None:
        leaf = torch.stack([as_flat(point, flat.layout) for point in points]).requires_grad_(True)
        return [leaf], flat.layout.views(leaf), lambda grads, k: FlatVector(grads[0][k], flat.layout)
    stacked = [
        torch.stack([p.detach() for p in replicas]).requires_grad_(True)
        for replicas in zip(*points, strict=True)
    ]

    def gradient(grads: Sequence[Tensor], k: int) -> TensorList:
        return [laid_out_like(g[k], p) for g, p in zip(grads, method.params, strict=True)]

    return stacked, stacked, gradient


class _VmapAutocast(TorchFunctionMode):
    """torch.autocast's casts for convolutions and linear layers, applied before vmap sees them.

    Under ``vmap`` with per-replica weights these ops reach the kernels without passing through autocast
    (vmap rewrites them below the autocast dispatch level), and BatchNorm's batching rule rejects a
    bfloat16 input with float32 weights. This mode casts the floating-point arguments of convolutions
    and linear layers to the autocast dtype (autocast's own policy for them) and runs BatchNorm in
    float32 on the upcast input, returning the input's dtype (what BatchNorm kernels do internally).
    """

    _LOWER_PRECISION = frozenset(
        {F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d, F.linear}
    )

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype

    def __torch_function__(
        self, func: Callable[..., Any], types: tuple, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if func in self._LOWER_PRECISION:
            args = tuple(self._cast(a) for a in args)
            kwargs = {k: self._cast(v) for k, v in kwargs.items()}
        elif func is F.batch_norm:
            x = args[0]
            return func(x.float(), *args[1:], **kwargs).to(x.dtype)
        return func(*args, **kwargs)

    def _cast(self, value: object) -> object:
        if isinstance(value, Tensor) and value.is_floating_point():
            return value.to(self.dtype)
        return value


@torch.no_grad()
def _write_back_bn_stats(model: torch.nn.Module, stacked: dict[str, Tensor], jobs: Sequence[GradJob]) -> None:
    """Keep the buffers of the replica whose job has ``update_bn`` (if any); drop the other copies."""
    keep = [k for k, job in enumerate(jobs) if job.update_bn]
    named = list(model.named_buffers())
    if keep and named:
        torch._foreach_copy_([buffer for _, buffer in named], [stacked[name][keep[0]] for name, _ in named])


class FusedSingleDevice(SingleDevice):
    """One process on one device whose executor fuses independent gradient jobs (``--backend fused``).

    A method without independent jobs (SGD, SAM, ...) runs exactly as on ``SingleDevice``: the backend then
    gains nothing (its steps show ``sequential == forward`` in the log's ``passes_per_step``).
    """

    def __init__(self, device: torch.device) -> None:
        super().__init__(device, FusedExecutor())
