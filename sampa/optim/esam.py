r"""ESAM: Efficient Sharpness-aware Minimization (Du et al., ICLR 2022): SWP and SDS.

Algorithm (structure of the official code, optimizers.md §2.10):
    input: radius \rho, SWP keep probability \beta in (0, 1], SDS fraction \gamma in (0, 1],
           stabiliser \xi, base optimizer BaseOpt
    K       <- each parameter tensor kept independently with probability \beta   # SWP mask
    g_K     <- \nabla_K f(x_t; B_t); l_i(x_t) for i in B_t    # clean pass, backward into K only, updates BN
    e       <- (\rho / \beta) g_K / (||g_K|| + \xi) on K, 0 elsewhere    # only K is perturbed
    if \gamma < 1:                                            # SDS
        l_i(x_t + e) for i in B_t                            # forward without gradient, BN frozen
        B+  <- the int(\gamma |B_t|) samples with the largest l_i(x_t + e) - l_i(x_t)
    else:
        B+  <- B_t
    G       <- \nabla f(x_t + e; B+)                          # all tensors, BN running statistics frozen
    x_{t+1} <- BaseOpt(x_t, G)
Passes per step: 2 forward + 2 backward (the first backward only into K, the second on \gamma |B|
samples), plus 1 forward without gradient when \gamma < 1; temporal cost 2.

Defaults: \beta = 0.5 (SAMPa paper, App. B.4), \gamma = 1, i.e. SWP only: the SAMPa paper's timing
(§5.2, Figure 2, Table 4) used SWP alone, "as no efficiency advantage is observed compared to SAM
when SDS is included". The ESAM authors' scripts use \gamma = 0.5. \rho = 0.05 (SAM's CIFAR-10 value).

Deliberate deviations from the official code (dydjw9/Efficient_SAM, utils/Esam.py):
* The SWP mask is drawn at the start of each step from the method's seeded generator (the code draws
  the next step's mask at the end of a step and keeps all tensors on the first step), and it is
  conditioned on keeping at least one tensor (the code would fail on an empty mask).
* SDS keeps exactly int(\gamma |B|) samples (the code keeps those *strictly* above the k-th largest,
  i.e. k - 1 samples), and \gamma = 1 skips the SDS forward (the code skips it for \gamma >= 0.99).
* BatchNorm: only the clean pass updates the running statistics (the code updates them in all three
  forwards, two of them at perturbed weights). \xi = 1e-12 as in SAM (the code: 1e-7).
The mask is per tensor as in the code; the paper's summary describes per-coordinate masks, which save
no computation. SDS needs a per-sample loss (``reduction="none"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from sampa.batch import Inputs, select
from sampa.optim.checks import check_range
from sampa.optim.contract import GradResult, HyperparameterError
from sampa.optim.sam import SAM, SAMHparams
from sampa.optim.tensors import TensorList, add, normalized


@dataclass(frozen=True)
class ESAMHparams(SAMHparams):
    """beta: SWP probability of keeping a tensor in (0, 1] (1 = SWP off); gamma: SDS fraction of the
    batch used for the perturbed gradient in (0, 1] (1 = SDS off)."""

    beta: float = 0.5
    gamma: float = 1.0

    def check(self) -> None:
        super().check()
        check_range("beta", self.beta, 0.0, 1.0, low_open=True)
        check_range("gamma", self.gamma, 0.0, 1.0, low_open=True)


class ESAM(SAM):
    """SAM that perturbs a random subset of tensors (SWP) and descends on the sharpest samples (SDS)."""

    name = "esam"
    display_name = "ESAM"
    Hparams = ESAMHparams

    def ascent(self, g: TensorList) -> TensorList:
        """e = (rho / beta) g_K / (||g_K|| + xi); g is zero outside the kept tensors K."""
        return normalized(g, self.hp.rho / self.hp.beta, self.hp.eps)

    def swp_mask(self) -> list[int]:
        """Indices of the kept tensors: each with probability beta, at least one."""
        while True:
            keep = torch.rand(len(self.params), generator=self.rng) < self.hp.beta
            if keep.any():
                return keep.nonzero().flatten().tolist()

    def direction(self, inputs: Inputs, targets: Tensor) -> tuple[TensorList, GradResult, dict[str, Any]]:
        kept = self.swp_mask()  # K
        clean = self.gradient(inputs, targets, update_bn=True, wrt=kept)  # g_K = grad_K f(x_t; B_t)
        x_adv = add(self.current_point(), self.ascent(clean.grads))  # x_t + e, e = 0 outside K
        if self.hp.gamma < 1:
            inputs, targets = self.sharpness_sensitive_subset(inputs, targets, x_adv, clean)  # B+
        perturbed = self.gradient(inputs, targets, point=x_adv)  # G = grad f(x_t + e; B+)
        stats = {"swp_kept": len(kept) / len(self.params), "sds_kept": perturbed.count / max(clean.count, 1)}
        return perturbed.grads, clean, stats

    def sharpness_sensitive_subset(
        self, inputs: Inputs, targets: Tensor, x_adv: TensorList, clean: GradResult
    ) -> tuple[Inputs, Tensor]:
        """The int(gamma |B|) samples whose loss rises most from x_t to x_t + e (one extra forward)."""
        if clean.per_sample_loss is None:
            raise HyperparameterError("ESAM with gamma < 1 (SDS) needs a per-sample loss (reduction='none')")
        loss_adv = self.loss_fn(self.forward_only(inputs, point=x_adv), targets)  # l_i(x_t + e)
        k = max(1, int(self.hp.gamma * targets.shape[0]))
        chosen = torch.topk(loss_adv - clean.per_sample_loss, k).indices.sort().values
        return select(inputs, chosen), targets[chosen]
