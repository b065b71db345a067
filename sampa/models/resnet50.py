"""ResNet-50 for ImageNet-1K (Table 3): torchvision's ``resnet50``, randomly initialised.

The paper does not name its ImageNet model; 77.25 % top-1 for SAM after 90 epochs is what a
ResNet-50 reaches (Foret et al., 2021 report 77.5 % at 100 epochs), so the suite uses ResNet-50.
"""

from __future__ import annotations

from torch import nn


def resnet50(num_classes: int = 1000) -> nn.Module:
    """torchvision ResNet-50 (v1.5: stride on the 3x3 convolution), no pretrained weights."""
    from torchvision.models import resnet50 as torchvision_resnet50  # importing torchvision costs ~2 s

    model = torchvision_resnet50(weights=None, num_classes=num_classes)
    for module in model.modules():  # no in-place ops (the zoo's rule: functional_call/vmap/compile)
        if isinstance(module, nn.ReLU):
            module.inplace = False
    return model
