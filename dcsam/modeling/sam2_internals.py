"""The SAM 2 internals dcsam relies on, wrapped in one place.

``sam2`` exposes its image features and its memory encoding only through ``SAM2VideoPredictor``,
which keeps every frame of a video; our bounded-memory propagation, the image adapter and the
mask-tube training run ``SAM2Base``'s steps themselves and so need two of its private methods, the
memory encoding they stand in for, and ``track_step``'s long signature. Calling them from here alone
keeps a SAM 2 upgrade that changes them a one-file fix.
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


def autograd_rope_tables(model: SAM2Base) -> None:
    """Make SAM 2's rotary tables usable by autograd.

    ``RoPEAttention`` caches its rotation table (``freqs_cis``) when it first sees a feature size; a table
    made under ``torch.inference_mode`` (the propagator's frames) is an inference tensor, which a training
    step through memory attention cannot save for backward. Such tables are replaced by ordinary copies
    (same values: a serving thread that reads them meanwhile sees no difference).
    """
    for module in model.modules():
        table = getattr(module, "freqs_cis", None)
        if isinstance(table, torch.Tensor) and table.is_inference():
            module.freqs_cis = table.clone()


def encode_memory(
    model: SAM2Base,
    feats: list[torch.Tensor],
    sizes: list[tuple[int, int]],
    mask_probs: torch.Tensor,
    object_score_logits: torch.Tensor,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``SAM2Base._encode_new_memory`` for a mask already in [0, 1] (B, 1, S, S), without touching
    the model's settings (callers binarise or squash the mask themselves, and apply
    :func:`non_overlapping_masks` where they want it).

    ``feats`` / ``sizes``: the frame's :func:`flat_backbone_features`. Objects scored absent
    (``object_score_logits`` <= 0) get the no-object embedding. Returns the memory features and
    their positional encodings.
    """
    b, c = feats[-1].size(1), model.hidden_dim
    h, w = sizes[-1]
    pix = feats[-1].permute(1, 2, 0).reshape(b, c, h, w)
    mask_for_mem = mask_probs * model.sigmoid_scale_for_mem_enc + model.sigmoid_bias_for_mem_enc
    out = model.memory_encoder(pix, mask_for_mem, skip_mask_sigmoid=True)
    features = out["vision_features"]
    if model.no_obj_embed_spatial is not None:
        absent = 1 - (object_score_logits > 0).float()
        features = features + absent[..., None, None] * model.no_obj_embed_spatial[..., None, None].expand(
            *features.shape
        )
    return features, out["vision_pos_enc"]


def track_frame(
    model: SAM2Base,
    index: int,
    features: tuple[list[torch.Tensor], list[torch.Tensor], list[tuple[int, int]]],
    memory: tuple[dict, dict],
    num_frames: int,
    *,
    mask_inputs: torch.Tensor | None = None,
    reverse: bool = False,
    run_mem_encoder: bool = True,
) -> dict:
    """``SAM2Base.track_step`` on frame ``index`` (no point prompts).

    ``features``: the frame's :func:`flat_backbone_features`; ``memory``: the (conditioning,
    non-conditioning) frame outputs it reads, by frame index. ``mask_inputs`` (B, 1, S, S) makes
    it a conditioning frame (its mask given); otherwise SAM 2 tracks the objects from memory.
    """
    feats, pos, sizes = features
    cond, non_cond = memory
    return model.track_step(
        frame_idx=index,
        is_init_cond_frame=mask_inputs is not None,
        current_vision_feats=feats,
        current_vision_pos_embeds=pos,
        feat_sizes=sizes,
        point_inputs=None,
        mask_inputs=mask_inputs,
        output_dict={"cond_frame_outputs": cond, "non_cond_frame_outputs": non_cond},
        num_frames=num_frames,
        track_in_reverse=reverse,
        run_mem_encoder=run_mem_encoder,
    )
