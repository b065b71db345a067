r"""SAMPa-\lambda: SAM Parallelized (Xie, Pethick, Cevher, NeurIPS 2024), Algorithms 1 and 2.

Algorithm (call t receives batch B_{t+1}; the method keeps B_t and g_t = \nabla f(y_t; B_t)):
    input: radius \rho, interpolation \lambda in [0, 1], stabiliser \xi, base optimizer with state m_t
    x~_t    <- x_t + \rho g_t / (||g_t|| + \xi)          # Alg. 2 line 3 (global norm)
    y_{t+1} <- ModelUpdate_{m_t}(x_t, g_t)               # Alg. 2 line 6: base rule, state m_t NOT advanced
    g~_t    <- \nabla f(x~_t; B_t)                       # \ these two are independent: a parallel
    g_{t+1} <- \nabla f(y_{t+1}; B_{t+1})                # / executor computes them at the same time
    G_t     <- (1 - \lambda) g~_t + \lambda g_{t+1}      # Alg. 2 line 9
    x_{t+1} <- BaseOpt(x_t, G_t)                         # Alg. 2 line 10 (advances m_t)
    keep g_{t+1} and B_{t+1}
Passes per step: 2 forward, 2 backward; temporal cost 1 (the two gradients are independent).

Batch indexing follows the official code (optimizers.md §2.3): the perturbation direction and the
perturbed gradient share a batch (the previous one), the extrapolated gradient uses the new batch.

Initialisation: Algorithm 1 needs g_0 = \nabla f(y_0; B_0) with y_0 = x_0. The first call computes
exactly that gradient on its batch and, as the official code does, also takes the base step with it
(with g_0 unknown, the perturbation is 0 and y_1 = x_0, so both gradients coincide); it then keeps
g_0 and B_0. So the first update is a base-optimizer step and costs one gradient.

Deviations from the official code, on purpose:
* \lambda = 0 is real SAMPa-0. The official code recovers \nabla f(y) on rank 0 by dividing by \lambda,
  which silently turns \lambda = 0 into SGD; here both gradients are kept (and exchanged whole by the
  two-device backend).
* BatchNorm running statistics come from the extrapolated pass at y_{t+1} (the unperturbed pass, on the
  newest batch); the perturbed pass leaves them untouched. The official code keeps the statistics of
  the perturbed passes on rank 0 (optimizers.md §2.3, an inference from DDP's source).
* y_{t+1} includes momentum and weight decay (Algorithm 2 line 6 and the official code); for AdamW it
  is the AdamW step from the current moments (see ``sampa.optim.lookahead``).

Reporting pass (loss/accuracy in the step record): the extrapolated pass on the newest batch.
Diagnostics (``diagnostics_every = n > 0``): every n-th step also computes \nabla f(x_t; B_t) and
records cos(\nabla f(y_t), \nabla f(x_t)) and ||\nabla f(y_t) - \nabla f(x_t)|| (paper Figure 4);
this adds one forward/backward to those steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from sampa.batch import Inputs, to_device
from sampa.optim.checks import check_int, check_range
from sampa.optim.contract import GradJob, GradResult, Hyperparameters, Method
from sampa.optim.tensors import TensorList, add, clone, combine, cosine, distance, normalized
from sampa.ranges import RHO, SAMPA_LAM

Batch = tuple[Inputs, Tensor]


@dataclass(frozen=True)
class SAMPaHparams(Hyperparameters):
    """rho: radius (paper: SAMPa-0 uses SAM's rho, SAMPa-0.2 twice SAM's: 0.1 on CIFAR-10);
    lam: interpolation lambda in [0, 1]; eps: norm stabiliser; diagnostics_every: Figure 4 probe period."""

    rho: float = 0.1
    lam: float = 0.2
    eps: float = 1e-12
    diagnostics_every: int = 0

    def check(self) -> None:
        check_range("rho", self.rho, **RHO)  # also the help of --rho and --lam
        check_range("lam", self.lam, **SAMPA_LAM)
        check_range("eps", self.eps, 0.0)
        check_int("diagnostics_every", self.diagnostics_every, 0)


class SAMPa(Method):
    """SAMPa-lambda; combinations with other SAM variants change :meth:`ascent`, and where needed
    :meth:`extrapolation_job` / :meth:`remember` (BiSAM+SAMPa also needs its surrogate's gradient at y),
    or the jobs of each stage and how their results :meth:`merge` (mSAM+SAMPa: one per micro-batch)."""

    name = "sampa"
    display_name = "SAMPa"
    label_hparam = "lam"
    Hparams = SAMPaHparams
    parallel_jobs = 2  # g~_t and g_{t+1}: one per device on the two-device backend
    whole_batch_jobs = True  # g~_t on B_t, g_{t+1} on B_{t+1} (combinations with micro-batches: False)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.label_hparam = vars(cls).get("label_hparam")  # the combinations are named without lambda

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.g_y: TensorList | None = None  # g_t = grad f(y_t; B_t)
        self.prev_batch: Batch | None = None  # B_t

    def ascent(self, g_y: TensorList) -> TensorList:
        """e = rho g_t / (||g_t|| + xi)."""
        return normalized(g_y, self.hp.rho, self.hp.eps)

    def direction(self, inputs: Inputs, targets: Tensor) -> tuple[TensorList, GradResult, dict[str, Any]]:
        batch = (inputs, targets)  # B_{t+1}
        if self.g_y is None or self.prev_batch is None:
            return self._initial_direction(batch)
        x = self.current_point()
        y_next = self.lookahead(self.g_y)  # y_{t+1} = ModelUpdate_{m_t}(x_t, g_t)
        perturbed_jobs = self.perturbed_jobs(x, self.prev_batch)  # g~_t on B_t at x~_t
        extrapolation_jobs = self.extrapolation_jobs(batch, y_next)  # g_{t+1} on B_{t+1} at y_{t+1}
        probe = self._probe_due()
        probe_jobs = [GradJob(*self.prev_batch)] if probe else []  # grad f(x_t; B_t), Figure 4 only
        results = self.gradients([*perturbed_jobs, *extrapolation_jobs, *probe_jobs])
        split = len(perturbed_jobs)
        perturbed = self.merge(results[:split])
        extrapolated = results[split : split + len(extrapolation_jobs)]
        report = self.merge(extrapolated)
        stats = _probe_stats(self.g_y, results[-1].grads) if probe else {}
        direction = combine(perturbed.grads, report.grads, 1 - self.hp.lam, self.hp.lam)  # G_t
        self.remember(report, extrapolated, batch)
        return direction, report, stats

    def perturbed_jobs(self, x: TensorList, batch: Batch) -> list[GradJob]:
        """g~_t = grad f(x~_t; B_t) at x~_t = x_t + e, e = rho g_t / ||g_t|| (:meth:`ascent`)."""
        return [GradJob(*batch, point=add(x, self.ascent(self.g_y)))]

    def extrapolation_jobs(self, batch: Batch, point: TensorList | None) -> list[GradJob]:
        """The passes at y_{t+1} on B_{t+1} (``point=None``: y_0 = x_0)."""
        return [self.extrapolation_job(*batch, point)]

    def extrapolation_job(self, inputs: Inputs, targets: Tensor, point: TensorList | None) -> GradJob:
        """The pass at y_{t+1} on B_{t+1}; it updates BN statistics."""
        return GradJob(inputs, targets, point=point, update_bn=True)

    def merge(self, results: Sequence[GradResult]) -> GradResult:
        """One gradient (and reporting values) from the results of one stage's jobs (SAMPa: one job)."""
        (result,) = results
        return result

    def remember(self, report: GradResult, extrapolated: Sequence[GradResult], batch: Batch) -> None:
        """Keep g_{t+1} = grad f(y_{t+1}; B_{t+1}) (``report``, merged from ``extrapolated``) and B_{t+1}."""
        self.g_y, self.prev_batch = report.grads, batch

    def _initial_direction(self, batch: Batch) -> tuple[TensorList, GradResult, dict[str, Any]]:
        """g_0 = grad f(x_0; B_0), and a base step with it."""
        results = self.gradients(self.extrapolation_jobs(batch, None))
        report = self.merge(results)
        self.remember(report, results, batch)
        return clone(report.grads), report, {}

    def _probe_due(self) -> bool:
        every = self.hp.diagnostics_every
        return every > 0 and self.step_count % every == 0

    def method_state(self) -> dict[str, Any]:
        batch = None if self.prev_batch is None else list(self.prev_batch)
        return {"g_y": self.g_y, "prev_batch": batch}

    def load_method_state(self, state: dict[str, Any]) -> None:
        device = self.params[0].device
        self.g_y = self.load_vector(state["g_y"])
        batch = state["prev_batch"]
        self.prev_batch = None if batch is None else (to_device(batch[0], device), batch[1].to(device))


def _probe_stats(g_y: TensorList, g_x: TensorList) -> dict[str, Tensor]:
    """cos and distance between grad f(y_t; B_t) and grad f(x_t; B_t) (paper Figure 4)."""
    return {"grad_cosine": cosine(g_y, g_x), "grad_distance": distance(g_y, g_x)}
