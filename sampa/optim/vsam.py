r"""vSAM: Effective Gradient Sample Size via Variation Estimation for Accelerating Sharpness-aware
Minimization (Deng, Pang, Zhang, Wang; arXiv 2403.08821).

SAM's gradient is g_s = g + PSF, with the PSF ("projection of the second-order gradient matrix onto
the first-order gradient") = g_s - g ~ \rho H g / ||g||. vSAM computes the PSF only on *sampling* steps
and reuses it, with decaying weight, on the others; the sampling rate adapts to the trend of the PSF.

Algorithm (follows the official code, optimizers.md §2.12):
    input: radius \rho, window K, variance blocks b, maximal rate p_max, rate gains \alpha_n, \alpha_v,
           reuse decay \gamma, reuse steps r, statistics on the last N tensors, warm-up epochs E_w
    g       <- \nabla f(x_t; B_t)                             # every step, updates BN running statistics
    if sampling step (see the schedule):
        g_s <- \nabla f(x_t + \rho g / (||g|| + \xi); B_t)      # BN running statistics frozen
        PSF <- g_s - g;  j <- 0                                 # kept until the next sampling step
        append ||PSF_N|| to W_norm, ||PSF_N|| / ||g_N|| to W_ratio (last K values; _N = last N tensors)
        append the mean within-block variance of sorted(W_norm) (b blocks) to W_var (last K values)
        G   <- g_s
    else if j < r:  j <- j + 1;  G <- g + \gamma^j PSF              # reuse the last PSF, decaying
    else:           G <- g
    x_{t+1} <- BaseOpt(x_t, G)
Schedule: every step of the first E_w epochs samples. Afterwards, with n = 1, 2, ... counting steps:
    if n mod K == 0:                                            # window boundary
        r_n <- clip(mean relative change of consecutive W_ratio entries, -1, 1)
        r_v <- clip(mean relative change of consecutive W_var entries, -1, 1)
        S   <- clip(S (1 + \alpha_n r_n + \alpha_v r_v), 1, floor(K p_max));  p <- S / K;  c <- 0
    sample  <- (c < floor(S) and u >= 1 - p) or (K - n mod K <= floor(S) - c),  u ~ U(0, 1)
    c <- c + 1 on every sampling step (the warm-up leaves c = 1); S starts at 1, p at 1/2.
So about floor(S) of every K steps sample, S growing while the PSF ratio and its variance grow.
Passes per step: 2 forward/backward on sampling steps, 1 otherwise; the average is 1 + the sampling
rate, recorded per step (``sam_step``, ``sampling_rate`` = S/K, 1 in the warm-up).

Defaults (train_vsam.py): \rho = 0.05, K = 50, b = 5, p_max = 0.8, \alpha_n = \alpha_v = 0.13,
\gamma = 0.7 with r = 6 reuse steps (the code's test c > \gamma^6), N = 10, E_w = 3.
The vSAM paper names the rate gain \alpha and the reuse control \gamma (their paper defaults are UNVERIFIED).

Deliberate deviations from the official code:
* u is drawn every post-warm-up step from the method's seeded generator (the code draws Python's
  unseeded ``random`` only when c < floor(S)); the seed makes runs reproducible.
* Windows hold only recorded values (the code pre-fills them with zeros and would divide by zero if
  fewer than K samples precede the first boundary, e.g. a warm-up shorter than K steps); relative
  changes skip zero denominators, and the variance uses the blocks holding >= 2 values (0 if none).
* Window statistics are host floats (one device synchronisation per sampling step).
A loop that never calls ``start_epoch`` stays in the warm-up (every step samples, i.e. SAM) unless E_w = 0.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from sampa.batch import Inputs
from sampa.optim.checks import check_int, check_range
from sampa.optim.contract import GradResult, HyperparameterError
from sampa.optim.sam import SAM, SAMHparams
from sampa.optim.tensors import TensorList, add, global_norm


@dataclass(frozen=True)
class VSAMHparams(SAMHparams):
    """window: K (>= 2); var_blocks: b (window // var_blocks >= 2); max_rate: p_max in (0, 1];
    alpha_norm, alpha_var: rate gains (>= 0); gamma: reuse decay in [0, 1]; reuse_steps: r (>= 0);
    last_layers: N (>= 1); warmup_epochs: E_w (>= 0)."""

    window: int = 50
    var_blocks: int = 5
    max_rate: float = 0.8
    alpha_norm: float = 0.13
    alpha_var: float = 0.13
    gamma: float = 0.7
    reuse_steps: int = 6
    last_layers: int = 10
    warmup_epochs: int = 3

    def check(self) -> None:
        super().check()
        check_int("window", self.window, 2)
        check_int("var_blocks", self.var_blocks, 1)
        check_range("max_rate", self.max_rate, 0.0, 1.0, low_open=True)
        check_range("alpha_norm", self.alpha_norm, 0.0)
        check_range("alpha_var", self.alpha_var, 0.0)
        check_range("gamma", self.gamma, 0.0, 1.0)
        check_int("reuse_steps", self.reuse_steps, 0)
        check_int("last_layers", self.last_layers, 1)
        check_int("warmup_epochs", self.warmup_epochs, 0)
        if self.window // self.var_blocks < 2:
            raise HyperparameterError(
                f"window // var_blocks must be >= 2 (got window={self.window}, var_blocks={self.var_blocks})"
            )
        if math.floor(self.window * self.max_rate) < 1:
            raise HyperparameterError(
                f"window * max_rate must be >= 1 (got window={self.window}, max_rate={self.max_rate!r})"
            )


def mean_relative_change(values: list[float]) -> float:
    """Mean of (v[i+1] - v[i]) / v[i] over consecutive pairs with v[i] != 0 (0 if there is none)."""
    changes = [(b - a) / a for a, b in itertools.pairwise(values) if a != 0]
    return sum(changes) / len(changes) if changes else 0.0


def blocked_variance(values: list[float], blocks: int) -> float:
    """Mean unbiased variance within ``blocks`` consecutive blocks of the sorted values (robust spread)."""
    chunks = torch.tensor(sorted(values), dtype=torch.float64).tensor_split(blocks)
    variances = [float(c.var()) for c in chunks if c.numel() >= 2]
    return sum(variances) / len(variances) if variances else 0.0


@dataclass
class SamplingSchedule:
    """vSAM's sampling-rate controller (host state only): S, p, the window count c and the windows."""

    window: int
    var_blocks: int
    max_rate: float
    alpha_norm: float
    alpha_var: float
    rate: float = 1.0  # S: sampling steps per window
    probability: float = 0.5  # p = S / K (1/2 until the first window boundary, as the code)
    sampled_in_window: int = 0  # c
    step: int = 1  # n, counts post-warm-up steps
    norms: list[float] = field(default_factory=list)  # W_norm
    ratios: list[float] = field(default_factory=list)  # W_ratio
    variances: list[float] = field(default_factory=list)  # W_var

    def decide(self, warmup: bool, u: float) -> bool:
        """Whether this step samples the PSF; advances the schedule by one step."""
        if warmup:
            self.sampled_in_window = 0  # record() counts this step: the warm-up leaves c = 1
            return True
        K = self.window
        if self.step % K == 0:
            self.update_rate()
        quota = math.floor(self.rate)
        sample = (self.sampled_in_window < quota and u >= 1 - self.probability) or (
            K - self.step % K <= quota - self.sampled_in_window
        )
        self.step += 1
        return sample

    def update_rate(self) -> None:
        """Window boundary: S <- S (1 + a_n r_n + a_v r_v), clipped to [1, floor(K p_max)]."""
        trend_norm = min(max(mean_relative_change(self.ratios), -1.0), 1.0)
        trend_var = min(max(mean_relative_change(self.variances), -1.0), 1.0)
        rate = self.rate * (1 + self.alpha_norm * trend_norm + self.alpha_var * trend_var)
        self.rate = min(max(rate, 1.0), float(math.floor(self.window * self.max_rate)))
        self.probability = self.rate / self.window
        self.sampled_in_window = 0

    def record(self, psf_norm: float, ratio: float) -> None:
        """Statistics of a sampling step (windows keep the last K values)."""
        self.sampled_in_window += 1
        self.norms = [*self.norms, psf_norm][-self.window :]
        self.ratios = [*self.ratios, ratio][-self.window :]
        self.variances = [*self.variances, blocked_variance(self.norms, self.var_blocks)][-self.window :]


class VSAM(SAM):
    """SAM on adaptively sampled steps; the last PSF (g_s - g) is reused, decaying, in between."""

    name = "vsam"
    display_name = "vSAM"
    Hparams = VSAMHparams
    trace_keys = ("sam_step", "sampling_rate", "psf_norm_ratio")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        hp = self.hp
        self.schedule = SamplingSchedule(hp.window, hp.var_blocks, hp.max_rate, hp.alpha_norm, hp.alpha_var)
        self.psf: TensorList | None = None  # g_s - g from the last sampling step
        self.reused = 0  # j: reuse steps since the last sampling step

    def direction(self, inputs: Inputs, targets: Tensor) -> tuple[TensorList, GradResult, dict[str, Any]]:
        clean = self.gradient(inputs, targets, update_bn=True)  # g = grad f(x_t; B_t)
        g = clean.grads
        warmup = self.epoch < self.hp.warmup_epochs
        u = float(torch.rand((), generator=self.rng, dtype=torch.float64))
        sample = self.schedule.decide(warmup, u)
        weight = 0.0
        if sample:
            direction = self.sam_gradient(inputs, targets, g).grads  # g_s
            self.psf, self.reused = add(direction, g, alpha=-1.0), 0  # PSF = g_s - g
            self._record_psf(self.psf, g)
        elif self.psf is not None and self.reused < self.hp.reuse_steps:
            self.reused += 1
            weight = self.hp.gamma**self.reused
            direction = add(g, self.psf, alpha=weight)  # G = g + gamma^j PSF
        else:
            direction = g
        return direction, clean, self._stats(sample, warmup, weight)

    def _record_psf(self, psf: TensorList, g: TensorList) -> None:
        """Window statistics from the last N tensors (host floats)."""
        n = self.hp.last_layers
        psf_norm, g_norm = float(global_norm(psf[-n:])), float(global_norm(g[-n:]))
        self.schedule.record(psf_norm, psf_norm / g_norm if g_norm > 0 else 0.0)

    def _stats(self, sample: bool, warmup: bool, weight: float) -> dict[str, float]:
        schedule = self.schedule
        return {
            "sam_step": float(sample),
            "sampling_rate": 1.0 if warmup else schedule.rate / schedule.window,
            "psf_norm_ratio": schedule.ratios[-1] if schedule.ratios else 0.0,
            "psf_variance": schedule.variances[-1] if schedule.variances else 0.0,
            "reuse_weight": weight,
        }

    def method_state(self) -> dict[str, Any]:
        s = self.schedule
        return {
            "psf": self.psf,
            "reused": self.reused,
            "schedule": {
                "rate": s.rate,
                "probability": s.probability,
                "sampled_in_window": s.sampled_in_window,
                "step": s.step,
                "norms": s.norms,
                "ratios": s.ratios,
                "variances": s.variances,
            },
        }

    def load_method_state(self, state: dict[str, Any]) -> None:
        self.psf = self.load_vector(state["psf"])
        self.reused = int(state["reused"])
        for key, value in state["schedule"].items():
            setattr(self.schedule, key, value)
