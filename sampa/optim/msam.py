r"""mSAM (micro-batch-averaged SAM; Foret et al. 2021 §4, Behdin et al. 2023) and mSAM+SAMPa.

mSAM algorithm:
    input: radius \rho, micro-batch size m, stabiliser \xi, base optimizer BaseOpt
    split B_t into M = ceil(|B_t| / m) consecutive micro-batches B^1..B^M of near-equal size <= m
    g_j     <- \nabla f(x_t; B^j)                    for every j   # independent, each updates BN
    e_j     <- \rho g_j / (||g_j|| + \xi)                           # one perturbation per micro-batch
    h_j     <- \nabla f(x_t + e_j; B^j)              for every j   # independent, BN frozen
    G       <- sum_j (|B^j| / |B_t|) h_j                           # weighted by micro-batch size
    x_{t+1} <- BaseOpt(x_t, G)
Passes per step: 2M forward/backward passes of m samples (the FLOPs of SAM); temporal cost 2 (the M
gradients of each stage are independent jobs); sequential on one device: 2M small passes.
Memory: M gradients and M perturbed points alive at once (M x P each) so an executor may run the M
jobs together.

The m convention: m is the micro-batch *size* (Foret et al.'s m-sharpness), default 32 = the SAMPa
paper's Table 8 setting (App. B.4: "Size of micro batch m = 32", i.e. 4 micro-batches at batch 128).
App. B.5's "mSAM (m=2)" counts micro-batches instead: 2 GPUs with 64 samples each; on the two-device
backend that is ``micro_batch_size`` = the per-rank shard (64): the ascent jobs are marked ``local``
(each replica perturbs with its own shard's gradient), the perturbed gradients are averaged over replicas.
m >= |B_t| is SAM. The micro-batch count is recorded per step (``stats["micro_batches"]``).

BatchNorm (a confound, not a choice of the method): BN normalises each micro-batch with its own
statistics in both passes (ghost batch norm with m samples), so mSAM also changes the forward of the
network, not only the perturbation; every micro-batch's clean pass updates the running statistics
(M updates per step, each from m samples; as the per-replica update of a data-parallel run).

mSAM+SAMPa (``sampa-msam``, Table 8; the paper gives no code: this construction is ours). SAMPa-\lambda
whose perturbation is per micro-batch, computed from the y-gradient of that micro-batch:
    e_j       <- \rho g^j_t / (||g^j_t|| + \xi),  g^j_t = \nabla f(y_t; B^j_t)    # kept from the last step
    y_{t+1}   <- ModelUpdate_{m_t}(x_t, g_t),  g_t = sum_j w_j g^j_t
    h_j       <- \nabla f(x_t + e_j; B^j_t)           for every micro-batch of the previous batch
    g^j_{t+1} <- \nabla f(y_{t+1}; B^j_{t+1})          for every micro-batch of the new batch (update BN)
    G_t       <- (1 - \lambda) sum_j w_j h_j + \lambda sum_j w_j g^j_{t+1}
All 2M jobs are independent (temporal cost 1, as SAMPa); defaults \rho = 0.1 (twice mSAM's, App. B.4),
\lambda = 0.2, m = 32; memory: the M micro-batch y-gradients between steps. m >= |B| is SAMPa.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from sampa.batch import Inputs, split
from sampa.optim.checks import Hyperparameters, check_int
from sampa.optim.contract import GradJob, GradResult
from sampa.optim.sam import SAM, SAMHparams
from sampa.optim.sampa import SAMPa, SAMPaHparams
from sampa.optim.tensors import TensorList, add, weighted_sum

Batch = tuple[Inputs, Tensor]


def micro_batches(inputs: Inputs, targets: Tensor, size: int) -> list[Batch]:
    """M = ceil(|B| / size) consecutive micro-batches of near-equal sizes (at most ``size``, differing
    by at most one), so a partial batch gives no tiny remainder (BatchNorm needs > 1 sample)."""
    count = max(1, -(-targets.shape[0] // size))  # an empty shard (two devices, 1-sample batch) stays one
    return list(zip(split(inputs, count), targets.tensor_split(count), strict=True))


def size_weights(results: Sequence[GradResult]) -> list[float]:
    """|B^j| / |B| for each micro-batch result."""
    total = sum(r.count for r in results)
    return [r.count / total if total else 0.0 for r in results]


def merged(results: Sequence[GradResult]) -> GradResult:
    """One reporting result for the whole batch: size-weighted gradient and loss, summed correct."""
    weights = size_weights(results)
    return GradResult(
        grads=weighted_sum([r.grads for r in results], weights),
        loss=sum(w * r.loss for w, r in zip(weights, results, strict=True)),
        correct=sum(r.correct for r in results),
        count=sum(r.count for r in results),
    )


# ----------------------------------------------------------------------------------------------
# mSAM


@dataclass(frozen=True)
class MicroBatchHparams(Hyperparameters):
    """micro_batch_size: samples per micro-batch m (>= 1; m >= batch size is the host method)."""

    micro_batch_size: int = 32

    def check(self) -> None:
        super().check()
        check_int("micro_batch_size", self.micro_batch_size, 1)


@dataclass(frozen=True)
class MSAMHparams(MicroBatchHparams, SAMHparams):
    """SAM's hyperparameters plus micro_batch_size m (>= 1; m >= batch size is SAM)."""


class MSAM(SAM):
    """SAM with one perturbation per micro-batch; the perturbed gradients are averaged."""

    name = "msam"
    display_name = "mSAM"
    Hparams = MSAMHparams

    def direction(self, inputs: Inputs, targets: Tensor) -> tuple[TensorList, GradResult, dict[str, Any]]:
        shards = micro_batches(inputs, targets, self.hp.micro_batch_size)
        clean = self.gradients([GradJob(x, y, update_bn=True, local=True) for x, y in shards])  # g_j
        x_t = self.current_point()
        points = [add(x_t, self.ascent(c.grads)) for c in clean]  # x_t + e_j
        perturbed = self.gradients(
            [GradJob(x, y, point=p) for (x, y), p in zip(shards, points, strict=True)]
        )  # h_j = grad f(x_t + e_j; B^j)
        direction = weighted_sum([h.grads for h in perturbed], size_weights(perturbed))  # G
        return direction, merged(clean), {"micro_batches": float(len(shards))}


# ----------------------------------------------------------------------------------------------
# mSAM+SAMPa


@dataclass(frozen=True)
class MSAMPaHparams(MicroBatchHparams, SAMPaHparams):
    """SAMPa's hyperparameters plus micro_batch_size m (>= 1; m >= batch size is SAMPa)."""


class MSAMPa(SAMPa):
    """SAMPa-lambda with one perturbation per micro-batch, from that micro-batch's y-gradient."""

    name = "sampa-msam"
    display_name = "mSAM+SAMPa"
    Hparams = MSAMPaHparams
    whole_batch_jobs = False  # one job per micro-batch

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.g_y_micro: list[TensorList] | None = None  # g^j_t = grad f(y_t; B^j_t)

    def direction(self, inputs: Inputs, targets: Tensor) -> tuple[TensorList, GradResult, dict[str, Any]]:
        direction, report, stats = super().direction(inputs, targets)
        return direction, report, stats | {"micro_batches": float(len(self.g_y_micro or ()))}

    def perturbed_jobs(self, x: TensorList, batch: Batch) -> list[GradJob]:
        """h_j on B^j_t at x_t + e_j, e_j from g^j_t."""
        shards = micro_batches(*batch, self.hp.micro_batch_size)
        return [
            GradJob(*shard, point=add(x, self.ascent(g_j)))
            for shard, g_j in zip(shards, self.g_y_micro, strict=True)
        ]

    def extrapolation_jobs(self, batch: Batch, point: TensorList | None) -> list[GradJob]:
        """g^j_{t+1} on each micro-batch B^j_{t+1} at y_{t+1} (each updates BN statistics)."""
        shards = micro_batches(*batch, self.hp.micro_batch_size)
        return [self.extrapolation_job(*shard, point) for shard in shards]

    def merge(self, results: Sequence[GradResult]) -> GradResult:
        """sum_j w_j of the micro-batch results."""
        return merged(results)

    def remember(self, report: GradResult, extrapolated: Sequence[GradResult], batch: Batch) -> None:
        """g_{t+1} = sum_j w_j g^j_{t+1} and the g^j_{t+1} themselves, and B_{t+1}."""
        super().remember(report, extrapolated, batch)
        self.g_y_micro = [r.grads for r in extrapolated]

    def method_state(self) -> dict[str, Any]:
        return super().method_state() | {"g_y_micro": self.g_y_micro}

    def load_method_state(self, state: dict[str, Any]) -> None:
        super().load_method_state(state)
        micro = state["g_y_micro"]
        self.g_y_micro = None if micro is None else [self.load_vector(gs) for gs in micro]
