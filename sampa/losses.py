r"""Training loss: cross-entropy with the official SAMPa/SAM label-smoothing convention.

The target puts 1 - s on the true class and s/(C-1) on every other class (davda54/sam, LIONS
SAMPa/BiSAM, vSAM code; optimizers.md §1.4), and the loss is the cross-entropy against that target.
It has the same gradient as the official "smooth cross-entropy" (a KL divergence; the two differ by
the target's constant entropy). This is *not* ``F.cross_entropy(label_smoothing=s)``, which puts
s/C on every class.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor


def smooth_cross_entropy(logits: Tensor, targets: Tensor, smoothing: float = 0.1) -> Tensor:
    """Per-sample loss -sum_c q_c log softmax(logits)_c with q = smoothed one-hot (see module doc)."""
    log_probs = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=1)
    if smoothing == 0:
        return -log_probs.gather(1, targets[:, None]).squeeze(1)
    num_classes = logits.shape[1]
    off_value = smoothing / (num_classes - 1)
    true_log_prob = log_probs.gather(1, targets[:, None]).squeeze(1)
    return -(off_value * (log_probs.sum(dim=1) - true_log_prob) + (1 - smoothing) * true_log_prob)


def make_loss(smoothing: float) -> partial[Tensor]:
    """The per-sample training loss with label smoothing ``smoothing`` in [0, 1) (else ``ValueError``)."""
    if isinstance(smoothing, bool) or not isinstance(smoothing, int | float) or not 0 <= smoothing < 1:
        raise ValueError(f"label smoothing must be a number in [0, 1) (got {smoothing!r})")
    return partial(smooth_cross_entropy, smoothing=smoothing)
