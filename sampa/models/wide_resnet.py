"""Wide ResNet WRN-28-k (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016).

Architecture variant: depth 28 = 6n+4 with **n = 4 pre-activation blocks per stage**
(the paper's standard; not the 5-units-per-stage variant), widening factor k (2 or 10),
3x3 conv stem with 16 channels, stages of 16k/32k/64k channels with strides 1/2/2, block
BN-ReLU-conv3x3-BN-ReLU-conv3x3 (type B(3,3)), 1x1 conv shortcut (no BN) on the pre-activated
input where the shape changes, identity otherwise; dropout 0 (omitted); final BN-ReLU, global
average pooling, Linear(64k, num_classes). Convolutions have no bias; Kaiming-normal (fan_out).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._layers import conv1x1, conv3x3, init_weights


class PreActBlock(nn.Module):
    """Pre-activation wide basic block; projection shortcut reads the activated input."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = conv3x3(in_ch, out_ch, stride)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = conv3x3(out_ch, out_ch)
        self.project = stride != 1 or in_ch != out_ch
        self.shortcut = conv1x1(in_ch, out_ch, stride) if self.project else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.bn1(x))
        residual = self.shortcut(act) if self.project else x
        out = self.conv2(F.relu(self.bn2(self.conv1(act))))
        return out + residual


class WideResNet(nn.Module):
    """WRN-depth-k for 32x32 inputs."""

    def __init__(self, depth: int, widen: int, num_classes: int) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"invalid WRN depth {depth}; choose 6n+4 with n >= 1 (16, 22, 28, ...)")
        if widen < 1:
            raise ValueError(f"invalid WRN widening factor {widen}; choose an integer >= 1")
        widths = (16 * widen, 32 * widen, 64 * widen)
        self.stem = conv3x3(3, 16)
        self.stages = nn.Sequential(*self._make_stages((depth - 4) // 6, widths))
        self.bn = nn.BatchNorm2d(widths[-1])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)
        init_weights(self, conv_mode="fan_out")

    @staticmethod
    def _make_stages(blocks: int, widths: tuple[int, int, int]) -> list[nn.Module]:
        layers: list[nn.Module] = []
        in_ch = 16
        for stage, width in enumerate(widths):
            for i in range(blocks):
                stride = 2 if stage > 0 and i == 0 else 1
                layers.append(PreActBlock(in_ch, width, stride))
                in_ch = width
        return layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.stages(self.stem(x))))
        return self.fc(torch.flatten(self.pool(out), 1))


def wrn28_2(num_classes: int) -> WideResNet:
    """WRN-28-2."""
    return WideResNet(28, 2, num_classes)


def wrn28_10(num_classes: int) -> WideResNet:
    """WRN-28-10."""
    return WideResNet(28, 10, num_classes)
