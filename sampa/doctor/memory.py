"""Check 5: the memory numbers a run reports (``sampa.metrics.memory``) against torch's own, per device.

For each GPU: one warm-up step loads the CUDA libraries; the CUDA context is then measured as NVML's
per-process memory minus torch's reserved memory (the reference, taken in the same run). After a 1 GiB
allocation and a few training steps, the NVML peak must be torch's reserved peak plus that context, within
max(256 MiB, 10 %). Where NVML only gives device-wide memory, the peak is compared with the growth of torch's
reserved memory since the monitor started (its baseline already holds the context).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch

from sampa.doctor.common import FAIL, SKIP, Machine, Row, Setup, guarded, trajectory, verdict
from sampa.gpus import has_nvml_bindings
from sampa.metrics.memory import MIB, MemoryMonitor

BAND_MIB, BAND_SHARE = 256.0, 0.10
ALLOCATION_MIB = 1024


def check_memory(m: Machine) -> Iterator[Row]:
    if m.kind != "cuda":
        yield Row("5 NVML memory vs torch peaks", "no GPU (CPU runs report peak RSS)", "-", SKIP)
        return
    for index in range(m.gpus):
        device = torch.device("cuda", index)
        yield from guarded(f"5 NVML memory {device}", lambda device=device: check_device(device))


def check_device(device: torch.device) -> Row:
    torch.cuda.set_device(device)
    setup = Setup(batch_size=32, steps=2)
    trajectory("sgd", {}, setup, device)  # loads cuDNN/cuBLAS: part of the context from here on
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    monitor = MemoryMonitor([device], interval_s=0.01)
    monitor.start()
    time.sleep(0.1)
    before = monitor.report()["devices"][0]
    reserved_before = torch.cuda.memory_reserved(device) / MIB
    block = torch.empty(ALLOCATION_MIB * MIB, dtype=torch.uint8, device=device)
    trajectory("sampa", {"rho": 0.1, "lam": 0.2}, setup.smaller(steps=3), device)
    torch.cuda.synchronize(device)
    time.sleep(0.1)
    after = monitor.report()["devices"][0]
    monitor.stop()
    del block
    method, nvml = after["nvml_method"], after["nvml_peak_mib"]
    if method == "per-process":
        context = before["nvml_peak_mib"] - reserved_before
        expected = after["torch_max_reserved_mib"] + context
        how = f"torch reserved peak {after['torch_max_reserved_mib']:.0f} + context {context:.0f}"
    else:
        expected = after["torch_max_reserved_mib"] - reserved_before
        how = f"growth of torch reserved {expected:.0f}"
    if nvml is None:
        missing = "pynvml is not installed (pip install nvidia-ml-py)"
        why = "no NVML reading" if has_nvml_bindings() else missing
        return Row(f"5 NVML memory {device}", f"NVML: {method}", why, FAIL)
    band = max(BAND_MIB, BAND_SHARE * expected)
    return Row(
        f"5 NVML memory {device}",
        f"NVML {method}; band ±{band:.0f} MiB",
        f"NVML peak {nvml:.0f} MiB vs {how} = {expected:.0f} MiB",
        verdict(abs(nvml - expected) <= band),
    )
