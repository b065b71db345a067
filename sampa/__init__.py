"""sampa-bench: a reproducible benchmark suite for SAM and its efficient variants, built around SAMPa."""

__version__ = "0.1.0"
