"""PyramidNet-110 with alpha = 270 (Han, Kim & Kim, "Deep Pyramidal Residual Networks", CVPR 2017).

Architecture variant: additive widening with **basic (non-bottleneck) blocks**, 18 blocks per
stage (depth 110 = 6*18 + 2), 3x3 conv stem with 16 channels + BN (no ReLU); the width of
block i (1-based, i = 1..54) is round(16 + alpha * i / 54), i.e. 21, 26, ..., 286; the first
block of stages 2 and 3 has stride 2. Block: BN-conv3x3-BN-ReLU-conv3x3-BN (BN at the block end,
no ReLU after the addition). Shortcut: identity, with 2x2 average pooling where the block
downsamples, and zero-padding of the new channels (parameter-free). Head: BN-ReLU, global
average pooling, Linear(286, num_classes). No conv bias; Kaiming-normal (fan_out) convolutions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._layers import ZeroPadShortcut, conv3x3, init_weights


class PyramidBlock(nn.Module):
    """Pyramidal basic block with a zero-padded (average-pooled) identity shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(in_ch),
            conv3x3(in_ch, out_ch, stride),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(),
            conv3x3(out_ch, out_ch),
            nn.BatchNorm2d(out_ch),
        )
        self.shortcut = ZeroPadShortcut(in_ch, out_ch, "avgpool" if stride != 1 else "none")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


def pyramid_widths(depth: int, alpha: float, base: int = 16) -> list[int]:
    """Block output widths for additive widening: round(base + alpha * i / N), i = 1..N."""
    if depth < 8 or (depth - 2) % 6 != 0:
        raise ValueError(f"invalid PyramidNet depth {depth}; choose 6n+2 with n >= 1 (110, 164, ...)")
    total = 3 * ((depth - 2) // 6)
    return [round(base + alpha * i / total) for i in range(1, total + 1)]


class PyramidNet(nn.Module):
    """Additive PyramidNet with basic blocks for 32x32 inputs."""

    def __init__(self, depth: int, alpha: float, num_classes: int) -> None:
        super().__init__()
        widths = pyramid_widths(depth, alpha)
        per_stage = len(widths) // 3
        self.stem = nn.Sequential(conv3x3(3, 16), nn.BatchNorm2d(16))
        blocks: list[nn.Module] = []
        in_ch = 16
        for i, width in enumerate(widths):
            stride = 2 if i in (per_stage, 2 * per_stage) else 1
            blocks.append(PyramidBlock(in_ch, width, stride))
            in_ch = width
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(in_ch)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        init_weights(self, conv_mode="fan_out")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.blocks(self.stem(x))))
        return self.fc(torch.flatten(self.pool(out), 1))


def pyramidnet110(num_classes: int) -> PyramidNet:
    """PyramidNet-110, alpha = 270, basic blocks."""
    return PyramidNet(110, 270.0, num_classes)
