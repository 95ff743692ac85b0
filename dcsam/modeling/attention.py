"""Attention blocks of the prompt generator: cycle-consistent cross-attention,
plain self-attention, and the fixed 2-D sine positional encoding. All post-norm, no FFN."""

from __future__ import annotations

import math

import torch
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """DETR-style 2-D sine encoding: ``num_feats`` frequencies per axis, y-part then x-part."""

    def __init__(self, num_feats: int = 128, temperature: float = 10000.0) -> None:
        super().__init__()
        self.num_feats = num_feats
        self.temperature = temperature

    def forward(
        self, height: int, width: int, device: torch.device, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """Returns (1, 2*num_feats, H, W)."""
        ones = torch.ones(1, height, width, device=device, dtype=torch.float32)
        y = ones.cumsum(1)
        x = ones.cumsum(2)
        eps, scale = 1e-6, 2 * math.pi
        y = y / (y[:, -1:, :] + eps) * scale
        x = x / (x[:, :, -1:] + eps) * scale
        dim_t = torch.arange(self.num_feats, device=device, dtype=torch.float32)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_feats)
        px, py = x[..., None] / dim_t, y[..., None] / dim_t
        px = torch.stack((px[..., 0::2].sin(), px[..., 1::2].cos()), dim=4).flatten(3)
        py = torch.stack((py[..., 0::2].sin(), py[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((py, px), dim=3).permute(0, 3, 1, 2).to(dtype)


def cycle_consistency_bias(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Additive bias that drops pixels whose pixel->token->pixel cycle changes label.

    logits: (B, h, Nt, Ns) raw attention logits; labels: (B, Ns) binary, per batch item.
    Returns (B, h, 1, Ns) with 0 (kept) or -inf (dropped), shared by all tokens of a head.
    A head in which every pixel would be dropped gets no bias at all (no NaN rows).
    """
    with torch.no_grad():
        best_token = logits.argmax(dim=2)  # i*(j): (B, h, Ns)
        best_pixel = logits.argmax(dim=3)  # j*(i): (B, h, Nt)
        cycled = torch.gather(best_pixel, 2, best_token)  # ĵ(j) = j*(i*(j)): (B, h, Ns)
        lab = labels.to(torch.int8).unsqueeze(1).expand(-1, logits.shape[1], -1)  # (B, h, Ns)
        consistent = lab == torch.gather(lab, 2, cycled)
        consistent |= ~consistent.any(dim=2, keepdim=True)  # fully masked head: fall back to plain
        bias = torch.zeros(consistent.shape, dtype=logits.dtype, device=logits.device)
        bias.masked_fill_(~consistent, float("-inf"))
    return bias.unsqueeze(2)


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v/out projections and an optional cycle bias."""

    def __init__(self, dim: int = 256, num_heads: int = 4) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """q (B, Nt, C), k/v (B, Ns, C), labels (B, Ns) or None -> (B, Nt, C)."""
        qh, kh, vh = self._split(self.q_proj(q)), self._split(self.k_proj(k)), self._split(self.v_proj(v))
        logits = qh @ kh.transpose(-2, -1) / math.sqrt(self.head_dim)
        if labels is not None:
            logits = logits + cycle_consistency_bias(logits, labels)
        out = logits.softmax(dim=-1) @ vh
        return self.out_proj(out.transpose(1, 2).flatten(2))


class CycleCrossAttentionLayer(nn.Module):
    """x <- LN(x + CycAttn(q = x + query_pos, k = mem + pos, v = mem, labels))."""

    def __init__(self, dim: int = 256, num_heads: int = 4) -> None:
        super().__init__()
        self.attn = Attention(dim, num_heads)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x, query_pos, memory, memory_pos, labels):
        return self.norm(x + self.attn(x + query_pos, memory + memory_pos, memory, labels))


class SelfAttentionLayer(nn.Module):
    """x <- LN(x + MHA(q = k = x + query_pos, v = x))."""

    def __init__(self, dim: int = 256, num_heads: int = 4) -> None:
        super().__init__()
        self.attn = Attention(dim, num_heads)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x, query_pos):
        qk = x + query_pos
        return self.norm(x + self.attn(qk, qk, x))
