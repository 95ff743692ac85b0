"""The segmentation loss every trainer and fine-tuning loop uses: BCE + Dice, weights 1:1."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_bce_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE (mean over every element) + Dice (per sample, mean over the batch).

    logits and target have the same shape (B, ...); target holds probabilities in [0, 1] (soft
    targets such as the share of each grid cell inside the mask are fine). Dice is smoothed by 1,
    so an empty target with an empty prediction costs nothing.
    """
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = logits.sigmoid().flatten(1)
    t = target.flatten(1)
    dice = 1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)
    return bce + dice.mean()


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """:func:`soft_bce_dice_loss` against a label map.

    logits (B, 1, S, S); target (B, S, S) with 0/1 (ignore pixels, 255, count as background).
    """
    return soft_bce_dice_loss(logits, (target == 1).to(logits.dtype).unsqueeze(1))
