"""DC-SAM: frozen backbone + frozen SAM / SAM 2, driven by the trainable prompt generator.

The frozen parts are split out (``encode_query`` / ``encode_support``) so that callers can cache
each image's features once; ``forward_features`` runs only the trainable part and SAM's decoder.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Self

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.base import PriorBackbone
from .prior import masked_high_features, prior_mask
from .prompt_generator import PromptGenerator
from .sam_adapter import SamAdapter, SamFeatures


class FeatureBatch:
    """A dataclass of features batched along dim 0; each field is a tensor or a value with its own
    ``cat`` and ``select`` (e.g. :class:`SamFeatures`)."""

    @classmethod
    def cat(cls, items: list[Self]) -> Self:
        """Every field of the items concatenated along dim 0."""
        parts = []
        for field in fields(cls):  # type: ignore[arg-type]
            values = [getattr(item, field.name) for item in items]
            parts.append(torch.cat(values) if torch.is_tensor(values[0]) else type(values[0]).cat(values))
        return cls(*parts)

    def select(self, index) -> Self:
        """The same batch with every field indexed along dim 0."""
        values = [getattr(self, field.name) for field in fields(self)]  # type: ignore[arg-type]
        return type(self)(*[v[index] if torch.is_tensor(v) else v.select(index) for v in values])


@dataclass
class QueryFeatures(FeatureBatch):
    """Frozen features of query images. mid (B, Cmid, g, g); high (B, C4, h4, w4)."""

    mid: torch.Tensor
    high: torch.Tensor
    sam: SamFeatures


@dataclass
class SupportFeatures(FeatureBatch):
    """Frozen features of K support shots per item, flattened to B*K along dim 0.

    mid (B*K, Cmid, g, g); mask (B*K, 1, g, g) in {0, 1}; high_pos / high_neg: layer4 of the
    masked layer3, masked again (B*K, C4, h4, w4).
    """

    mid: torch.Tensor
    mask: torch.Tensor
    high_pos: torch.Tensor
    high_neg: torch.Tensor
    sam: SamFeatures

    def repeat(self, times: int) -> SupportFeatures:
        """The same K shots for ``times`` queries (K shots stay contiguous per query)."""

        def rep(t):
            return t.repeat(times, *([1] * (t.dim() - 1)))

        hr = None if self.sam.high_res is None else [rep(h) for h in self.sam.high_res]
        return SupportFeatures(
            rep(self.mid), rep(self.mask), rep(self.high_pos), rep(self.high_neg), SamFeatures(rep(self.sam.embed), hr)
        )


class DCSAM(nn.Module):
    def __init__(
        self, backbone: PriorBackbone, sam: SamAdapter, generator: PromptGenerator, image_size: int = 512
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.sam = sam
        self.generator = generator
        self.image_size = image_size
        self.grid = image_size // backbone.stride

    # -- frozen encoders -----------------------------------------------------------------------
    def _to_grid(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] == self.grid and x.shape[-2] == self.grid:
            return x
        return F.interpolate(x, size=(self.grid, self.grid), mode="bilinear", align_corners=True)

    def _backbone(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        size = self.backbone.input_size
        x = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=True)
        l2, l3 = self.backbone.forward_mid(x)
        return torch.cat([self._to_grid(l2), self._to_grid(l3)], dim=1), l3

    @torch.no_grad()
    def encode_query(self, images: torch.Tensor, sam: SamFeatures | None = None) -> QueryFeatures:
        """images (B, 3, H, W) RGB in [0, 1], any size (resized to the backbone's and SAM's inputs)."""
        mid, l3 = self._backbone(images)
        return QueryFeatures(mid, self.backbone.forward_high(l3), sam if sam is not None else self.sam.encode(images))

    @torch.no_grad()
    def encode_support(
        self, images: torch.Tensor, masks: torch.Tensor, sam: SamFeatures | None = None
    ) -> SupportFeatures:
        """images (N, 3, H, W) in [0, 1]; masks (N, 1, H, W) in {0, 1} at the images' size."""
        mid, l3 = self._backbone(images)
        size = self.backbone.input_size
        m = F.interpolate(masks.float(), size=(size, size), mode="nearest")
        return SupportFeatures(
            mid=mid,
            mask=F.interpolate(m, size=(self.grid, self.grid), mode="nearest"),
            high_pos=masked_high_features(self.backbone, l3, m),
            high_neg=masked_high_features(self.backbone, l3, 1.0 - m),
            sam=sam if sam is not None else self.sam.encode(images),
        )

    @torch.no_grad()
    def priors(self, query: QueryFeatures, support: SupportFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        """Positive and negative prior masks at the grid: (B, 1, g, g) each, in [0, 1]."""
        b = query.high.shape[0]
        k = support.high_pos.shape[0] // b
        pos = prior_mask(query.high, support.high_pos.view(b, k, *support.high_pos.shape[1:]))
        neg = prior_mask(query.high, support.high_neg.view(b, k, *support.high_neg.shape[1:]))
        return self._to_grid(pos), self._to_grid(neg)

    # -- trainable path ------------------------------------------------------------------------
    def decode(
        self, query_sam: SamFeatures, z_pos: torch.Tensor, z_neg: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt SAM with :meth:`sparse_prompts` -> logits (B, 1, 256, 256), iou (B, 1)."""
        return self.sam.decode_tokens(query_sam, self.sparse_prompts(z_pos, z_neg))

    def sparse_prompts(self, z_pos: torch.Tensor, z_neg: torch.Tensor) -> torch.Tensor:
        """The generator's tokens as SAM's sparse prompt embeddings: [P+ + e_pos ; P- + e_neg], e_pos /
        e_neg SAM's positive / negative point embeddings."""
        e_pos = self.sam.positive_embedding.to(z_pos.dtype)
        e_neg = self.sam.negative_embedding.to(z_neg.dtype)
        return torch.cat([z_pos + e_pos, z_neg + e_neg], dim=1)

    def forward_features(self, query: QueryFeatures, support: SupportFeatures) -> dict[str, torch.Tensor]:
        """Two-stage prompting. Returns logits (B, 1, 512, 512), coarse logits, iou, tokens."""
        b = query.mid.shape[0]
        k = support.mid.shape[0] // b
        gen = self.generator
        prior_pos, prior_neg = self.priors(query, support)
        q_sam = self._to_grid(gen.sam_features(query.sam.embed, query.sam.high_res))
        s_sam = self._to_grid(gen.sam_features(support.sam.embed, support.sam.high_res))
        s_mask = support.mask.view(b, k, 1, self.grid, self.grid)
        maps = gen.fuse(query.mid, q_sam, support.mid, s_sam, s_mask, prior_pos, prior_neg)
        z1_pos, z1_neg = gen.stage1(maps, s_mask)
        coarse_logits, _ = self.decode(query.sam, z1_pos, z1_neg)
        with torch.no_grad():
            coarse = (self.upsample(coarse_logits) > 0).to(coarse_logits.dtype)
            coarse = F.interpolate(coarse, size=(self.grid, self.grid), mode="nearest")
        if gen.neg_stage2_source == "support_pos_release" and self.sam.family == "sam1":
            # the release's SAM 1 prompt encoder adds the label embeddings to the stage-1 tokens in
            # place, so its stage 2 starts from them; its SAM 2 encoder adds out of place
            z1_pos = z1_pos + self.sam.positive_embedding.to(z1_pos.dtype)
            z1_neg = z1_neg + self.sam.negative_embedding.to(z1_neg.dtype)
        z2_pos, z2_neg = gen.stage2(maps, z1_pos, z1_neg, coarse)
        logits, iou = self.decode(query.sam, z2_pos, z2_neg)
        return {
            "logits": self.upsample(logits),
            "coarse_logits": self.upsample(coarse_logits),
            "low_res_logits": logits,
            "iou": iou,
            "prior_pos": prior_pos,
            "prior_neg": prior_neg,
            "tokens_pos": z2_pos,
            "tokens_neg": z2_neg,
        }

    def upsample(self, logits: torch.Tensor) -> torch.Tensor:
        return F.interpolate(logits, size=(self.image_size, self.image_size), mode="bilinear", align_corners=True)

    def forward(
        self, query_images: torch.Tensor, support_images: torch.Tensor, support_masks: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """query (B, 3, H, W); support (B, K, 3, H, W); masks (B, K, H, W) -> logits (B, 1, 512, 512)."""
        b, k = support_images.shape[:2]
        query = self.encode_query(query_images)
        support = self.encode_support(support_images.flatten(0, 1), support_masks.flatten(0, 1).unsqueeze(1).float())
        return self.forward_features(query, support)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.generator.parameters() if p.requires_grad]
