"""The opt-in fast path on one device: engine settings around an unchanged method.

Every flag off (the default) is the fp32 eager reference path. Each flag changes how the same math runs,
never what it computes; each is tested on CPU against the reference path to tolerance
(``tests/test_fastpath.py``):

* ``amp="bf16"``: forward passes (model + logits) under ``torch.autocast(dtype=bfloat16)``; the logits are
  cast back to float32, so the loss, the gradients (of the float32 parameters) and all method and
  optimizer math stay float32. Evaluation stays float32.
* ``channels_last``: model parameters and training batches in ``torch.channels_last`` memory format.
* ``cudnn_benchmark``: ``torch.backends.cudnn.benchmark`` for the run (restored afterwards; no effect on CPU).
* ``compile="model"``: ``nn.Module.compile()``: the model's forward (and, through AOTAutograd, its
  backward) compiled; parameter names, checkpoints and ``functional_call`` work as before.
* ``compile="step"``: ``torch.compile`` of the whole ``method.step`` (forward, backward with
  ``torch.autograd.grad`` traced into the graph by dynamo's ``trace_autograd_ops``, the fused executor's
  stacking, perturbation and combination). Two pieces stay eager on purpose, behind graph breaks: the
  base optimizer's step (one foreach/fused kernel call) and SAMPa's look-ahead, because both read the
  learning rate and step counts as Python numbers and would recompile at every schedule change.
  Dynamo recompiles only for a new batch shape (the last partial batch) and for each branch a method
  takes (SAMPa's first step, the fused executor's fallback). Default compile mode; CUDA graphs
  (``mode="reduce-overhead"``) are not used: methods keep tensors across steps (SAMPa's g_t, its
  previous batch) that a graph replay would overwrite.

* ``flat_buffers``: the method's parameters, points and gradients as one contiguous buffer each
  (``sampa.optim.flat``): vector math (norms, perturbations, combinations) is one kernel over the buffer,
  each gradient job differentiates one flat leaf, the two-device backend exchanges gradients without
  gathering pieces and the fused backend stacks points with one ``torch.stack``. Norms and dots sum in
  another order (round-off).

The base optimizer's implementation (``optimizer_impl``: torch's default, ``foreach`` or ``fused``
kernels) is chosen where the optimizer is built (``sampa.train.make_base_optimizer``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sampa.batch import Inputs
from sampa.optim import Method, StepRecord
from sampa.optim.eager import prepare_for_compile
from sampa.optim.flat import flatten_parameters

AMP_MODES = ("off", "bf16")
COMPILE_MODES = ("off", "model", "step")
OPTIMIZER_IMPLS = ("default", "foreach", "fused")

StepFn = Callable[..., StepRecord]

_AMP_DTYPES = {"off": None, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class FastPath:
    """How a run executes its steps; ``FastPath()`` is the reference path.

    ``compile_backend`` is torch.compile's backend ("inductor" generates kernels; tests use "aot_eager",
    which traces the same graphs without code generation).
    """

    amp: str = "off"
    channels_last: bool = False
    cudnn_benchmark: bool = False
    compile: str = "off"
    compile_backend: str = "inductor"
    flat_buffers: bool = False

    def __post_init__(self) -> None:
        for name, value, choices in (("amp", self.amp, AMP_MODES), ("compile", self.compile, COMPILE_MODES)):
            if value not in choices:
                raise ValueError(f"unknown {name} {value!r}; choose one of: {', '.join(choices)}")
        if self.compile == "step" and not hasattr(torch._dynamo.config, "trace_autograd_ops"):
            raise ValueError(
                f"compile 'step' needs torch.compile to trace torch.autograd.grad (torch {torch.__version__} "
                "cannot); use compile 'model'"
            )

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """The model in the chosen memory format, compiled in place for ``compile="model"``."""
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.compile == "model":
            model.compile(backend=self.compile_backend)
        return model

    def prepare_batch(self, inputs: Inputs) -> Inputs:
        """A training batch in the chosen memory format (image tensors only)."""
        if self.channels_last and isinstance(inputs, Tensor) and inputs.dim() == 4:
            return inputs.contiguous(memory_format=torch.channels_last)
        return inputs

    def prepare_method(self, method: Method) -> StepFn:
        """Set the method's forward precision (and flat buffers); return the function to call instead of
        ``method.step``. Call it before loading the method's state from a checkpoint."""
        method.autocast = _AMP_DTYPES[self.amp]
        if self.flat_buffers:
            flatten_parameters(method)
        if self.compile != "step":
            return method.step
        prepare_for_compile()  # the step meets the eager-only functions already disabled
        compiled = torch.compile(method.step, backend=self.compile_backend, dynamic=False)

        def step(*args: Tensor | None) -> StepRecord:
            with torch._dynamo.config.patch(trace_autograd_ops=True):
                return compiled(*args)

        return step

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Process-wide settings for the duration of a run (restored afterwards)."""
        previous = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = self.cudnn_benchmark or previous
        try:
            yield
        finally:
            torch.backends.cudnn.benchmark = previous


def optimizer_kwargs(impl: str) -> dict[str, bool]:
    """Keyword arguments selecting a ``torch.optim`` implementation: torch's default choice (for-loop on
    CPU, foreach on CUDA), ``foreach`` (multi-tensor kernels) or ``fused`` (one kernel per step)."""
    if impl not in OPTIMIZER_IMPLS:
        raise ValueError(f"unknown optimizer_impl {impl!r}; choose one of: {', '.join(OPTIMIZER_IMPLS)}")
    return {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}[impl]
