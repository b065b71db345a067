"""Checks 1-3: the device's single-device math against references computed in the same run.

1. fp32 with deterministic algorithms (TF32 off) follows the CPU float64 trajectory of SGD, SAM and SAMPa-0.2
   on ResNet-20 for 20 steps; on CUDA two runs are bit-identical.
2. Fused SAMPa (both gradients in one vmapped pass) follows sequential SAMPa; bf16 autocast with channels_last
   keeps the loss curve within a band of fp32.
3. (CUDA) ``torch.compile`` of the whole step (inductor) follows the eager step (on the tiny CNN).

Tolerances are relative distances: ||theta - theta_ref|| / ||theta_ref - theta_0|| after the last step (the
error relative to how far the reference moved). 20 steps of ResNet-20 amplify round-off about 2x per step,
so even CPU fp32 lands 0.6-3 % away from float64 at batch 16-32 and 2-8 % at batch 4 (lr 0.002); a wrong
kernel or wrong strides land at O(1). Lost precision (bf16, TF32) shows after the first step instead, before
the amplification: fp32 2e-4 from float64, bf16 0.17 (measured).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from sampa.backends.fastpath import FastPath
from sampa.doctor.common import (
    INFO,
    SKIP,
    Machine,
    Row,
    Setup,
    Trajectory,
    deterministic,
    guarded,
    loss_band,
    relative_distance,
    trajectory,
    verdict,
)

METHODS = {
    "SGD": ("sgd", {}),
    "SAM": ("sam", {"rho": 0.05}),
    "SAMPa-0.2": ("sampa", {"rho": 0.1, "lam": 0.2}),
}
FLOAT64_TOL = 0.15  # device fp32 vs CPU float64 (CPU fp32 measured 0.006-0.03 at batch 16-32, 0.02-0.08 at 4)
FIRST_STEP_TOL = 3e-2  # after the first step (fp32 measured: SGD 2e-4, SAM 8e-3 at batch 4; bf16 0.17)
FLOAT64_TOL_FACTOR = 5.0  # ... or within 5x of CPU fp32's own distance, whichever is larger
FUSED_TOL = 0.15  # fused vs sequential SAMPa, fp32 (grouped convolutions: another summation order)
BF16_LOSS_BAND = 0.05  # max over steps of |L_bf16 - L_fp32| / L_fp32 (CPU measured 0.002-0.003)
COMPILE_TOL = 0.15  # compiled vs eager step, fp32 (inductor fuses and reorders reductions)
COMPILE_SETUP = Setup(model="tinycnn", batch_size=32, steps=10)


def setup_for(m: Machine) -> Setup:
    """Batch 32, 20 steps on a GPU; batch 4, 10 steps on one CPU thread (the CPU subset must finish in well
    under a minute: it proves the checks' wiring, the GPU run proves the device)."""
    if m.kind == "cuda":
        return Setup(batch_size=32)
    torch.set_num_threads(1)
    return Setup(batch_size=4, steps=10)


def check_float64(m: Machine) -> Iterator[Row]:
    """Check 1: fp32 on the device against CPU float64 (and CPU fp32 as the round-off scale)."""
    setup = setup_for(m)
    with deterministic() as notes:
        for label in METHODS:
            check = f"1 {m.kind} fp32 vs CPU float64: {label}"
            yield from guarded(check, lambda label=label, check=check: float64_row(m, setup, label, check))
        if m.kind == "cuda":
            yield from guarded("1 deterministic repeat", lambda: repeat_is_bit_identical(m, setup))
    if notes:
        yield Row("1 nondeterministic ops", "; ".join(notes)[:200], f"{len(notes)} op(s)", INFO)


def float64_row(m: Machine, setup: Setup, label: str, check: str) -> Row:
    name, hparams = METHODS[label]
    cpu = torch.device("cpu")
    reference = trajectory(name, hparams, setup, cpu, torch.float64)
    got = trajectory(name, hparams, setup, m.device)
    dist, first = relative_distance(got, reference), relative_distance(got, reference, after_first=True)
    figure = f"step 1: {first:.1e}, step {setup.steps}: {dist:.1e}"
    tol = FLOAT64_TOL
    if m.kind == "cuda":
        scale = relative_distance(trajectory(name, hparams, setup, cpu), reference)
        tol = max(tol, FLOAT64_TOL_FACTOR * scale)
        figure += f" (CPU fp32 {scale:.1e})"
    result = f"{setup.model} b{setup.batch_size}; tol {FIRST_STEP_TOL:g} / {tol:.2g}"
    return Row(check, result, figure, verdict(first <= FIRST_STEP_TOL and dist <= tol))


def repeat_is_bit_identical(m: Machine, setup: Setup) -> Row:
    name, hparams = METHODS["SAMPa-0.2"]
    first, second = (trajectory(name, hparams, setup, m.device) for _ in range(2))
    same = all(torch.equal(a, b) for a, b in zip(first.params, second.params, strict=True))
    return Row(
        "1 deterministic repeat",
        "SAMPa-0.2 twice, deterministic algorithms",
        f"bit-identical: {same}",
        verdict(same),
    )


def check_fused_and_bf16(m: Machine) -> Iterator[Row]:
    """Check 2: fused == sequential SAMPa (fp32); bf16 + channels_last loss curve within a band of fp32."""
    setup = setup_for(m)
    name, hparams = METHODS["SAMPa-0.2"]
    sequential = trajectory(name, hparams, setup, m.device)

    def fused_row() -> Row:
        dist = relative_distance(trajectory(name, hparams, setup, m.device, fused=True), sequential)
        return Row(
            "2 fused SAMPa vs sequential",
            f"fp32, {setup.steps} steps; tol {FUSED_TOL:g}",
            f"rel. distance {dist:.2e}",
            verdict(dist <= FUSED_TOL),
        )

    yield from guarded("2 fused SAMPa vs sequential", fused_row)
    for label, is_fused in (("sequential", False), ("fused", True)):
        check = f"2 bf16+channels_last {label} SAMPa"
        yield from guarded(
            check, lambda check=check, is_fused=is_fused: bf16_row(m, setup, sequential, check, is_fused)
        )


def bf16_row(m: Machine, setup: Setup, fp32: Trajectory, check: str, fused: bool) -> Row:
    name, hparams = METHODS["SAMPa-0.2"]
    fast = FastPath(amp="bf16", channels_last=True)
    band = loss_band(trajectory(name, hparams, setup, m.device, fused=fused, fast=fast), fp32)
    return Row(
        check,
        f"loss curve vs fp32; band {BF16_LOSS_BAND:g}",
        f"max rel. loss diff {band:.2e}",
        verdict(band <= BF16_LOSS_BAND),
    )


def check_compile(m: Machine) -> Iterator[Row]:
    """Check 3a: the compiled step (inductor) against the eager step, SAMPa-0.2 on the tiny CNN: the check
    is of the compiled step, not the model, and a cold inductor compile of ResNet-20's two step graphs
    (SAMPa's first step and the others) would take a minute or more of the window."""
    if m.kind != "cuda":
        yield Row("3 compile step vs eager", "CPU: covered by the slow tests (-m slow)", "-", SKIP)
        return
    torch._dynamo.config.recompile_limit = 64
    name, hparams = METHODS["SAMPa-0.2"]
    path = compiled_path()
    eager = trajectory(name, hparams, COMPILE_SETUP, m.device)
    compiled = trajectory(name, hparams, COMPILE_SETUP, m.device, fast=path)
    dist = relative_distance(compiled, eager)
    yield Row(
        f"3 compile {path.compile} vs eager: SAMPa-0.2",
        f"{path.compile_backend}, {COMPILE_SETUP.model} b{COMPILE_SETUP.batch_size}, "
        f"{COMPILE_SETUP.steps} steps; tol {COMPILE_TOL:g}",
        f"rel. distance {dist:.2e}",
        verdict(dist <= COMPILE_TOL),
    )


def compiled_path() -> FastPath:
    """``compile="step"``, or ``"model"`` where this torch cannot trace ``torch.autograd.grad``."""
    try:
        return FastPath(compile="step")
    except ValueError:
        return FastPath(compile="model")
