"""Deterministic derivation of CPU random generators from integer seeds (no salted ``hash``)."""

from __future__ import annotations

import hashlib

import torch

# Independent random streams derived from one run seed.
STREAM_SPLIT = 1
STREAM_NOISE = 2
STREAM_EPOCH = 3
STREAM_SYNTHETIC = 4


def derive_seed(*parts: int) -> int:
    """Mix integers into a 63-bit seed; the same parts always give the same seed on every platform."""
    text = ",".join(str(int(p)) for p in parts).encode()
    digest = hashlib.blake2b(text, digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def cpu_generator(*parts: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``derive_seed(*parts)``."""
    return torch.Generator(device="cpu").manual_seed(derive_seed(*parts))
