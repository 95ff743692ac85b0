"""ResNet-50 prior backbones, output stride 8 (layer3/layer4 dilated 2/4 after their first block)."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import ResNet50_Weights
from torchvision.models.resnet import Bottleneck, ResNet

from .base import PriorBackbone


def _dilate(layer: nn.Sequential, previous: int, dilation: int) -> None:
    """Turn a strided stage into a dilated one, as ``replace_stride_with_dilation`` builds it: the first
    block keeps the previous stage's dilation (it replaced that stage's stride), the others take ``dilation``.

    The reference DC-SAM release builds its ResNet this way; a trained prompt generator expects its features.
    """
    for index, block in enumerate(layer):
        assert isinstance(block, Bottleneck)
        d = previous if index == 0 else dilation
        conv: nn.Conv2d = block.conv2
        conv.dilation, conv.padding, conv.stride = (d, d), (d, d), (1, 1)
        if block.downsample is not None:
            shortcut = block.downsample[0]
            assert isinstance(shortcut, nn.Conv2d)
            shortcut.stride = (1, 1)


class _ResNetPrior(PriorBackbone):
    mid_channels = 512 + 1024
    high_channels = 2048
    stride = 8

    def _build(self, net: ResNet) -> None:
        _dilate(net.layer3, 1, 2)
        _dilate(net.layer4, 2, 4)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_mid(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.layer1(self.stem(self.normalize(images)))
        l2 = self.layer2(x)
        return l2, self.layer3(l2)

    def forward_high(self, layer3: torch.Tensor) -> torch.Tensor:
        return self.layer4(layer3)


class ResNet50V2(_ResNetPrior):
    """PFENet's "resnet50_v2": deep stem (three 3x3 convs, 3->64->64->128) then a 3x3 max-pool.

    Module names follow the PFENet weight files (conv1..3, bn1..3, layer1..4) so they load as is.
    """

    def __init__(self) -> None:
        super().__init__()
        net = ResNet(Bottleneck, [3, 4, 6, 3])
        # layer1 takes the 128-channel deep stem: torchvision's layer built for 128 inputs (its
        # modules made in the same order, so seeded random weights stay the same)
        downsample = nn.Sequential(nn.Conv2d(128, 256, 1, bias=False), nn.BatchNorm2d(256))
        net.layer1 = nn.Sequential(Bottleneck(128, 64, downsample=downsample), Bottleneck(256, 64), Bottleneck(256, 64))
        self.conv1 = nn.Conv2d(3, 64, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 64, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.conv3 = nn.Conv2d(64, 128, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(128)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self._build(net)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = torch.relu(self.bn3(self.conv3(x)))
        return self.maxpool(x)


class ResNet50(_ResNetPrior):
    """torchvision's ResNet-50 (7x7 stem), dilated to output stride 8 like the v2 variant."""

    def __init__(self) -> None:
        super().__init__()
        net = ResNet(Bottleneck, [3, 4, 6, 3])
        self.conv1, self.bn1, self.maxpool = net.conv1, net.bn1, net.maxpool
        self._build(net)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(torch.relu(self.bn1(self.conv1(x))))


TORCHVISION_RESNET50_URL = ResNet50_Weights.IMAGENET1K_V1.url
