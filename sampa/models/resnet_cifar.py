"""CIFAR ResNet-20/32/56 (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, Sec. 4.2).

Architecture variant: 6n+2 layers (n = 3, 5, 9 basic blocks per stage for depth 20, 32, 56);
3x3 conv stem with 16 channels + BN + ReLU; three stages of 16/32/64 channels on 32/16/8 pixel
feature maps, the first block of stages 2 and 3 using stride 2; basic block
conv3x3-BN-ReLU-conv3x3-BN, added to the shortcut, then ReLU. Shortcuts are **option A**
(parameter-free identity; where the shape changes: subsample by stride 2 and zero-pad the new
channels). Global average pooling and a single Linear(64, num_classes). No dropout.
Convolutions have no bias; Kaiming-normal (fan_out) initialisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._layers import ZeroPadShortcut, conv3x3, init_weights

STAGE_WIDTHS: tuple[int, int, int] = (16, 32, 64)


class BasicBlockA(nn.Module):
    """Post-activation basic block with an option-A (zero-padding) shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_ch, out_ch, stride)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = conv3x3(out_ch, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch)
        changes_shape = stride != 1 or in_ch != out_ch
        downsample = "subsample" if stride != 1 else "none"
        self.shortcut = ZeroPadShortcut(in_ch, out_ch, downsample) if changes_shape else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs with option-A shortcuts."""

    def __init__(self, depth: int, num_classes: int) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"invalid CIFAR ResNet depth {depth}; choose 6n+2 with n >= 1 (20, 32, 56, ...)")
        blocks = (depth - 2) // 6
        self.stem = nn.Sequential(conv3x3(3, STAGE_WIDTHS[0]), nn.BatchNorm2d(STAGE_WIDTHS[0]), nn.ReLU())
        self.stages = nn.Sequential(*self._make_stages(blocks))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(STAGE_WIDTHS[-1], num_classes)
        init_weights(self, conv_mode="fan_out")

    @staticmethod
    def _make_stages(blocks: int) -> list[nn.Module]:
        layers: list[nn.Module] = []
        in_ch = STAGE_WIDTHS[0]
        for stage, width in enumerate(STAGE_WIDTHS):
            for i in range(blocks):
                stride = 2 if stage > 0 and i == 0 else 1
                layers.append(BasicBlockA(in_ch, width, stride))
                in_ch = width
        return layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stages(self.stem(x))
        return self.fc(torch.flatten(self.pool(out), 1))


def resnet20(num_classes: int) -> CifarResNet:
    """ResNet-20 (n = 3)."""
    return CifarResNet(20, num_classes)


def resnet32(num_classes: int) -> CifarResNet:
    """ResNet-32 (n = 5)."""
    return CifarResNet(32, num_classes)


def resnet56(num_classes: int) -> CifarResNet:
    """ResNet-56 (n = 9)."""
    return CifarResNet(56, num_classes)
