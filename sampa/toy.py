r"""The SAMPa paper's Figure 1: SAM, RandSAM, OptSAM and SAMPa-\lambda on f(x) = ||x||^2.

Every method runs through the same method classes as the real benchmark (a one-parameter "model"
whose output is x, a loss ||x||^2, plain gradient descent as base optimizer, float64).

Step size: the convergence theory for a *fixed* \rho (SAMPa paper, Thm. 4.4 and Remark 4.5) needs a
decreasing step size with sum eta_t = inf and sum eta_t^2 < inf; we use eta_t = eta_0 / (1 + t)^0.6.
With it SAM and SAMPa reach a distance of order eta_t \rho, RandSAM only of order \rho sqrt(eta_t) (its
random perturbation is noise that does not vanish with the gradient), and OptSAM stalls at distance
~\rho (its ascent direction keeps pointing away from the minimum, so x~ lands on the minimum instead
of x). A method counts as converged when its mean distance over the last 10% of steps is at most
4 eta_T \rho.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import statistics
import typing
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sampa.config import SEED_LIMIT, check_value, setting
from sampa.optim import build_method


@dataclass(frozen=True)
class ToySetup:
    """Figure 1 settings (checked by :func:`check_setup`, with the run config's mechanism)."""

    x0: tuple[float, ...] = setting((1.0, 1.0), "starting point")
    lr: float = setting(0.1, "eta_0; eta_t = eta_0/(1+t)^decay", low=0.0, low_open=True)
    decay: float = setting(0.6, "step-size decay exponent (see --lr)", low=0.0)
    rho: float = setting(0.1, "perturbation radius of every method", low=0.0)
    steps: int = setting(2000, "optimisation steps", low=2)
    lams: tuple[float, ...] = setting((0.0, 0.2, 0.5, 1.0), "SAMPa lambdas (a curve each)", low=0.0, high=1.0)
    seed: int = setting(0, "RandSAM's seed", low=0, high=SEED_LIMIT, high_open=True)

    def lr_at(self, t: int) -> float:
        return self.lr / (1 + t) ** self.decay

    def threshold(self) -> float:
        """Converged = tail-mean distance <= 4 eta_T rho (the order of SAM's limit cycle)."""
        return 4 * self.lr_at(self.steps - 1) * self.rho


def check_setup(setup: ToySetup, prefix: str = "") -> ToySetup:
    """Every field by its type and range (``ConfigError`` naming ``prefix + field``)."""
    hints = typing.get_type_hints(ToySetup)
    for f in dataclasses.fields(ToySetup):
        check_value(prefix + f.name, getattr(setup, f.name), hints[f.name], f.metadata)
    return setup


class _Point(nn.Module):
    """A 'model' whose parameter is the point x and whose output (per sample) is x itself."""

    def __init__(self, x0: Sequence[float]) -> None:
        super().__init__()
        self.x = nn.Parameter(torch.tensor(x0, dtype=torch.float64))

    def forward(self, inputs: Tensor) -> Tensor:
        return self.x.expand(inputs.shape[0], -1)


def _squared_norm(outputs: Tensor, _targets: Tensor) -> Tensor:
    return (outputs**2).sum(dim=1)


def methods(setup: ToySetup) -> list[tuple[str, str, dict[str, float]]]:
    """(label, registry name, hyperparameters) for every curve of Figure 1."""
    curves = [("SAM", "sam", {}), ("RandSAM", "randsam", {}), ("OptSAM", "optsam", {})]
    return curves + [(f"SAMPa-{lam:g}", "sampa", {"lam": lam}) for lam in setup.lams]


def trajectory(name: str, hparams: dict[str, float], setup: ToySetup) -> list[list[float]]:
    """The iterates x_0, ..., x_T of one method."""
    model = _Point(setup.x0)
    base = torch.optim.SGD(model.parameters(), lr=setup.lr)
    method = build_method(name, model, _squared_norm, base, seed=setup.seed, rho=setup.rho, **hparams)
    dummy_inputs, dummy_targets = torch.zeros(1, 1, dtype=torch.float64), torch.zeros(1)
    points = [model.x.detach().tolist()]
    for t in range(setup.steps):
        base.param_groups[0]["lr"] = setup.lr_at(t)
        method.step(dummy_inputs, dummy_targets)
        points.append(model.x.detach().tolist())
    return points


def run(setup: ToySetup) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """All trajectories as rows (label, step, x, distance, f, lr) and a per-method summary."""
    rows: list[dict[str, object]] = []
    summary: list[dict[str, object]] = []
    for label, name, hparams in methods(setup):
        points = trajectory(name, hparams, setup)
        distances = [sum(v * v for v in p) ** 0.5 for p in points]
        for t, (p, d) in enumerate(zip(points, distances, strict=True)):
            rows.append(
                {
                    "method": label,
                    "step": t,
                    **{f"x{i}": v for i, v in enumerate(p)},
                    "distance": d,
                    "f": d * d,
                    "lr": setup.lr_at(t) if t < setup.steps else None,
                }
            )
        tail = statistics.fmean(distances[-max(1, setup.steps // 10) :])
        summary.append(
            {
                "method": label,
                "final_distance": distances[-1],
                "tail_mean_distance": tail,
                "threshold": setup.threshold(),
                "converged": tail <= setup.threshold(),
            }
        )
    return rows, summary


def to_csv(rows: list[dict[str, object]]) -> str:
    """Rows as CSV text (header from the first row)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
