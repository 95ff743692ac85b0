"""The model flags every ``dcsam`` command shares, and the :class:`SegmenterConfig` they describe.

Defaults come from :mod:`dcsam.config` (``DEFAULT_SAM``, ``DEFAULT_BACKBONE`` and the
``SegmenterConfig`` field defaults), overridable by the same ``DCSAM_*`` environment variables the
backend reads, so a command and the server agree on the model unless told otherwise.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from ..config import DEFAULT_BACKBONE, DEFAULT_SAM, SegmenterConfig


def add_model_args(p: argparse.ArgumentParser, *, engine: bool = True) -> None:
    """Add the model flags to ``p``; ``engine=False`` for commands that fix the engine themselves."""
    env = os.environ.get
    g = p.add_argument_group("model")
    if engine:
        g.add_argument("--engine", choices=["lite", "dcsam"], default=env("DCSAM_ENGINE", SegmenterConfig.engine))
    g.add_argument(
        "--sam",
        default=env("DCSAM_SAM", DEFAULT_SAM),
        help=f"base model: vit_b|vit_l|vit_h|sam2.1_hiera_{{t,s,b+,l}}|sam2_hiera_* "
        f"(default $DCSAM_SAM or {DEFAULT_SAM})",
    )
    g.add_argument("--sam-checkpoint", default=env("DCSAM_SAM_CHECKPOINT"), help="official SAM / SAM 2 checkpoint file")
    g.add_argument(
        "--backbone",
        default=env("DCSAM_BACKBONE", DEFAULT_BACKBONE),
        help=f"resnet50_v2|resnet50|vgg16_bn|efficientnet_lite0 (default $DCSAM_BACKBONE or {DEFAULT_BACKBONE})",
    )
    g.add_argument("--backbone-weights", default=env("DCSAM_BACKBONE_WEIGHTS"))
    g.add_argument("--variant", choices=["full", "prior_only"], default=SegmenterConfig.variant)
    g.add_argument(
        "--neg-stage2-source",
        choices=["query_neg", "support_pos_release"],
        default=SegmenterConfig.neg_stage2_source,
        help="negative branch stage-2 keys: our default, or the reference release's behaviour",
    )
    g.add_argument(
        "--prompt-generator",
        default=env("DCSAM_PROMPT_GENERATOR"),
        help="trained prompt-generator checkpoint (default: training-free cold start)",
    )
    g.add_argument(
        "--random-weights",
        nargs="?",
        const="sam",
        choices=["sam", "backbone", "all"],
        help="random weights for these parts (alone: sam; the default backbone's weights are bundled); "
        "for tests and timings only",
    )
    g.add_argument("--device", default=env("DCSAM_DEVICE", SegmenterConfig.device), help="auto | cpu | cuda | cuda:N")
    g.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default=SegmenterConfig.precision,
        help="auto: bf16 autocast on CUDA, fp32 on CPU (the engines autocast on CUDA only)",
    )
    g.add_argument("--offline", action="store_true", help="never download weights")


def model_config(flags: Any, **overrides: Any) -> SegmenterConfig:
    """The :class:`SegmenterConfig` of parsed model flags (an argparse namespace, or any object with
    the same attribute names); ``overrides`` win, e.g. ``engine="dcsam"`` for a command without
    ``--engine``."""
    rnd = flags.random_weights or ""
    values: dict[str, Any] = {
        "sam": flags.sam,
        "sam_checkpoint": flags.sam_checkpoint,
        "backbone": flags.backbone,
        "backbone_weights": flags.backbone_weights,
        "variant": flags.variant,
        "neg_stage2_source": flags.neg_stage2_source,
        "prompt_generator": flags.prompt_generator,
        "random_sam_weights": rnd in ("sam", "all"),
        "random_backbone_weights": rnd in ("backbone", "all"),
        "allow_download": not flags.offline,
        "device": flags.device,
        "precision": flags.precision,
    }
    if hasattr(flags, "engine"):
        values["engine"] = flags.engine
    return SegmenterConfig(**{**values, **overrides})
