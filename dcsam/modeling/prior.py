"""Training-free prior masks: how much each query location looks like the
support's foreground (positive prior) or background (negative prior)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_high_features(backbone, layer3: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Support features for the priors: layer4(layer3 * M3) * M4.

    layer3 (N, C3, h3, w3); mask (N, 1, H, W) in {0, 1} -> (N, C4, h4, w4). M3 is the mask at layer 3's
    grid (nearest). Where layer 4 stays on that grid (the dilated ResNets and VGG, the reference
    release's backbones) M4 is M3, as the reference computes it and its trained prompt generators
    expect; a coarser layer 4 (EfficientNet-Lite0 at stride 32) gets the mask resized bilinearly,
    its fraction of foreground per cell.
    """
    m3 = F.interpolate(mask, size=layer3.shape[-2:], mode="nearest")
    high = backbone.forward_high(layer3 * m3)
    if high.shape[-2:] == m3.shape[-2:]:
        return high * m3
    return high * F.interpolate(mask, size=high.shape[-2:], mode="bilinear", align_corners=True)


def prior_mask(query_high: torch.Tensor, support_high: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Max cosine similarity of each query location to any (masked) support location.

    query_high (B, C, h, w); support_high (B, K, C, h', w') -> (B, 1, h, w), mean over the K shots.
    No min-max normalisation; values are in [0, 1] for post-ReLU features.
    """
    b, c, h, w = query_high.shape
    q = query_high.flatten(2).transpose(1, 2)  # (B, hw, C)
    q = q / (q.norm(dim=2, keepdim=True) + eps)
    priors = []
    for k in range(support_high.shape[1]):
        s = support_high[:, k].flatten(2)  # (B, C, h'w')
        s = s / (s.norm(dim=1, keepdim=True) + eps)
        priors.append(torch.bmm(q, s).amax(dim=2))
    return torch.stack(priors, 0).mean(0).view(b, 1, h, w)
