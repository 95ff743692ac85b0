"""Builds a DC-SAM model from a :class:`SegmenterConfig` (the one place that wires the parts)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .backbones import BACKBONES, create_backbone
from .config import SegmenterConfig
from .modeling import DCSAM, PromptGenerator, SamAdapter
from .sam_models import build_sam_model, get_spec


def build_dcsam(config: SegmenterConfig, *, meta: bool = False) -> DCSAM:
    """Build DC-SAM with frozen backbone and SAM. ``meta=True``: shapes only (parameter counts)."""
    spec = get_spec(config.sam)
    # where both models' weights come from, and whether they may be downloaded
    fetch: dict[str, Any] = {"cache_dir": config.resolved_cache_dir(), "allow_download": config.allow_download}
    if meta:
        with torch.device("meta"):
            backbone = BACKBONES[config.backbone][0]().freeze()
    else:
        backbone = create_backbone(
            config.backbone, weights=config.backbone_weights, random_weights=config.random_backbone_weights, **fetch
        )
    sam = build_sam_model(
        config.sam,
        checkpoint=config.sam_checkpoint,
        random_weights=config.random_sam_weights,
        meta=meta,
        image_size=config.sam_image_size,
        **fetch,
    )
    if config.backbone_input_size:
        backbone.input_size = config.backbone_input_size
    with torch.device("meta") if meta else torch.device("cpu"):
        generator = PromptGenerator(
            backbone.mid_channels,
            variant=config.variant,
            sam2_fusion=spec.family == "sam2",
            neg_stage2_source=config.neg_stage2_source,
            dropout=config.dropout,
        )
    return DCSAM(backbone, SamAdapter(sam, spec.family), generator, image_size=config.image_size)


def parameter_counts(model: nn.Module) -> dict[str, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return {"trainable_params": trainable, "frozen_params": frozen, "total_params": trainable + frozen}
