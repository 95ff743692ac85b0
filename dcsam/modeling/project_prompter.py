"""A prompt generator learnt from one project's annotations, as a residual around the cold start.

The training-free cold start prompts SAM with points and a box read off DC-SAM's prior masks
(:func:`dcsam.engines.dcsam_engine.prompts_from_priors`). This module learns two corrections to those
prompts from the project's accepted annotations:

* a dense prompt added to SAM's "no mask" dense embedding, computed from how much each query location
  looks like the support's foreground and background (fixed cosine similarities of SAM's embedding,
  learnt ones through a 1x1 projection, and the two prior masks);
* per prompt type (positive point, negative point, box corner) a token added to SAM's sparse prompt
  embeddings, computed from the support's foreground and background prototypes.

Both output layers start at zero, so an untrained module leaves SAM's inputs, and thus the cold start's
masks, exactly as they were: training starts from the known-good behaviour and can only move away
from it as far as the project's annotations pull it (and cross-validation allows).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

POINT_POS, POINT_NEG, BOX_CORNER = 0, 1, 2  # prompt types: which token delta a sparse prompt gets


def _prototype(feats: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted average pooling over the K shots and locations: (K, C, h, w), (K, 1, h, w) -> (C,)."""
    return (feats * weight).sum((0, 2, 3)) / (weight.sum() + 1e-4)


def _cosine_map(feats: torch.Tensor, proto: torch.Tensor) -> torch.Tensor:
    """(1, C, h, w) against (C,) -> (1, 1, h, w) cosine similarity."""
    return F.cosine_similarity(feats, proto.view(1, -1, 1, 1), dim=1, eps=1e-6).unsqueeze(1)


class ProjectPrompter(nn.Module):
    """Residual prompts for SAM from the support (see the module doc). ``dim``: SAM's prompt width."""

    def __init__(self, dim: int = 256, hidden: int = 64) -> None:
        super().__init__()
        self.dim = dim
        self.proj = nn.Conv2d(dim, hidden, 1)  # a learnt metric for the similarity maps
        self.dense = nn.Sequential(
            nn.Conv2d(6, hidden, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(hidden, dim, 1),
        )
        self.tokens = nn.Sequential(nn.Linear(2 * dim, hidden), nn.GELU(), nn.Linear(hidden, 3 * dim))
        self.reset_output()

    def reset_output(self) -> None:
        """Zero both output layers: the module then adds nothing (the cold start exactly)."""
        for layer in (self.dense[-1], self.tokens[-1]):
            assert isinstance(layer, (nn.Conv2d, nn.Linear))
            nn.init.zeros_(layer.weight)
            assert layer.bias is not None
            nn.init.zeros_(layer.bias)

    def forward(
        self,
        query_embed: torch.Tensor,
        support_embed: torch.Tensor,
        support_mask: torch.Tensor,
        prior_pos: torch.Tensor,
        prior_neg: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One query against its K shots.

        query_embed (1, C, h, w) and support_embed (K, C, h, w): SAM's image embeddings; support_mask
        (K, 1, H, W) in [0, 1] at any grid; priors (1, 1, g, g). Returns the dense delta (1, C, h, w) and
        the token deltas (3, C) indexed by POINT_POS, POINT_NEG, BOX_CORNER.
        """
        h, w = query_embed.shape[-2:]
        fg = F.interpolate(support_mask.to(support_embed.dtype), size=(h, w), mode="area")
        bg = 1.0 - fg
        fg_proto, bg_proto = _prototype(support_embed, fg), _prototype(support_embed, bg)
        q_proj, s_proj = self.proj(query_embed), self.proj(support_embed)
        maps = [
            _cosine_map(query_embed, fg_proto),
            _cosine_map(query_embed, bg_proto),
            _cosine_map(q_proj, _prototype(s_proj, fg)),
            _cosine_map(q_proj, _prototype(s_proj, bg)),
            F.interpolate(prior_pos.to(query_embed.dtype), size=(h, w), mode="bilinear", align_corners=False),
            F.interpolate(prior_neg.to(query_embed.dtype), size=(h, w), mode="bilinear", align_corners=False),
        ]
        dense = self.dense(torch.cat(maps, dim=1))
        tokens = self.tokens(torch.cat([fg_proto, bg_proto])).view(3, self.dim)
        return dense, tokens


def token_types(labels: torch.Tensor, boxes: int) -> torch.Tensor:
    """Prompt type of each sparse embedding SAM's prompt encoder makes from point ``labels`` (n,) (1
    positive, 0 negative) followed by ``boxes`` boxes (two corners each, in that order)."""
    types = torch.where(labels > 0, POINT_POS, POINT_NEG).to(torch.long)
    return torch.cat([types, torch.full((2 * boxes,), BOX_CORNER, dtype=torch.long, device=labels.device)])
