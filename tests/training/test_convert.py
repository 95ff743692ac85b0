"""convert-reference: a DDP state dict in the reference release's naming becomes our checkpoint."""

import json
import subprocess
import sys

import torch

from dcsam.checkpoints import load_checkpoint
from dcsam.modeling import PromptGenerator


def reference_state(gen: PromptGenerator) -> dict:
    """Our weights written under the reference module names (as its training scripts save them)."""
    ref = {
        "module.downsample_query.0.weight": gen.down[0].weight,
        "module.merge_1.0.weight": gen.merge_pos[0].weight,
        "module.merge_2.0.weight": gen.merge_neg[0].weight,
        "module.layer4.0.conv1.weight": torch.zeros(3),  # frozen backbone tensors are saved too
    }
    for ref_branch, branch in (("transformer_decoder", gen.pos_branch), ("neg_transformer_decoder", gen.neg_branch)):
        p = f"module.{ref_branch}"
        ref[f"{p}.supp_q_feat.weight"] = branch.tokens.weight
        ref[f"{p}.q_embed.weight"] = branch.token_pos.weight
        for ref_layer, attr, layer in (
            ("transformer_cross_attention_layers_0.0", "multihead_attn", branch.support_attn),
            ("transformer_cross_attention_layers.0", "multihead_attn", branch.query_attn),
            ("transformer_self_attention_layers.0", "self_attn", branch.self_attn),
        ):
            a = layer.attn
            ref[f"{p}.{ref_layer}.{attr}.in_proj_weight"] = torch.cat(
                [a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]
            )
            ref[f"{p}.{ref_layer}.{attr}.in_proj_bias"] = torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias])
            ref[f"{p}.{ref_layer}.{attr}.out_proj.weight"] = a.out_proj.weight
            ref[f"{p}.{ref_layer}.{attr}.out_proj.bias"] = a.out_proj.bias
            ref[f"{p}.{ref_layer}.norm.weight"] = layer.norm.weight
            ref[f"{p}.{ref_layer}.norm.bias"] = layer.norm.bias
    return {k: v.detach().clone() for k, v in ref.items()}


def _convert(src, dst) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dcsam.cli", "convert-reference", src, dst], capture_output=True, text=True
    )


def test_convert_reference_round_trip(tmp_path):
    torch.manual_seed(0)
    gen = PromptGenerator(1536, variant="full")
    src, dst = tmp_path / "best_model.pt", tmp_path / "converted.pt"
    torch.save(reference_state(gen), src)
    proc = _convert(src, dst)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["sam"] == "vit_h" and info["backbone"] == "resnet50_v2" and info["variant"] == "full"
    assert info["layout"] == "image"
    ckpt = load_checkpoint(dst, "dcsam-prompt-generator")
    assert ckpt["settings"]["neg_stage2_source"] == "support_pos_release"
    ours = gen.state_dict()
    assert ckpt["state_dict"].keys() == ours.keys()
    assert all(torch.equal(ckpt["state_dict"][k], ours[k]) for k in ours)


def test_convert_rejects_a_foreign_file(tmp_path):
    src = tmp_path / "other.pt"
    torch.save({"encoder.weight": torch.zeros(2)}, src)
    proc = subprocess.run(
        [sys.executable, "-m", "dcsam.cli", "convert-reference", src, tmp_path / "o.pt"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "no prompt-generator tensors" in proc.stderr


def test_convert_reference_video_layout_round_trip(tmp_path):
    """The release's video training script saves the generator under ``module.prompt_encoder.`` beside the
    SAM 2 model it fine-tuned (``module.sam2.``): the generator converts, the SAM 2 tensors are named as left out."""
    torch.manual_seed(1)
    gen = PromptGenerator(1536, variant="full", sam2_fusion=True)
    image_layout = reference_state(gen)
    d = gen.sam2_downscale
    for ref_key, param in (
        ("sam_downscaling.0.weight", d.down0.weight),
        ("sam_downscaling.0.bias", d.down0.bias),
        ("sam_downscaling.1.weight", d.norm.weight),
        ("sam_downscaling.1.bias", d.norm.bias),
        ("sam_downscaling.3.weight", d.down1.weight),
        ("sam_downscaling.3.bias", d.down1.bias),
    ):
        image_layout[f"module.{ref_key}"] = param.detach().clone()
    video_layout = {k.replace("module.", "module.prompt_encoder.", 1): v for k, v in image_layout.items()}
    video_layout["module.sam2.sam_mask_decoder.transformer.layers.0.norm1.weight"] = torch.ones(256)
    video_layout["module.sam2.memory_encoder.out_proj.weight"] = torch.ones(64, 256, 1, 1)
    src, dst = tmp_path / "best_model.pt", tmp_path / "converted.pt"
    torch.save(video_layout, src)
    proc = _convert(src, dst)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["layout"] == "video" and info["sam"].startswith("sam2")
    assert "2 SAM 2 tensors" in proc.stderr and "not converted" in proc.stderr
    ckpt = load_checkpoint(dst, "dcsam-prompt-generator")
    ours = gen.state_dict()
    assert ckpt["state_dict"].keys() == ours.keys()
    assert all(torch.equal(ckpt["state_dict"][k], ours[k]) for k in ours)
