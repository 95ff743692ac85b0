"""VGG-16-BN prior backbone (torchvision layout), feature grid at stride 16."""

from __future__ import annotations

import torch
from torchvision.models import VGG16_BN_Weights, vgg16_bn

from .base import PriorBackbone

# torchvision `features` indices of each stage; the last max-pool (index 43) is dropped.
_SPLITS = ((0, 7), (7, 14), (14, 24), (24, 34), (34, 43))


class VGG16BN(PriorBackbone):
    mid_channels = 256 + 512
    high_channels = 512
    stride = 16

    def __init__(self) -> None:
        super().__init__()
        self.features = vgg16_bn(weights=None).features[:43]
        self._stages = [range(a, b) for a, b in _SPLITS]

    def _run(self, x: torch.Tensor, stages: range) -> torch.Tensor:
        for i in stages:
            x = self.features[i](x)
        return x

    def forward_mid(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.normalize(images)
        for stage in self._stages[:2]:
            x = self._run(x, stage)
        l2 = self._run(x, self._stages[2])
        return l2, self._run(l2, self._stages[3])

    def forward_high(self, layer3: torch.Tensor) -> torch.Tensor:
        return self._run(layer3, self._stages[4])


TORCHVISION_VGG16_BN_URL = VGG16_BN_Weights.IMAGENET1K_V1.url
