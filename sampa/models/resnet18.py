"""ResNet-18 with a CIFAR stem (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016).

Architecture variant: the ImageNet ResNet-18 layout (basic blocks 2/2/2/2, channels
64/128/256/512, strides 1/2/2/2) with the 7x7 stride-2 stem and max-pool replaced by one
3x3 stride-1 conv (64 channels) + BN + ReLU; basic block conv3x3-BN-ReLU-conv3x3-BN, added to
the shortcut, then ReLU; projection shortcuts (option B: 1x1 conv + BN) where the shape
changes, identity otherwise; global average pooling, Linear(512, num_classes). No conv bias;
Kaiming-normal (fan_out) convolutions, Linear default initialisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._layers import conv1x1, conv3x3, init_weights

STAGE_WIDTHS: tuple[int, int, int, int] = (64, 128, 256, 512)


class BasicBlockB(nn.Module):
    """Post-activation basic block with a 1x1-conv+BN projection shortcut when needed."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_ch, out_ch, stride)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = conv3x3(out_ch, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch)
        if stride != 1 or in_ch != out_ch:
            self.shortcut: nn.Module = nn.Sequential(conv1x1(in_ch, out_ch, stride), nn.BatchNorm2d(out_ch))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for 32x32 inputs."""

    def __init__(self, num_classes: int, blocks: tuple[int, ...] = (2, 2, 2, 2)) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv3x3(3, 64), nn.BatchNorm2d(64), nn.ReLU())
        layers: list[nn.Module] = []
        in_ch = 64
        for stage, (width, count) in enumerate(zip(STAGE_WIDTHS, blocks, strict=True)):
            for i in range(count):
                layers.append(BasicBlockB(in_ch, width, 2 if stage > 0 and i == 0 else 1))
                in_ch = width
        self.stages = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        init_weights(self, conv_mode="fan_out")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stages(self.stem(x))
        return self.fc(torch.flatten(self.pool(out), 1))


def resnet18(num_classes: int) -> ResNet18:
    """ResNet-18 (CIFAR stem)."""
    return ResNet18(num_classes)
