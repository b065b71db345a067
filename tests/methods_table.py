"""THE table of every registered method (one row each), asserted equal to the registry by test_methods.py.

Adding a method: README "Adding an optimizer" lists every place (its module, the registry, one row
here, docs/methods.md, its figure style).
The generic tests (tests/test_methods.py) run over every row: registry and paper defaults, one-line errors
for bad hyperparameters, passes per step, seeds, resume, the AdamW base, the smoke task through the engine.
Per-family files (test_optim_core.py, test_methods_efficient.py, test_methods_baselines.py) hold only the
hand computations that define each method.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

Passes = tuple[int, int, int, int]  # (forward, backward, sequential, ideal_sequential)
SGD_PASSES = ((1, 1, 1, 1), (1, 1, 1, 1))  # (first step, every later step)
SAM_PASSES = ((2, 2, 2, 2), (2, 2, 2, 2))
SAMPA_PASSES = ((1, 1, 1, 1), (2, 2, 2, 1))  # the first step: g_0 and a base step


def _sam_step_passes(record, epoch: int) -> Passes:
    """Adaptive methods: one gradient, plus one on the steps that chose SAM."""
    n = 1 + int(record.stats["sam_step"])
    return (n, n, n, n)


def _looksam_passes(record, epoch: int) -> Passes:
    return (2, 2, 2, 2) if record.stats["sam_step"] else (1, 1, 1, 1)


def _lam_error() -> tuple[dict, str]:
    return ({"lam": 1.2}, r"lam must be in \[0, 1\] \(got 1.2\)")


@dataclass(frozen=True)
class MethodRow:
    """One method: its names, paper defaults, the settings the generic tests use, and what to expect."""

    name: str
    display_name: str
    defaults: dict  # paper defaults (SAMPa App. B.4 or the method's paper), checked against Hparams()
    #: (first, later) pass counts, or (record, epoch) -> pass counts for methods that decide per step
    passes: tuple[Passes, Passes] | Callable[..., Passes]
    errors: tuple[tuple[dict, str], ...]  # bad hyperparameters and their one-line message
    hparams: dict = field(default_factory=dict)  # small-problem settings (short windows, early epochs)
    configs: tuple[dict, ...] = ({},)  # further valid configurations (on top of ``hparams``)
    random: bool = False  # draws from the method's generator (another seed, another run)
    smoke: dict = field(default_factory=dict)  # hyperparameters of the engine's smoke run


ROWS: tuple[MethodRow, ...] = (
    MethodRow(
        "sgd", "SGD", {}, SGD_PASSES, (({"rho": 0.1}, "unknown hyperparameter 'rho' for method 'sgd'"),)
    ),
    MethodRow(
        "sam",
        "SAM",
        {"rho": 0.05},
        SAM_PASSES,
        (
            ({"rho": -0.1}, r"rho must be in \[0, inf\) \(got -0.1\)"),
            ({"rho": float("inf")}, r"rho must be a finite number \(got inf\)"),
            ({"lam": 0.2}, "unknown hyperparameter 'lam' for method 'sam'; valid: rho, eps"),
        ),
    ),
    MethodRow(
        "sampa",
        "SAMPa",
        {"rho": 0.1, "lam": 0.2},
        SAMPA_PASSES,
        (
            ({"lam": 1.5}, r"lam must be in \[0, 1\] \(got 1.5\)"),
            ({"lam": -0.01}, r"lam must be in \[0, 1\]"),
            ({"rho": float("nan")}, "rho must be a finite number"),
            ({"diagnostics_every": -1}, "diagnostics_every must be an integer >= 0"),
        ),
        configs=({}, {"lam": 0.0}, {"diagnostics_every": 2}),
    ),
    MethodRow(
        "randsam", "RandSAM", {}, SGD_PASSES, (({"rho": -1.0}, r"rho must be in \[0, inf\)"),), random=True
    ),
    MethodRow("optsam", "OptSAM", {}, SGD_PASSES, (({"rho": -1.0}, r"rho must be in \[0, inf\)"),)),
    # efficient variants
    MethodRow(
        "looksam",
        "LookSAM",
        {},
        _looksam_passes,
        (
            ({"k": 0}, r"k must be an integer >= 1 \(got 0\)"),
            ({"k": 2.5}, r"k must be an integer >= 1 \(got 2.5\)"),
            ({"alpha": 1.5}, r"alpha must be in \[0, 1\] \(got 1.5\)"),
            ({"alpha": -0.1}, r"alpha must be in \[0, 1\]"),
            ({"rho": -1.0}, r"rho must be in \[0, inf\)"),
            ({"beta": 0.5}, r"unknown hyperparameter 'beta' for method 'looksam'; valid: rho, eps, k, alpha"),
        ),
        hparams={"k": 3},
        configs=({}, {"k": 1}, {"alpha": 0.0}),
    ),
    MethodRow(
        "aesam",
        "AE-SAM",
        {},
        _sam_step_passes,
        (
            ({"delta": 1.0}, r"delta must be in \(0, 1\) \(got 1.0\)"),
            ({"delta": 0.0}, r"delta must be in \(0, 1\)"),
            ({"lam1": "x"}, r"lam1 must be a finite number \(got 'x'\)"),
            ({"rho": float("nan")}, "rho must be a finite number"),
        ),
        configs=({}, {"lam1": 0.0, "lam2": 0.0}),
    ),
    MethodRow(
        "saf",
        "SAF",
        {"lam": 0.3, "temperature": 5.0, "lag": 3, "e_start": 5},
        SGD_PASSES,
        (
            ({"lag": 0}, r"lag must be an integer >= 1 \(got 0\)"),
            ({"temperature": 0.0}, r"temperature must be in \(0, inf\)"),
            ({"lam": -0.3}, r"lam must be in \[0, inf\)"),
            ({"e_start": -1}, r"e_start must be an integer >= 0"),
        ),
        hparams={"e_start": 1, "lag": 1},
        smoke={"e_start": 2, "lag": 1},
    ),
    MethodRow(
        "mesa",
        "MESA",
        {"lam": 0.8, "beta": 0.9995, "e_start": 5},
        lambda record, epoch: (2, 1, 1, 1) if epoch >= 1 else (1, 1, 1, 1),  # the teacher from e_start on
        (
            ({"beta": 1.0}, r"beta must be in \(0, 1\) \(got 1.0\)"),
            ({"beta": 0.0}, r"beta must be in \(0, 1\)"),
            ({"lag": 3}, "unknown hyperparameter 'lag' for method 'mesa'"),
        ),
        hparams={"e_start": 1, "beta": 0.8},
        smoke={"e_start": 2, "beta": 0.9},  # a teacher that moves within a few dozen steps
    ),
    MethodRow(
        "esam",
        "ESAM",
        {"beta": 0.5, "gamma": 1.0},
        lambda record, epoch: (3, 2, 2, 2),  # with SDS: one more forward without gradient
        (
            ({"beta": 0.0}, r"beta must be in \(0, 1\] \(got 0.0\)"),
            ({"beta": 1.2}, r"beta must be in \(0, 1\]"),
            ({"gamma": 0.0}, r"gamma must be in \(0, 1\]"),
            ({"gamma": 2}, r"gamma must be in \(0, 1\] \(got 2\)"),
        ),
        hparams={"gamma": 0.5},
        configs=({}, {"beta": 1.0, "gamma": 1.0}),
        random=True,
        smoke={"gamma": 0.5},
    ),
    MethodRow(
        "msam",
        "mSAM",
        {"micro_batch_size": 32},
        ((8, 8, 8, 2), (8, 8, 8, 2)),  # 4 micro-batches of 4: 2 x 4 small passes, 2 stages
        (
            ({"micro_batch_size": 0}, r"micro_batch_size must be an integer >= 1 \(got 0\)"),
            ({"micro_batch_size": 3.0}, r"micro_batch_size must be an integer >= 1"),
        ),
        hparams={"micro_batch_size": 4},
        configs=({}, {"micro_batch_size": 5}),
    ),
    MethodRow(
        "vsam",
        "vSAM",
        {},
        _sam_step_passes,
        (
            ({"window": 1}, r"window must be an integer >= 2 \(got 1\)"),
            ({"window": 10, "var_blocks": 6}, r"window // var_blocks must be >= 2"),
            ({"max_rate": 0.0}, r"max_rate must be in \(0, 1\]"),
            ({"max_rate": 0.01}, r"window \* max_rate must be >= 1"),
            ({"gamma": 1.5}, r"gamma must be in \[0, 1\]"),
            ({"reuse_steps": -1}, r"reuse_steps must be an integer >= 0"),
            ({"alpha_norm": -0.1}, r"alpha_norm must be in \[0, inf\)"),
        ),
        hparams={"window": 4, "var_blocks": 2, "warmup_epochs": 1},
        configs=({}, {"reuse_steps": 0}),
        random=True,
        smoke={"warmup_epochs": 1, "window": 6, "var_blocks": 3},
    ),
    MethodRow(
        "sampa-msam",
        "mSAM+SAMPa",
        {"rho": 0.1, "lam": 0.2, "micro_batch_size": 32},
        ((4, 4, 4, 1), (8, 8, 8, 1)),  # g_0 per micro-batch; then 2 x 4 independent jobs, temporal cost 1
        (
            ({"micro_batch_size": 0}, r"micro_batch_size must be an integer >= 1"),
            ({"lam": 1.5}, r"lam must be in \[0, 1\]"),
        ),
        hparams={"micro_batch_size": 4},
        configs=({}, {"lam": 0.0}),
    ),
    # baselines of Table 8 and their SAMPa combinations
    MethodRow(
        "samdb",
        "SAM-db",
        {"rho": 0.05},
        SAM_PASSES,
        (
            ({"rho": -1.0}, r"rho must be in \[0, inf\) \(got -1.0\)"),
            ({"lam": 0.2}, "unknown hyperparameter 'lam' for method 'samdb'; valid: rho, eps"),
        ),
        configs=({}, {"rho": 0.1}),
    ),
    MethodRow(
        "gnp",
        "Penalizing",
        {"rho": 0.1, "alpha": 0.8, "normalized_clean": False},
        SAM_PASSES,
        (
            ({"alpha": 1.5}, r"alpha must be in \[0, 1\] \(got 1.5\)"),
            ({"alpha": -0.1}, r"alpha must be in \[0, 1\] \(got -0.1\)"),
            ({"normalized_clean": "yes"}, r"normalized_clean must be true or false \(got 'yes'\)"),
        ),
        configs=({}, {"normalized_clean": True}),
    ),
    MethodRow(
        "asam",
        "ASAM",
        {"rho": 0.5, "eta": 0.01},
        SAM_PASSES,
        (({"eta": -0.01}, r"eta must be in \[0, inf\) \(got -0.01\)"),),
        configs=({}, {"eta": 0.0}),
    ),
    MethodRow(
        "samon",
        "SAM-ON",
        {"rho": 0.5},
        SAM_PASSES,
        (
            ({"rho": float("nan")}, "rho must be a finite number"),
            ({"eta": 0.1}, "unknown hyperparameter 'eta' for method 'samon'; valid: rho, eps"),
        ),
    ),
    MethodRow(
        "vasso",
        "VaSSO",
        {"rho": 0.05, "theta": 0.4},
        SAM_PASSES,
        (
            ({"theta": 0.0}, r"theta must be in \(0, 1\] \(got 0.0\)"),
            ({"theta": 1.5}, r"theta must be in \(0, 1\] \(got 1.5\)"),
        ),
        configs=({}, {"theta": 0.9}),
    ),
    MethodRow(
        "bisam",
        "BiSAM",
        {"rho": 0.05, "mu": 1.0},
        SAM_PASSES,
        (({"mu": 0.0}, r"mu must be in \(0, inf\) \(got 0.0\)"),),
        configs=({}, {"mu": 10.0}),
    ),
    MethodRow(
        "sampa-asam",
        "ASAM+SAMPa",
        {"rho": 1.0, "lam": 0.2, "eta": 0.01},
        SAMPA_PASSES,
        (_lam_error(), ({"eta": -1.0}, r"eta must be in \[0, inf\) \(got -1.0\)")),
        configs=({}, {"lam": 0.0}),
    ),
    MethodRow("sampa-samon", "SAM-ON+SAMPa", {"rho": 1.0, "lam": 0.2}, SAMPA_PASSES, (_lam_error(),)),
    MethodRow(
        "sampa-vasso",
        "VaSSO+SAMPa",
        {"rho": 0.1, "lam": 0.2, "theta": 0.4},
        SAMPA_PASSES,
        (_lam_error(), ({"theta": -0.5}, r"theta must be in \(0, 1\] \(got -0.5\)")),
    ),
    MethodRow(
        "sampa-bisam",
        "BiSAM+SAMPa",
        {"rho": 0.1, "lam": 0.2, "mu": 1.0},
        ((1, 2, 1, 1), (2, 3, 2, 1)),  # the y-pass differentiates f and Q: one forward, two backwards
        (_lam_error(), ({"mu": -1.0}, r"mu must be in \(0, inf\) \(got -1.0\)")),
    ),
)
ROW_IDS = [row.name for row in ROWS]
#: (combination, variant): App. B.4's "rho x 2 for SAMPa", the variant's other defaults
COMBINATIONS = (
    ("sampa-asam", "asam"),
    ("sampa-samon", "samon"),
    ("sampa-vasso", "vasso"),
    ("sampa-bisam", "bisam"),
)


def expected_passes(row: MethodRow, record, step: int, epoch: int) -> Passes:
    """The pass counts ``row`` expects of the ``step``-th (0-based) record of a run."""
    if callable(row.passes):
        return row.passes(record, epoch)
    first, later = row.passes
    return first if step == 0 else later
