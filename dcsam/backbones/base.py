"""Frozen CNN backbones that feed DC-SAM's prior masks and mid-level features."""

from __future__ import annotations

import torch
from torch import nn


class PriorBackbone(nn.Module):
    """A frozen backbone split PFENet-style into mid-level and high-level stages.

    Subclasses set ``mid_channels`` (channels of concat(layer2, layer3)), ``high_channels``,
    ``stride`` (DC-SAM's feature grid is 512 / stride), ``input_size`` and the input
    normalisation ``mean`` / ``std``. Inputs are RGB in [0, 1].
    """

    mid_channels: int
    high_channels: int
    stride: int
    input_size: int = 512  # side of the square input the backbone sees (DC-SAM's 512 by default)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def freeze(self) -> PriorBackbone:
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()
        return self

    def train(self, mode: bool = True) -> PriorBackbone:
        # Frozen: BatchNorm always uses its running statistics.
        return super().train(False)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        mean = images.new_tensor(self.mean).view(1, 3, 1, 1)
        std = images.new_tensor(self.std).view(1, 3, 1, 1)
        return (images - mean) / std

    def forward_mid(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``images`` (B, 3, H, W) in [0, 1] -> (layer2, layer3) at their native grids."""
        raise NotImplementedError

    def forward_high(self, layer3: torch.Tensor) -> torch.Tensor:
        """layer3 features (possibly masked) -> layer4 features."""
        raise NotImplementedError
