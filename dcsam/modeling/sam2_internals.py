"""The two SAM 2 internals dcsam relies on, wrapped in one place.

``sam2`` exposes its image features and its memory encoding only through ``SAM2VideoPredictor``,
which keeps every frame of a video; our bounded-memory propagation, the image adapter and the
mask-tube training run ``SAM2Base``'s steps themselves and so need two of its private methods.
Calling them from here alone keeps a SAM 2 upgrade that changes them a one-file fix.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from sam2.modeling.sam2_base import SAM2Base


def flat_backbone_features(
    model: SAM2Base, backbone_out: dict
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[tuple[int, int]]]:
    """``SAM2Base._prepare_backbone_features``: the last ``num_feature_levels`` levels of
    ``forward_image``'s output flattened for the memory attention.

    Returns (features, positional encodings, sizes): per level an (H*W, B, C) tensor, an
    (H*W, B, C) tensor and its (H, W).
    """
    _, feats, pos, sizes = model._prepare_backbone_features(backbone_out)
    return feats, pos, sizes


def non_overlapping_masks(model: SAM2Base, mask_logits: torch.Tensor) -> torch.Tensor:
    """``SAM2Base._apply_non_overlapping_constraints``: (B, 1, H, W) scores where only the best
    object keeps each pixel (the others are clamped to at most -10)."""
    return model._apply_non_overlapping_constraints(mask_logits)
