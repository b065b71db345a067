"""Peak memory of a training run, tagged with how each number was obtained.

On CUDA devices: the allocator's exact peaks (``torch.cuda.max_memory_allocated/reserved``) and an
NVML sampler thread (nvidia-ml-py) that records this process's peak GPU memory (``per-process``) or,
where the per-process query is unavailable (containers, MIG), the device's used memory minus a baseline
taken before training (``device-minus-baseline``; valid when the job has the GPU to itself). Devices are
matched to NVML by UUID, so ``CUDA_VISIBLE_DEVICES`` and device ordering do not matter.
On CPU: the process's peak resident set size from ``getrusage`` (lifetime peak, data included).
"""

from __future__ import annotations

import os
import resource
import sys
import threading
from typing import Any

import torch

MIB = 2**20


class MemoryMonitor:
    """Start before training, ``report()`` after; ``previous`` merges peaks of an interrupted run."""

    def __init__(self, devices: list[torch.device], interval_s: float = 0.02) -> None:
        self.devices = devices
        self.interval_s = interval_s
        self._nvml: _NvmlSampler | None = None

    def start(self) -> None:
        cuda = [d for d in self.devices if d.type == "cuda"]
        for d in cuda:
            torch.cuda.reset_peak_memory_stats(d)
        if cuda:
            self._nvml = _NvmlSampler(cuda, self.interval_s)
            self._nvml.start()

    def report(self, previous: dict[str, Any] | None = None) -> dict[str, Any]:
        """Peaks so far (max with ``previous`` from before a resume)."""
        nvml = self._nvml.peaks() if self._nvml else {}
        out: dict[str, Any] = {"cpu_peak_rss_mib": _peak_rss_mib(), "cpu_source": "getrusage(ru_maxrss)"}
        out["devices"] = [
            self._device_report(d, nvml.get(str(d), {})) for d in self.devices if d.type == "cuda"
        ]
        return _merge_peaks(previous, out) if previous else out

    def stop(self) -> None:
        if self._nvml:
            self._nvml.stop()

    @staticmethod
    def _device_report(device: torch.device, nvml: dict[str, Any]) -> dict[str, Any]:
        return {
            "device": str(device),
            "name": torch.cuda.get_device_name(device),
            "torch_max_allocated_mib": torch.cuda.max_memory_allocated(device) / MIB,
            "torch_max_reserved_mib": torch.cuda.max_memory_reserved(device) / MIB,
            "nvml_peak_mib": nvml.get("peak_mib"),
            "nvml_method": nvml.get("method", "unavailable"),
        }


def _peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def _merge_peaks(previous: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    merged = dict(current)
    merged["cpu_peak_rss_mib"] = max(previous.get("cpu_peak_rss_mib", 0.0), current["cpu_peak_rss_mib"])
    old = {d["device"]: d for d in previous.get("devices", [])}
    devices = []
    for dev in current["devices"]:
        before = old.get(dev["device"], {})
        dev = dict(dev)
        for key in ("torch_max_allocated_mib", "torch_max_reserved_mib", "nvml_peak_mib"):
            values = [v for v in (before.get(key), dev.get(key)) if v is not None]
            dev[key] = max(values) if values else None
        devices.append(dev)
    merged["devices"] = devices
    return merged


class _NvmlSampler(threading.Thread):
    """Background thread sampling NVML every ``interval_s`` seconds."""

    def __init__(self, devices: list[torch.device], interval_s: float) -> None:
        super().__init__(daemon=True)
        self.interval_s = interval_s
        self._stop_event = threading.Event()
        self._peaks: dict[str, dict[str, Any]] = {}
        self._handles = self._open(devices)

    def _open(self, devices: list[torch.device]) -> list[tuple[str, Any, int, str]]:
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception:  # no driver, no library: report "unavailable"
            return []
        handles = []
        for d in devices:
            try:
                uuid = str(torch.cuda.get_device_properties(d).uuid)
                handle = pynvml.nvmlDeviceGetHandleByUUID(_nvml_uuid(uuid))
                baseline = pynvml.nvmlDeviceGetMemoryInfo(handle).used
                method = (
                    "per-process" if self._process_memory(handle) is not None else "device-minus-baseline"
                )
            except Exception:
                continue
            handles.append((str(d), handle, baseline, method))
            self._peaks[str(d)] = {"peak_mib": 0.0, "method": method}
        return handles

    @staticmethod
    def _process_memory(handle: Any) -> int | None:
        import pynvml

        try:
            procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
        except pynvml.NVMLError:
            return None
        for proc in procs:
            if proc.pid == os.getpid() and proc.usedGpuMemory is not None:
                return int(proc.usedGpuMemory)
        return None

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            self._sample()

    def _sample(self) -> None:
        import pynvml

        for name, handle, baseline, method in self._handles:
            if method == "per-process":
                used = self._process_memory(handle)
            else:
                used = pynvml.nvmlDeviceGetMemoryInfo(handle).used - baseline
            if used is not None:
                peak = self._peaks[name]
                peak["peak_mib"] = max(peak["peak_mib"], used / MIB)

    def peaks(self) -> dict[str, dict[str, Any]]:
        if self._handles:
            self._sample()
        return {k: dict(v) for k, v in self._peaks.items()}

    def stop(self) -> None:
        self._stop_event.set()


def _nvml_uuid(torch_uuid: str) -> str:
    """torch prints UUIDs without the 'GPU-' prefix NVML expects."""
    return torch_uuid if torch_uuid.startswith(("GPU-", "MIG-")) else f"GPU-{torch_uuid}"
