r"""SAF and MESA: Sharpness-Aware Training for Free (Du, Zhou, Feng, Tan, Zhou; NeurIPS 2022).

Both drop SAM's ascent step and add a *trajectory loss* instead: a KL term that keeps the current
outputs close to outputs from earlier in training (the paper's stand-in for sharpness).

SAF (Alg. 1; 0-based epochs e, each sample i has a dataset index):
    input: coefficient \lambda, temperature \tau, lag E~, start epoch E_start, base optimizer BaseOpt
    z       <- f(x_t; B_t)                                      # the one training forward
    L       <- mean_i l(z_i, y_i)
               + [e >= E_start] \lambda \tau^2 mean_i KL( softmax(z^_i^{e-E~} / \tau) || softmax(z_i / \tau) )
    G       <- \nabla L                                         # the one backward
    z^_i^e  <- z_i (detached)                                   # logits table, slot e mod (E~ + 1)
    x_{t+1} <- BaseOpt(x_t, G)
MESA (Alg. 1 lines 7-11, Eq. 12): the KL target is the output of an EMA model instead,
    v       <- \beta v + (1 - \beta) x_{t+1}   after every update, v = x_0 at the start
    L       <- mean_i l(z_i, y_i)
               + [e >= E_start] \lambda \tau^2 mean_i KL( softmax(f(v; x_i) / \tau) || softmax(z_i / \tau) )
Passes per step: SAF 1 forward + 1 backward (temporal cost 1); MESA the same plus one forward without
gradient through the EMA model from E_start on (temporal cost 1, as the paper's Figure 2a counts it).
Memory: SAF a logits table of N x (E~ + 1) x C floats on the training device (CIFAR-10: 7 MB);
MESA one model copy (parameters and buffers).

Defaults: SAF \lambda = 0.3, \tau = 5, E~ = 3, E_start = 5 (SAF paper §4.1; the SAMPa paper lists no
SAF values); MESA \lambda = 0.8, \tau = 5, E_start = 5, \beta = 0.9995 (SAMPa paper, App. B.4).

BatchNorm: the single training pass updates the running statistics; MESA's EMA model is evaluated in
eval mode (its averaged running statistics, as timm's ModelEmaV2 in the official code).

Deliberate deviations from the official code (optimizers.md §2.8-2.9):
* The term starts at 0-based epoch E_start (the paper's e > E_start, 1-based); the code's
  ``epoch > kl_start_epoch`` starts one epoch later. There is no end epoch (the code's kl_end_epoch
  is past the end of training).
* \lambda is applied once and the code's \tau^2 is kept (the paper's Eq. 8 and Alg. 1 read literally give
  \lambda^2 and no \tau^2).
* SAF: a sample without a recorded output from exactly E~ epochs ago (e.g. the first E~ epochs, or a
  sample not seen then) gets no KL term; the code's fixed table would give it a zero-logit target.
* MESA: the EMA model is only evaluated while the term is active (the code evaluates it every step);
  its integer buffers (BN's num_batches_tracked) are copied, not averaged.
* The reported training loss is the data loss (without the trajectory term, which goes to
  ``stats["trajectory_kl"]``), comparable across methods.
Both need ``start_epoch`` (the engine calls it): a loop that never calls it stays at epoch 0 and trains
with the data loss alone unless E_start = 0 (SAF: and even then no target is ever E~ epochs old).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from sampa.batch import Inputs
from sampa.optim.checks import check_int, check_range
from sampa.optim.contract import GradJob, GradResult, Hyperparameters, LossFn, Method
from sampa.optim.tensors import TensorList


def trajectory_kl(logits: Tensor, target_logits: Tensor, temperature: float) -> Tensor:
    """Per-sample KL( softmax(target / tau) || softmax(logits / tau) ); the target carries no gradient."""
    log_q = torch.log_softmax(logits.float() / temperature, dim=1)
    log_p = torch.log_softmax(target_logits.detach().float() / temperature, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


@torch.no_grad()
def ema_update(average: nn.Module, model: nn.Module, decay: float) -> None:
    """average <- decay * average + (1 - decay) * model over every floating state entry (parameters and
    buffers); integer buffers are copied."""
    avg_state, state = average.state_dict(), model.state_dict()
    floating = [k for k, v in state.items() if v.is_floating_point()]
    torch._foreach_lerp_([avg_state[k] for k in floating], [state[k] for k in floating], 1 - decay)
    for key, value in state.items():
        if not value.is_floating_point():
            avg_state[key].copy_(value)


@dataclass(frozen=True)
class TrajectoryHparams(Hyperparameters):
    """lam: weight of the trajectory term (>= 0); temperature: softmax temperature tau (> 0);
    e_start: first 0-based epoch with the term."""

    lam: float = 0.3
    temperature: float = 5.0
    e_start: int = 5

    def check(self) -> None:
        check_range("lam", self.lam, 0.0)
        check_range("temperature", self.temperature, 0.0, low_open=True)
        check_int("e_start", self.e_start, 0)


class TrajectoryMethod(Method):
    """One forward/backward of the data loss plus lam tau^2 KL(target || current) once e >= E_start.

    Subclasses give the target outputs (:meth:`trajectory_targets`) and may record the pass's outputs.
    """

    Hparams = TrajectoryHparams

    def trajectory_targets(self, inputs: Inputs) -> tuple[Tensor, Tensor | None] | None:
        """(target logits, per-sample weight or None) for this batch, or None for no term."""
        raise NotImplementedError

    def record(self, logits: Tensor) -> None:
        """Called with the training pass's detached outputs (SAF keeps them)."""

    def direction(self, inputs: Inputs, targets: Tensor) -> tuple[TensorList, GradResult, dict[str, Any]]:
        target = self.trajectory_targets(inputs) if self.epoch >= self.hp.e_start else None
        losses = None if target is None else [self.trajectory_loss(*target)]  # G = grad L
        result = self.gradients([GradJob(inputs, targets, update_bn=True, losses=losses)])[0]
        if result.logits is None:
            raise RuntimeError(f"{self.display_name} needs an executor that returns the pass's logits")
        self.record(result.logits)
        if target is None:
            return result.grads, result, {}
        kl = trajectory_kl(result.logits, target[0], self.hp.temperature)
        kl = kl if target[1] is None else kl * target[1]
        return result.grads, result, {"trajectory_kl": kl.mean()}  # result.loss: the data loss

    def trajectory_loss(self, target_logits: Tensor, weight: Tensor | None) -> LossFn:
        """Per-sample l(z, y) + lam tau^2 [weight] KL(softmax(target/tau) || softmax(z/tau))."""
        coef = self.hp.lam * self.hp.temperature**2

        def loss(logits: Tensor, targets: Tensor) -> Tensor:
            kl = trajectory_kl(logits, target_logits, self.hp.temperature)
            return self.loss_fn(logits, targets) + coef * (kl if weight is None else weight * kl)

        return loss


# ----------------------------------------------------------------------------------------------
# SAF


@dataclass(frozen=True)
class SAFHparams(TrajectoryHparams):
    """lag: E~, the target is the sample's output from ``lag`` epochs earlier (>= 1)."""

    lag: int = 3

    def check(self) -> None:
        super().check()
        check_int("lag", self.lag, 1)


class SAF(TrajectoryMethod):
    """Trajectory loss against each sample's recorded outputs from E~ epochs ago."""

    name = "saf"
    display_name = "SAF"
    Hparams = SAFHparams
    needs_indices = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.table: Tensor | None = None  # [N, E~+1, C] recorded logits, grown on demand
        self.recorded_epoch: Tensor | None = None  # [N, E~+1] epoch of each entry, -1 = empty

    def trajectory_targets(self, inputs: Inputs) -> tuple[Tensor, Tensor | None] | None:
        if self.table is None:
            return None
        indices = self._indices()
        self._reserve(int(indices.max()) + 1)
        source_epoch = self.epoch - self.hp.lag
        slot = source_epoch % (self.hp.lag + 1)
        valid = self.recorded_epoch[indices, slot] == source_epoch
        return self.table[indices, slot], valid.to(self.table.dtype)

    def record(self, logits: Tensor) -> None:
        indices = self._indices()
        indices, logits = self.executor.share_rows(indices, logits)  # data parallel: every replica's samples
        if self.table is None:
            dtype = torch.promote_types(logits.dtype, torch.float32)  # at least fp32 under autocast
            self.table = logits.new_zeros((0, self.hp.lag + 1, logits.shape[1]), dtype=dtype)
            self.recorded_epoch = torch.full((0, self.hp.lag + 1), -1, device=logits.device)
        self._reserve(int(indices.max()) + 1)
        slot = self.epoch % (self.hp.lag + 1)
        self.table[indices, slot] = logits.to(self.table.dtype)
        self.recorded_epoch[indices, slot] = self.epoch

    def _indices(self) -> Tensor:
        if self.batch_indices is None:  # step() already refuses a call without indices
            raise ValueError("SAF needs the samples' dataset indices")
        return self.batch_indices.to(self.params[0].device)

    def _reserve(self, size: int) -> None:
        """Grow the table to hold sample indices < size (the dataset size is not known up front)."""
        if self.table is None or self.recorded_epoch is None:
            return
        missing = size - self.table.shape[0]
        if missing > 0:
            self.table = torch.cat([self.table, self.table.new_zeros((missing, *self.table.shape[1:]))])
            self.recorded_epoch = torch.cat(
                [self.recorded_epoch, self.recorded_epoch.new_full((missing, self.hp.lag + 1), -1)]
            )

    def method_state(self) -> dict[str, Any]:
        return {"table": self.table, "recorded_epoch": self.recorded_epoch}

    def load_method_state(self, state: dict[str, Any]) -> None:
        device = self.params[0].device
        self.table = None if state["table"] is None else state["table"].to(device)
        epochs = state["recorded_epoch"]
        self.recorded_epoch = None if epochs is None else epochs.to(device)


# ----------------------------------------------------------------------------------------------
# MESA


@dataclass(frozen=True)
class MESAHparams(TrajectoryHparams):
    """beta: EMA decay of the teacher model in (0, 1)."""

    lam: float = 0.8
    beta: float = 0.9995

    def check(self) -> None:
        super().check()
        check_range("beta", self.beta, 0.0, 1.0, low_open=True, high_open=True)


class MESA(TrajectoryMethod):
    """Trajectory loss against an exponential moving average of the model (memory-efficient SAF)."""

    name = "mesa"
    display_name = "MESA"
    Hparams = MESAHparams

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.teacher: nn.Module | None = None  # the EMA model v, created at the first step (v = x_0)

    def trajectory_targets(self, inputs: Inputs) -> tuple[Tensor, Tensor | None] | None:
        return self.forward_only(inputs, model=self._teacher()), None  # f(v; B_t), counted forward

    def direction(self, inputs: Inputs, targets: Tensor) -> tuple[TensorList, GradResult, dict[str, Any]]:
        self._teacher()  # v starts at the weights of the first update's x_t
        return super().direction(inputs, targets)

    def apply_update(self, direction: TensorList) -> None:
        super().apply_update(direction)
        ema_update(self._teacher(), self.model, self.hp.beta)  # v <- beta v + (1 - beta) x_{t+1}

    def _teacher(self) -> nn.Module:
        if self.teacher is None:
            self.teacher = copy.deepcopy(self.model).eval().requires_grad_(False)
        return self.teacher

    def method_state(self) -> dict[str, Any]:
        return {"teacher": None if self.teacher is None else self.teacher.state_dict()}

    def load_method_state(self, state: dict[str, Any]) -> None:
        if state["teacher"] is not None:
            self._teacher().load_state_dict(state["teacher"])
