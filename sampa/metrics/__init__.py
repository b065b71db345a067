"""Measurement: synchronised timing, peak memory (NVML / torch / RSS) and run provenance."""

from sampa.metrics.memory import MemoryMonitor
from sampa.metrics.provenance import provenance
from sampa.metrics.timing import Stopwatch, synchronize

__all__ = ["MemoryMonitor", "Stopwatch", "provenance", "synchronize"]
