"""The lite engine's small trainable head: a residual correction of the training-free logit.

Input, on the stride-8 feature grid: the frozen features (projected to ``hidden`` channels) and
the priors (training-free logit, positive prior, negative prior). Output: a logit residual. The
last layer starts at zero, so an untrained head leaves the training-free prediction unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

PRIOR_CHANNELS = 3  # logit, positive prior, negative prior


class LiteHead(nn.Module):
    def __init__(self, feat_channels: int, hidden: int = 32):
        super().__init__()
        self.feat_channels = feat_channels
        self.hidden = hidden
        self.proj = nn.Conv2d(feat_channels, hidden, 1)
        self.body = nn.Sequential(
            nn.Conv2d(hidden + PRIOR_CHANNELS, hidden, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=2, dilation=2),
            nn.ReLU(inplace=True),
        )
        self.out = nn.Conv2d(hidden, 1, 1)
        self.reset_output()

    def reset_output(self) -> None:
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)  # type: ignore[arg-type]  # Optional in torch's stubs; this conv has a bias

    def forward(self, feats: torch.Tensor, prior_maps: torch.Tensor) -> torch.Tensor:
        """feats (B, C, h, w), prior_maps (B, 3, h, w) -> residual logit (B, 1, h, w)."""
        x = torch.cat([torch.relu(self.proj(feats)), prior_maps], 1)
        return self.out(self.body(x))
