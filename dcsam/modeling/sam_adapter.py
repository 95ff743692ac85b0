"""A single interface over frozen SAM 1 and SAM 2 image models: encode images, and decode
either learned prompt tokens (batched, one image per token set) or classic point/box prompts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .sam2_internals import flat_backbone_features

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class SamFeatures:
    """Frozen image features. embed (B, 256, 64, 64); high_res (SAM 2 only):
    [(B, 32, 256, 256), (B, 64, 128, 128)]."""

    embed: torch.Tensor
    high_res: list[torch.Tensor] | None = None

    def select(self, index) -> SamFeatures:
        return SamFeatures(self.embed[index], None if self.high_res is None else [h[index] for h in self.high_res])

    @staticmethod
    def cat(items: list[SamFeatures]) -> SamFeatures:
        hr = None
        if items[0].high_res is not None:
            hr = [torch.cat([i.high_res[k] for i in items if i.high_res is not None]) for k in range(2)]
        return SamFeatures(torch.cat([i.embed for i in items]), hr)

    def to(self, device=None, dtype=None) -> SamFeatures:
        return SamFeatures(
            self.embed.to(device=device, dtype=dtype),
            None if self.high_res is None else [h.to(device=device, dtype=dtype) for h in self.high_res],
        )


class SamAdapter(nn.Module):
    """Wraps ``segment_anything.Sam`` (family "sam1") or ``sam2.SAM2Base`` (family "sam2")."""

    def __init__(self, model: Any, family: str) -> None:
        super().__init__()
        if family not in ("sam1", "sam2"):
            raise ValueError(f"unknown SAM family {family!r}")
        self.model = model  # segment_anything's Sam or sam2's SAM2Base (untyped: Any)
        self.family = family
        self.image_size = int(model.image_encoder.img_size if family == "sam1" else model.image_size)
        self.model.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> SamAdapter:
        # Frozen and kept in eval mode (SAM 2's stability fallback stays active).
        return super().train(False)

    @property
    def prompt_encoder(self) -> Any:  # the wrapped model's (untyped) prompt encoder
        return self.model.prompt_encoder if self.family == "sam1" else self.model.sam_prompt_encoder

    @property
    def mask_decoder(self) -> Any:  # the wrapped model's (untyped) mask decoder
        return self.model.mask_decoder if self.family == "sam1" else self.model.sam_mask_decoder

    @property
    def positive_embedding(self) -> torch.Tensor:
        return self.prompt_encoder.point_embeddings[1].weight  # (1, 256)

    @property
    def negative_embedding(self) -> torch.Tensor:
        return self.prompt_encoder.point_embeddings[0].weight  # (1, 256)

    # -- encoding ----------------------------------------------------------------------------
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB in [0, 1] -> (B, 3, S, S) normalised, S = SAM's input size (1024 for the
        official models); the aspect ratio is not kept, as in DC-SAM."""
        x = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear", align_corners=True)
        mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> SamFeatures:
        x = self.preprocess(images)
        if self.family == "sam1":
            return SamFeatures(self.model.image_encoder(x))
        m = self.model
        out = m.forward_image(x)  # applies conv_s0 / conv_s1 to the high-resolution levels
        vision_feats, _, sizes = flat_backbone_features(m, out)
        if m.directly_add_no_mem_embed:
            vision_feats[-1] = vision_feats[-1] + m.no_mem_embed
        b = x.shape[0]
        maps = [f.permute(1, 2, 0).reshape(b, -1, *s) for f, s in zip(vision_feats, sizes)]
        return SamFeatures(maps[-1], maps[:-1])

    # -- decoding learned tokens (batched) -----------------------------------------------------
    def dense_inputs(self, batch: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pe = self.prompt_encoder.get_dense_pe().to(like.dtype)
        dense = (
            self.prompt_encoder.no_mask_embed.weight.to(like.dtype).view(1, -1, 1, 1).expand(batch, -1, *pe.shape[-2:])
        )
        return pe, dense

    def decode_tokens(self, feats: SamFeatures, sparse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One token set per image. sparse (B, N, 256) -> logits (B, 1, 256, 256), iou (B, 1)."""
        if self.family == "sam2":
            masks, iou, _, _ = self.decode_tokens_sam2(feats, sparse)
            return masks, iou
        pe, dense = self.dense_inputs(sparse.shape[0], sparse)
        return _sam1_batched_decode(self.mask_decoder, feats.embed, pe, sparse, dense)

    def decode_tokens_sam2(self, feats: SamFeatures, sparse: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """:meth:`decode_tokens` on SAM 2 with all of its decoder's outputs: logits (B, 1, 256, 256),
        iou (B, 1), SAM output tokens (B, 1, 256) and object score logits (B, 1), the last two
        for SAM 2's memory (object pointer, no-object embedding)."""
        pe, dense = self.dense_inputs(sparse.shape[0], sparse)
        return self._run_decoder(feats, pe, sparse, dense, multimask=False)

    def _run_decoder(
        self,
        feats: SamFeatures,
        pe: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        *,
        multimask: bool,
        repeat_image: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        """The wrapped model's mask decoder on ``feats``: SAM 1 returns (logits, iou); SAM 2, which also
        reads the high-resolution levels and may repeat one image for several prompt sets, returns
        (logits, iou, SAM output tokens, object score logits)."""
        sam2_only = {} if self.family == "sam1" else {"repeat_image": repeat_image, "high_res_features": feats.high_res}
        return self.mask_decoder(
            image_embeddings=feats.embed,
            image_pe=pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
            **sam2_only,
        )

    # -- decoding classic prompts (one image, several prompt sets) -----------------------------
    def decode_prompts(
        self,
        feats: SamFeatures,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM's own prompting on one image (feats batch 1). Coordinates in the 1024 input frame.

        points: (coords (P, n, 2), labels (P, n)); boxes (P, 4); mask_input (P, 1, 256, 256).
        Returns low-res logits (P, M, 256, 256) and predicted IoU (P, M).
        """
        sparse, dense = self.encode_prompts(points=points, boxes=boxes, mask_input=mask_input)
        return self.decode_embeddings(feats, sparse, dense, multimask=multimask)

    def encode_prompts(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM's prompt encoder: sparse (P, n, 256) (the points, then two corners per box) and dense
        (P, 256, h, w) embeddings, as :meth:`decode_prompts` feeds them to the decoder."""
        return self.prompt_encoder(points=points, boxes=boxes, masks=mask_input)

    def decode_embeddings(
        self, feats: SamFeatures, sparse: torch.Tensor, dense: torch.Tensor, multimask: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`decode_prompts` from prompt embeddings (e.g. :meth:`encode_prompts` plus learnt
        corrections): low-res logits (P, M, 256, 256) and predicted IoU (P, M)."""
        pe = self.prompt_encoder.get_dense_pe()
        masks, iou, *_ = self._run_decoder(
            feats, pe, sparse, dense, multimask=multimask, repeat_image=sparse.shape[0] > 1
        )
        return masks, iou


def _sam1_batched_decode(
    decoder: Any, embed: torch.Tensor, pe: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor
):
    """SAM 1's ``MaskDecoder.predict_masks`` with image i paired to token set i.

    Upstream repeats every image embedding once per prompt set (one image, many prompts);
    here the batch already pairs them, so the embedding is used as is and the PE broadcast.
    Returns the first mask token's mask (single-mask output).
    """
    out_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat([out_tokens.unsqueeze(0).expand(sparse.shape[0], -1, -1).to(sparse.dtype), sparse], dim=1)
    src = embed + dense
    b, c, h, w = src.shape
    hs, src = decoder.transformer(src, pe.expand(b, -1, -1, -1), tokens)
    iou_out, mask_out = hs[:, 0], hs[:, 1]
    upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
    hyper = decoder.output_hypernetworks_mlps[0](mask_out)  # (B, C')
    bu, cu, hu, wu = upscaled.shape
    masks = (hyper.unsqueeze(1) @ upscaled.view(bu, cu, hu * wu)).view(bu, 1, hu, wu)
    iou = decoder.iou_prediction_head(iou_out)[:, :1]
    return masks, iou
