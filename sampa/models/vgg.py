"""VGG-19 with batch normalisation for CIFAR (Simonyan & Zisserman, "Very Deep Convolutional
Networks for Large-Scale Image Recognition", ICLR 2015, configuration E; BN after Ioffe & Szegedy 2015).

Architecture variant: 16 conv3x3 layers (with bias, as in the reference VGG), each followed by
BN + ReLU, config 64,64,M,128,128,M,256x4,M,512x4,M,512x4,M (M = 2x2 max-pool, stride 2);
a 32x32 input leaves a 512x1x1 map, flattened into a single Linear(512, num_classes) (no
4096-wide FC layers, no dropout). Convolutions Kaiming-normal (fan_out) with zero bias; the
classifier N(0, 0.01^2) with zero bias (torchvision's VGG initialisation).
"""

from __future__ import annotations

import torch
from torch import nn

from ._layers import conv3x3, init_weights

# VGG configuration E; "M" = 2x2 max-pool.
VGG19_CONFIG: tuple[int | str, ...] = (
    (64, 64, "M", 128, 128, "M") + (256,) * 4 + ("M",) + (512,) * 4 + ("M",) + (512,) * 4 + ("M",)
)


def make_features(config: tuple[int | str, ...]) -> nn.Sequential:
    """Conv-BN-ReLU stack with max-pooling at each ``"M"``."""
    layers: list[nn.Module] = []
    in_ch = 3
    for item in config:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            out_ch = int(item)
            layers += [conv3x3(in_ch, out_ch, bias=True), nn.BatchNorm2d(out_ch), nn.ReLU()]
            in_ch = out_ch
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """VGG-BN feature extractor followed by one linear classifier."""

    def __init__(self, config: tuple[int | str, ...], num_classes: int) -> None:
        super().__init__()
        self.features = make_features(config)
        last_width = [c for c in config if c != "M"][-1]
        self.classifier = nn.Linear(int(last_width), num_classes)
        init_weights(self, conv_mode="fan_out", linear_std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def vgg19bn(num_classes: int) -> VGG:
    """VGG19-BN for 32x32 inputs."""
    return VGG(VGG19_CONFIG, num_classes)
