"""Check 6: step times from the benchmark scripts (``benchmarks/step_time.py``, ``pair_speedup.py``).

ResNet-56, batch 128: SGD, SAM, SAMPa-0.2 and fused SAMPa with the fast path off (fp32 eager) and on (bf16,
channels_last, cuDNN autotuning, fused SGD; no compilation: it costs minutes of a short window), one SGD epoch
on 45k GPU-resident images, and on two GPUs the Table 11 comparison. The compass's targets are judged on an
H100/H200 only; elsewhere the figures are information. On a CPU a tiny run keeps the wiring working.
"""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sampa.doctor.common import INFO, ROOT, SKIP, Machine, Row, guarded, not_a_checkout, verdict

FUSED_OVER_SGD_MAX = 1.15  # fused SAMPa / SGD, fast path on
SAM_OVER_SAMPA_MIN = 1.9  # SAM on 1 GPU / SAMPa-0.2 on 2 GPUs
SGD_EPOCH_MAX_S = 1.5  # one SGD epoch of ResNet-56 (45k images), fast path on
FAST = ["--amp", "bf16", "--channels-last", "--cudnn-benchmark", "--optimizer-impl", "fused"]
GPU_RUN = ["--model", "resnet56", "--batch-size", "128", "--steps", "10", "--warmup", "3", "--rounds", "3"]
CPU_RUN = [
    "--model",
    "resnet20",
    "--batch-size",
    "4",
    "--steps",
    "1",
    "--warmup",
    "1",
    "--rounds",
    "1",
    "--threads",
    "1",
]


def check_speed(m: Machine) -> Iterator[Row]:
    script = ROOT / "benchmarks" / "step_time.py"
    if why := not_a_checkout("benchmarks/step_time.py", "benchmarks/pair_speedup.py"):
        yield Row("6 step times", why, "-", SKIP)
        return
    if m.kind != "cuda":
        args = [*CPU_RUN, "--methods", "sgd,sampa", "--fused", "sampa", "--device", "cpu"]
        rows = bench(script, args, fresh=False)
        fused = by_method(rows)["sampa (fused)"]["ratio_to_sgd"]
        yield Row(
            "6 step_time.py (CPU wiring)",
            "ResNet-20 batch 4, 1 step; no targets on a CPU",
            f"fused SAMPa / SGD {fused:.2f}",
            INFO,
        )
        return
    for label, flags in (("off", []), ("on", FAST)):
        args = [*GPU_RUN, "--methods", "sgd,sam,sampa", "--fused", "sampa", "--device", "cuda", *flags]
        yield from guarded(
            f"6 step_time.py (fast {label})",
            lambda label=label, args=args: speed_rows(m, label, by_method(bench(script, args))),
        )
    if m.gpus >= 2:
        yield from guarded("6 SAM / SAMPa-0.2 on 2 GPUs", lambda: pair_speed(m))


def speed_rows(m: Machine, label: str, rows: dict[str, dict[str, Any]]) -> list[Row]:
    judged = m.hopper and label == "on"
    fused = rows["sampa (fused)"]["ratio_to_sgd"]
    sam = rows["sam"]["ratio_to_sgd"]
    epoch = rows["sgd epoch"]["epoch_s"]
    where = f"ResNet-56 b128, fast path {label}"
    ms = f"SGD {rows['sgd']['step_ms']:.1f} ms/step, SAM/SGD {sam:.2f}"
    return [
        Row(
            f"6 fused SAMPa / SGD (fast {label})",
            f"{where}; target <= {FUSED_OVER_SGD_MAX}",
            f"{fused:.2f} ({ms})",
            verdict(fused <= FUSED_OVER_SGD_MAX) if judged else INFO,
        ),
        Row(
            f"6 SGD epoch (fast {label})",
            f"45k images; target <= {SGD_EPOCH_MAX_S} s",
            f"{epoch:.2f} s",
            verdict(epoch <= SGD_EPOCH_MAX_S) if judged else INFO,
        ),
    ]


def pair_speed(m: Machine) -> Row:
    script = ROOT / "benchmarks" / "pair_speedup.py"
    args = ["--device", "cuda", "--steps", "20", "--warmup", "5", "--rounds", "3"]
    rows = by_method(bench(script, args, key="rows"))
    ratio = rows["SAMPa-0.2"]["sam_over_this"]
    return Row(
        "6 SAM / SAMPa-0.2 on 2 GPUs",
        f"pair_speedup.py ResNet-56 b128; target >= {SAM_OVER_SAMPA_MIN}",
        f"{ratio:.2f} (SAMPa/SGD {rows['SAMPa-0.2']['this_over_sgd']:.2f})",
        verdict(ratio >= SAM_OVER_SAMPA_MIN) if m.hopper else INFO,
    )


def bench(script: Path, args: list[str], key: str | None = None, fresh: bool = True) -> list[dict[str, Any]]:
    """Run a benchmark script with ``--json``; its rows (its output goes to this group's log). ``fresh``: in
    a new interpreter (every GPU configuration starts from a clean CUDA state); else in this process (the
    CPU wiring run: no second import of torch)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        argv = [str(script), *args, "--json", str(out)]
        if fresh:
            subprocess.run([sys.executable, *argv], check=True)
        else:
            run_script(argv)
        data = json.loads(out.read_text())
    return data[key] if key else data


def run_script(argv: list[str]) -> None:
    """``python *argv`` in this process."""
    saved = sys.argv
    sys.argv = argv
    try:
        runpy.run_path(argv[0], run_name="__main__")
    finally:
        sys.argv = saved


def by_method(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["method"]: row for row in rows}
