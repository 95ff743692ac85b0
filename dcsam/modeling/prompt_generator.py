"""DC-SAM's prompt generator: fusion convs and two branch decoders.

Shapes at the default 64x64 grid (C = 256, N = 25 tokens per branch):
  support map S_b (B, K*HW, C) with labels (B, K*HW); query map X_b (B, HW, C);
  tokens Z (B, N, C).
"""

from __future__ import annotations

import torch
from torch import nn

from .attention import CycleCrossAttentionLayer, PositionEmbeddingSine, SelfAttentionLayer


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of a (B, C, H, W) map."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class Sam2Downscale(nn.Module):
    """Fuses SAM 2's high-resolution levels into the 64x64 embedding (74,176 parameters).

    hr0 (B, 32, 4h, 4w), hr1 (B, 64, 2h, 2w), embed (B, 256, h, w) -> (B, 256, h, w).
    """

    def __init__(self) -> None:
        super().__init__()
        self.down0 = nn.Conv2d(32, 64, kernel_size=2, stride=2)
        self.norm = LayerNorm2d(64)
        self.down1 = nn.Conv2d(64, 256, kernel_size=2, stride=2)
        self.act = nn.GELU()

    def forward(self, hr0: torch.Tensor, hr1: torch.Tensor, embed: torch.Tensor) -> torch.Tensor:
        h = self.act(self.norm(self.down0(hr0) + hr1))
        return self.act(self.down1(h) + embed)


class BranchDecoder(nn.Module):
    """One branch (positive or negative): 25 tokens, stage 1 on the support, stage 2 on the query."""

    def __init__(self, dim: int = 256, num_tokens: int = 25, num_heads: int = 4) -> None:
        super().__init__()
        self.tokens = nn.Embedding(num_tokens, dim)
        self.token_pos = nn.Embedding(num_tokens, dim)
        self.support_attn = CycleCrossAttentionLayer(dim, num_heads)
        self.query_attn = CycleCrossAttentionLayer(dim, num_heads)
        self.self_attn = SelfAttentionLayer(dim, num_heads)

    def stage1(self, support: torch.Tensor, support_pos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        b = support.shape[0]
        z0 = self.tokens.weight.unsqueeze(0).expand(b, -1, -1)
        pos = self.token_pos.weight.unsqueeze(0).expand(b, -1, -1)
        return self.support_attn(z0, pos, support, support_pos, labels)

    def stage2(
        self, z1: torch.Tensor, query: torch.Tensor, query_pos: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        pos = self.token_pos.weight.unsqueeze(0).expand(z1.shape[0], -1, -1)
        u = self.query_attn(z1, pos, query, query_pos, labels)
        return self.self_attn(u, pos)


class PromptGenerator(nn.Module):
    """Trainable part of DC-SAM.

    variant "full": merges take [D(mid features) | prototype | SAM features | 10 * mask] (769 ch);
    variant "prior_only": no D; prototypes from SAM features; merges take 513 channels.
    """

    def __init__(
        self,
        mid_channels: int,
        *,
        variant: str = "full",
        sam2_fusion: bool = False,
        dim: int = 256,
        num_tokens: int = 25,
        num_heads: int = 4,
        neg_stage2_source: str = "query_neg",
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if variant not in ("full", "prior_only"):
            raise ValueError(f"variant must be 'full' or 'prior_only', not {variant!r}")
        if neg_stage2_source not in ("query_neg", "support_pos_release"):
            raise ValueError("neg_stage2_source must be 'query_neg' or 'support_pos_release'")
        self.variant = variant
        self.neg_stage2_source = neg_stage2_source
        self.dim = dim
        self.down: nn.Sequential | None
        if variant == "full":
            self.down = nn.Sequential(
                nn.Conv2d(mid_channels, dim, 1, bias=False), nn.ReLU(inplace=True), nn.Dropout2d(dropout)
            )
            merge_in = 3 * dim + 1
        else:
            self.down = None
            merge_in = 2 * dim + 1
        self.merge_pos = nn.Sequential(nn.Conv2d(merge_in, dim, 1, bias=False), nn.ReLU(inplace=True))
        self.merge_neg = nn.Sequential(nn.Conv2d(merge_in, dim, 1, bias=False), nn.ReLU(inplace=True))
        self.sam2_downscale = Sam2Downscale() if sam2_fusion else None
        self.pos_branch = BranchDecoder(dim, num_tokens, num_heads)
        self.neg_branch = BranchDecoder(dim, num_tokens, num_heads)
        self.pe = PositionEmbeddingSine(dim // 2)
        self._init_attention()

    def _init_attention(self) -> None:
        for branch in (self.pos_branch, self.neg_branch):
            for name, p in branch.named_parameters():
                if p.dim() > 1 and not name.startswith(("tokens", "token_pos")):
                    nn.init.xavier_uniform_(p)

    # -- fusion ------------------------------------------------------------------------------
    def sam_features(self, embed: torch.Tensor, high_res: list[torch.Tensor] | None) -> torch.Tensor:
        """SAM features used inside the generator: SAM 1 embedding, or SAM 2 levels fused."""
        if self.sam2_downscale is not None:
            if high_res is None:
                raise ValueError("SAM 2 fusion needs the high-resolution features")
            return self.sam2_downscale(high_res[0], high_res[1], embed)
        return embed

    def reduce(self, mid: torch.Tensor | None, sam: torch.Tensor) -> torch.Tensor:
        """Features that prototypes are pooled from (D(mid) for "full", SAM features otherwise)."""
        return self.down(mid) if self.down is not None else sam

    @staticmethod
    def prototype(feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Masked average pooling: (N, C, H, W), (N, 1, H, W) -> (N, C, 1, 1)."""
        return (feats * mask).sum((2, 3), keepdim=True) / (mask.sum((2, 3), keepdim=True) + 5e-4)

    def merged(
        self, merge: nn.Module, reduced: torch.Tensor, proto: torch.Tensor, sam: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        tiled = proto.expand(-1, -1, *reduced.shape[-2:])
        parts = [reduced, tiled, sam, 10.0 * mask] if self.down is not None else [sam, tiled, 10.0 * mask]
        return merge(torch.cat(parts, dim=1))

    def fuse(
        self,
        query_mid: torch.Tensor | None,
        query_sam: torch.Tensor,
        support_mid: torch.Tensor | None,
        support_sam: torch.Tensor,
        support_mask: torch.Tensor,
        prior_pos: torch.Tensor,
        prior_neg: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Merged maps for both branches.

        query_* (B, ., H, W); support_* (B*K, ., H, W); support_mask (B, K, 1, H, W) at the grid;
        priors (B, 1, H, W). Returns S+/S- (B, K, C, H, W) and Q+/Q- (B, C, H, W).
        """
        b, k = support_mask.shape[:2]
        m_pos = support_mask.flatten(0, 1)
        m_neg = 1.0 - m_pos
        red_s = self.reduce(support_mid, support_sam)
        red_q = self.reduce(query_mid, query_sam)
        out = {}
        for sign, merge, m, prior in (
            ("pos", self.merge_pos, m_pos, prior_pos),
            ("neg", self.merge_neg, m_neg, prior_neg),
        ):
            proto = self.prototype(red_s, m)  # (B*K, C, 1, 1)
            s_map = self.merged(merge, red_s, proto, support_sam, m)
            q_proto = proto.view(b, k, *proto.shape[1:]).mean(1)
            out[f"support_{sign}"] = s_map.view(b, k, *s_map.shape[1:])
            out[f"query_{sign}"] = self.merged(merge, red_q, q_proto, query_sam, prior)
        return out

    # -- token stages ------------------------------------------------------------------------
    def _pos_encoding(self, h: int, w: int, like: torch.Tensor) -> torch.Tensor:
        return self.pe(h, w, like.device, like.dtype).flatten(2).transpose(1, 2)  # (1, HW, C)

    def stage1(self, maps: dict[str, torch.Tensor], support_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens attend to every shot's support pixels at once (K*H*W keys)."""
        b, k, c, h, w = maps["support_pos"].shape
        pos = self._pos_encoding(h, w, maps["support_pos"]).repeat(1, k, 1)
        labels = support_mask.view(b, k * h * w) > 0.5

        def flat(x):
            return x.permute(0, 1, 3, 4, 2).reshape(b, k * h * w, c)

        z_pos = self.pos_branch.stage1(flat(maps["support_pos"]), pos, labels)
        z_neg = self.neg_branch.stage1(flat(maps["support_neg"]), pos, ~labels)
        return z_pos, z_neg

    def stage2(
        self, maps: dict[str, torch.Tensor], z_pos: torch.Tensor, z_neg: torch.Tensor, coarse: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """coarse: (B, 1, H, W) binary coarse query mask at the grid."""
        b, c, h, w = maps["query_pos"].shape
        pos = self._pos_encoding(h, w, maps["query_pos"])
        labels = coarse.view(b, h * w) > 0.5
        q_pos = maps["query_pos"].flatten(2).transpose(1, 2)
        if self.neg_stage2_source == "query_neg":
            q_neg = maps["query_neg"].flatten(2).transpose(1, 2)
        else:  # the release attends to the positive support map; it runs 1-shot only (K shots: the first here)
            q_neg = maps["support_pos"][:, 0].flatten(2).transpose(1, 2)
        return self.pos_branch.stage2(z_pos, q_pos, pos, labels), self.neg_branch.stage2(z_neg, q_neg, pos, ~labels)
