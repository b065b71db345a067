"""DenseNet-121, CIFAR variant (Huang et al., "Densely Connected Convolutional Networks", CVPR 2017).

Architecture variant (DenseNet-BC): dense blocks of 6/12/24/16 bottleneck layers, growth rate
k = 32, bottleneck layer BN-ReLU-conv1x1(4k)-BN-ReLU-conv3x3(k) whose output is concatenated to
its input; transitions BN-ReLU-conv1x1 with compression 0.5 (floor) + 2x2 average pooling.
CIFAR stem: a single 3x3 conv with 2k = 64 channels, stride 1, **no** 7x7 conv and no initial
max-pool. Head: BN-ReLU, global average pooling, Linear(1024, num_classes). No dropout, no conv
bias; Kaiming-normal (fan_out) convolutions, Linear default initialisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._layers import conv1x1, conv3x3, init_weights


class Bottleneck(nn.Module):
    """Dense layer: appends ``growth`` new feature maps to its input."""

    def __init__(self, in_ch: int, growth: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = conv1x1(in_ch, 4 * growth)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = conv3x3(4 * growth, growth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([x, out], dim=1)


class Transition(nn.Module):
    """BN-ReLU-conv1x1 channel compression followed by 2x2 average pooling."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_ch)
        self.conv = conv1x1(in_ch, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), kernel_size=2)


class DenseNet(nn.Module):
    """DenseNet-BC for 32x32 inputs."""

    def __init__(
        self, block_sizes: tuple[int, ...], growth: int, num_classes: int, compression: float = 0.5
    ) -> None:
        super().__init__()
        channels = 2 * growth
        self.stem = conv3x3(3, channels)
        layers: list[nn.Module] = []
        for index, size in enumerate(block_sizes):
            layers += [Bottleneck(channels + i * growth, growth) for i in range(size)]
            channels += size * growth
            if index < len(block_sizes) - 1:
                reduced = int(channels * compression)
                layers.append(Transition(channels, reduced))
                channels = reduced
        self.features = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(channels)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        init_weights(self, conv_mode="fan_out")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.features(self.stem(x))))
        return self.fc(torch.flatten(self.pool(out), 1))


def densenet121(num_classes: int) -> DenseNet:
    """DenseNet-121 (blocks 6/12/24/16, growth 32)."""
    return DenseNet((6, 12, 24, 16), growth=32, num_classes=num_classes)
