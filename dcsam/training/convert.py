"""Convert a prompt generator trained with the reference DC-SAM scripts into a dcsam checkpoint.

The reference saves the whole model's DDP state dict (``module.`` prefixes, frozen backbone
included). Two layouts: its image training script saves the DC-SAM model itself (``module.<generator
keys>``), its video training script the generator under ``module.prompt_encoder.`` next to the SAM 2
model it fine-tuned (``module.sam2.``). Only the prompt generator's tensors are taken; attention layers
there keep nn.MultiheadAttention's packed ``in_proj`` weights, which are split into our q/k/v projections.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..checkpoints import read_torch_file, save_checkpoint
from ..engines.dcsam_engine import PROMPT_GENERATOR_KIND
from ..errors import CheckpointError

log = logging.getLogger(__name__)

_SIMPLE = {
    "downsample_query.0.weight": "down.0.weight",
    "merge_1.0.weight": "merge_pos.0.weight",
    "merge_2.0.weight": "merge_neg.0.weight",
    "sam_downscaling.0.weight": "sam2_downscale.down0.weight",
    "sam_downscaling.0.bias": "sam2_downscale.down0.bias",
    "sam_downscaling.1.weight": "sam2_downscale.norm.weight",
    "sam_downscaling.1.bias": "sam2_downscale.norm.bias",
    "sam_downscaling.3.weight": "sam2_downscale.down1.weight",
    "sam_downscaling.3.bias": "sam2_downscale.down1.bias",
}
_BRANCHES = {"transformer_decoder": "pos_branch", "neg_transformer_decoder": "neg_branch"}
_LAYERS = {
    "transformer_cross_attention_layers_0.0.multihead_attn": "support_attn.attn",
    "transformer_cross_attention_layers_0.0.norm": "support_attn.norm",
    "transformer_cross_attention_layers.0.multihead_attn": "query_attn.attn",
    "transformer_cross_attention_layers.0.norm": "query_attn.norm",
    "transformer_self_attention_layers.0.self_attn": "self_attn.attn",
    "transformer_self_attention_layers.0.norm": "self_attn.norm",
    "supp_q_feat": "tokens",
    "q_embed": "token_pos",
}


IMAGE_LAYOUT, VIDEO_LAYOUT = "image", "video"
_VIDEO_GENERATOR, _VIDEO_SAM2 = "prompt_encoder.", "sam2."


def reference_layout(state: dict[str, torch.Tensor]) -> str:
    """Which training script saved ``state``: :data:`VIDEO_LAYOUT` or :data:`IMAGE_LAYOUT`."""
    keys = [k.removeprefix("module.") for k in state]
    return VIDEO_LAYOUT if any(k.startswith(_VIDEO_GENERATOR) for k in keys) else IMAGE_LAYOUT


def convert_reference_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Reference (possibly ``module.``-prefixed) keys, either layout -> our ``PromptGenerator`` keys."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if reference_layout(state) == VIDEO_LAYOUT:
        sam2 = [k for k in state if k.startswith(_VIDEO_SAM2)]
        if sam2:
            log.warning(
                "the video checkpoint's %d SAM 2 tensors (its fine-tuned mask decoder) are not converted: "
                "dcsam runs the SAM 2 checkpoint you give it, frozen",
                len(sam2),
            )
        state = {k.removeprefix(_VIDEO_GENERATOR): v for k, v in state.items() if k.startswith(_VIDEO_GENERATOR)}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in _SIMPLE:
            out[_SIMPLE[key]] = value
            continue
        branch, _, rest = key.partition(".")
        if branch not in _BRANCHES:
            continue  # frozen backbone / SAM tensors, losses: not part of the prompt generator
        for ref_prefix, ours in _LAYERS.items():
            if not rest.startswith(ref_prefix + "."):
                continue
            leaf = rest[len(ref_prefix) + 1 :]
            base = f"{_BRANCHES[branch]}.{ours}"
            if leaf in ("in_proj_weight", "in_proj_bias"):
                kind = "weight" if leaf.endswith("weight") else "bias"
                for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                    out[f"{base}.{name}.{kind}"] = part.clone()
            else:
                out[f"{base}.{leaf}"] = value
            break
        else:
            log.warning("reference key %s not recognised; skipped", key)
    if not out:
        raise CheckpointError("no prompt-generator tensors found: is this a DC-SAM reference checkpoint?")
    return out


def infer_settings(converted: dict[str, torch.Tensor]) -> dict[str, str]:
    full = "down.0.weight" in converted
    sam2 = "sam2_downscale.down0.weight" in converted
    settings = {"variant": "full" if full else "prior_only", "sam": "sam2.1_hiera_l" if sam2 else "vit_h"}
    if full:
        mid = converted["down.0.weight"].shape[1]
        settings["backbone"] = {1536: "resnet50_v2", 768: "vgg16_bn"}.get(mid, f"unknown({mid})")
    else:
        settings["backbone"] = "resnet50_v2"
    return settings


def _read_reference(src: str | Path) -> dict[str, torch.Tensor]:
    raw = read_torch_file(src)
    if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        raw = raw["state_dict"]
    if not isinstance(raw, dict):
        raise CheckpointError(f"{src}: does not hold a state dict")
    return {k: v for k, v in raw.items() if torch.is_tensor(v)}


def convert_reference(src: str | Path, dst: str | Path, **overrides: str | None) -> dict[str, str]:
    """Write a dcsam prompt-generator checkpoint from a reference one; returns its settings and the
    layout found (``"layout"``: image or video training script)."""
    state = _read_reference(src)
    converted = convert_reference_state(state)
    settings = {**infer_settings(converted), **{k: v for k, v in overrides.items() if v}}
    settings["neg_stage2_source"] = "support_pos_release"  # the release's behaviour it was trained with
    _check_loads(converted, settings)
    layout = reference_layout(state)
    save_checkpoint(dst, PROMPT_GENERATOR_KIND, converted, settings, converted_from=str(src), layout=layout)
    return {**settings, "layout": layout}


def _check_loads(converted: dict[str, torch.Tensor], settings: dict[str, str]) -> None:
    """Fail now, not at serving time, if the tensors do not fit the architecture."""
    from ..backbones import BACKBONES
    from ..modeling import PromptGenerator
    from ..sam_models import get_spec
    from ..weights import load_strict

    mid = BACKBONES[settings["backbone"]][0].mid_channels if settings["backbone"] in BACKBONES else 0
    gen = PromptGenerator(mid, variant=settings["variant"], sam2_fusion=get_spec(settings["sam"]).family == "sam2")
    load_strict(gen, converted, source="converted reference checkpoint")
