"""Shared building blocks and initialisation helpers for the CIFAR model zoo.

All helpers are functional-friendly: no in-place ops, so every model works with
``torch.func.functional_call``, ``torch.func.vmap`` and ``torch.compile``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv3x3(in_ch: int, out_ch: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    """3x3 convolution with padding 1."""
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=bias)


def conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution without bias (projection shortcuts, bottlenecks, transitions)."""
    return nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False)


class ZeroPadShortcut(nn.Module):
    """Parameter-free shortcut: optional spatial downsampling, then zero channels appended.

    ``downsample`` is ``"subsample"`` (keep every second pixel, ResNet option A),
    ``"avgpool"`` (2x2 average pooling, PyramidNet) or ``"none"``.
    """

    def __init__(self, in_ch: int, out_ch: int, downsample: str = "none") -> None:
        super().__init__()
        if out_ch < in_ch:
            raise ValueError(f"ZeroPadShortcut cannot shrink channels ({in_ch} -> {out_ch})")
        if downsample not in ("none", "subsample", "avgpool"):
            raise ValueError(f"unknown downsample {downsample!r}; choose one of: avgpool, none, subsample")
        self.extra_channels = out_ch - in_ch
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample == "subsample":
            x = x[..., ::2, ::2]
        elif self.downsample == "avgpool":
            x = F.avg_pool2d(x, kernel_size=2, stride=2, ceil_mode=True)
        # (W_left, W_right, H_top, H_bottom, C_front, C_back): zeros appended after the channels.
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))

    def extra_repr(self) -> str:
        return f"extra_channels={self.extra_channels}, downsample={self.downsample!r}"


def init_weights(model: nn.Module, conv_mode: str = "fan_out", linear_std: float | None = None) -> None:
    """Reference-style initialisation, applied to every submodule of ``model``.

    Convolutions: Kaiming-normal (He et al. 2015) with ReLU gain, bias zero.
    BatchNorm: weight 1, bias 0. Linear: PyTorch default, or N(0, linear_std^2) weights
    with zero bias when ``linear_std`` is given. Deterministic under ``torch.manual_seed``.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode=conv_mode, nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear) and linear_std is not None:
            nn.init.normal_(module.weight, mean=0.0, std=linear_std)
            nn.init.zeros_(module.bias)
