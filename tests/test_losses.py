"""The training loss: the official smoothing convention, and its precision."""

from __future__ import annotations

import math

import pytest
import torch

from sampa.losses import smooth_cross_entropy


def test_smoothing_puts_s_over_c_minus_1_on_every_other_class() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0]], dtype=torch.float64)
    log_p = torch.log_softmax(logits, dim=1)[0]
    s = 0.1
    expected = -((1 - s) * log_p[0] + s / 2 * (log_p[1] + log_p[2]))
    loss = smooth_cross_entropy(logits, torch.tensor([0]), smoothing=s)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    # not torch's convention (s/C on every class), which gives a different value here
    torch_value = torch.nn.functional.cross_entropy(logits, torch.tensor([0]), label_smoothing=s)
    assert not math.isclose(loss.item(), torch_value.item(), rel_tol=1e-6)


def test_float64_logits_keep_float64_and_half_precision_is_computed_in_float32() -> None:
    logits = torch.randn(4, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([0, 3, 9, 1])
    exact = smooth_cross_entropy(logits, targets)
    assert exact.dtype == torch.float64
    in_float32 = smooth_cross_entropy(logits.float(), targets).double()
    assert (exact - in_float32).abs().max() > 0  # float64 is not rounded through float32
    assert smooth_cross_entropy(logits.bfloat16(), targets).dtype == torch.float32
