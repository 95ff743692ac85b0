"""Cycle-consistent threshold for lite video propagation: the labelled frame judges each frame's cut.

The k-NN matching's logit is cut at one threshold (the engine's, logit 0 by default), a threshold
that suits the conditioning frame. In frames
where the object takes poses or overlaps backgrounds the conditioning frame does not show, its
cells score a little below that and the mask shrinks (on breakdance the prediction held about half
of the dancer for tens of frames). The one labelled frame can judge candidate cuts of this frame:
label this frame's cells with a candidate (logit + bias > cut), predict the conditioning frame back
from them with the same k-NN priors in reverse, and compare that with the conditioning frame's own
mask. A cut that drops object cells leaves the conditioning frame's object finding background; a
cut that takes background makes the conditioning frame's background find "object". The bias whose
reconstruction has the best IoU wins, less ``penalty`` per unit of bias (near ties keep the
matching's own cut), and a positive bias may at most ``growth``-fold the mask: when the object is
mostly hidden no labelling of this frame explains the conditioning frame, and the reconstruction
would then reward claiming look-alikes around it.

Cost: one product of the anchor's rows with the frame's grid (the anchor keeps all its object
cells and at most ``max_background`` background cells, weighted so that the IoU is estimated for
the whole frame), in bfloat16 where that pays, and one top-k; each candidate is a pass over
(anchor rows, ``TOPK``) labels. About 0.05 s a frame at the 768 working side on this 2-core CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..lite.matching import bf16_pays, bf16_rows

TOPK = 64  # the anchor rows' nearest frame cells from which each candidate's k fore/background are taken
BIASES = (-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0)  # candidate logit biases


@dataclass
class CycleAnchor:
    """The conditioning frame as the judge: rows (N, C) unit features (bfloat16 and padded with
    zero rows where bfloat16 products pay, see :func:`dcsam.lite.matching.bf16_rows`), ``foreground``
    (N,) bool and ``weight`` (N,), how many of the frame's cells each row stands for, for the N real rows."""

    rows: torch.Tensor
    foreground: torch.Tensor
    weight: torch.Tensor

    @staticmethod
    def from_grid(feats: torch.Tensor, fg_fraction: np.ndarray, max_background: int = 1500) -> CycleAnchor:
        """``feats`` (C, h, w) unit features, ``fg_fraction`` (h, w): each cell's object fraction
        (a cell is object when at least half of it is)."""
        c = feats.shape[0]
        rows = feats.reshape(c, -1).T.float()
        fg = torch.from_numpy(np.ascontiguousarray(fg_fraction).ravel() >= 0.5).to(rows.device)
        fg_idx, bg_idx = torch.nonzero(fg).ravel(), torch.nonzero(~fg).ravel()
        keep_bg = bg_idx
        if bg_idx.numel() > max_background:  # an even subsample, each row standing for several cells
            keep_bg = bg_idx[torch.linspace(0, bg_idx.numel() - 1, max_background, device=rows.device).long()]
        idx = torch.cat([fg_idx, keep_bg])
        weight = torch.ones(idx.numel(), device=rows.device)
        if keep_bg.numel():
            weight[fg_idx.numel() :] = bg_idx.numel() / keep_bg.numel()
        kept = rows[idx].contiguous()
        if bf16_pays(kept.device):
            kept = bf16_rows(kept)
        return CycleAnchor(rows=kept, foreground=fg[idx], weight=weight)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.rows, self.foreground, self.weight))


@torch.no_grad()
def cycle_bias(
    anchor: CycleAnchor,
    feats: torch.Tensor,
    logit: torch.Tensor,
    k: int,
    *,
    penalty: float = 0.02,
    growth: float = 2.0,
    cut: float = 0.0,
    biases: Sequence[float] = BIASES,
) -> tuple[float, float]:
    """(bias, reconstruction IoU): the bias to add to ``logit`` (h, w) of the frame with features
    ``feats`` (C, h, w), chosen by how well the cut ``logit + bias > cut`` (the decoder's threshold
    as a logit) predicts the anchor back (k-NN priors with ``k`` neighbours, the matching's own rule)."""
    c = feats.shape[0]
    n = anchor.foreground.numel()
    sims = (anchor.rows @ feats.reshape(c, -1).to(anchor.rows.dtype))[:n]  # (N, cells)
    vals, idx = sims.topk(min(TOPK, sims.shape[1]), dim=1)
    vals = vals.float()
    flat = logit.reshape(-1).float()
    base_area = float((flat > cut).float().mean())
    best: tuple[float, float, float] | None = None  # (score, -|bias|, bias)
    best_iou = 0.0
    for b in biases:
        inside = flat + b > cut
        if b > 0 and float(inside.float().mean()) > growth * base_area:
            continue
        labels = inside[idx]  # (N, TOPK): each anchor row's nearest frame cells, nearest first, as object?
        pos, neg = _k_mean(vals, labels, k), _k_mean(vals, ~labels, k)
        pred = pos > neg
        inter = float((anchor.weight * (pred & anchor.foreground)).sum())
        union = float((anchor.weight * (pred | anchor.foreground)).sum())
        iou = inter / union if union > 0 else 1.0
        key = (round(iou - penalty * abs(b), 3), -abs(b), b)
        if best is None or key[:2] > best[:2]:
            best, best_iou = key, iou
    return (best[2], best_iou) if best is not None else (0.0, 0.0)


def _k_mean(vals: torch.Tensor, selected: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of the first ``k`` selected values of each row (rows sorted high to low); a row with
    fewer than ``k`` selected among its ``TOPK`` fills the rest with its lowest value (a bound on
    the ones not looked at)."""
    take = selected & (selected.cumsum(1) <= k)
    n = take.sum(1)
    return ((vals * take).sum(1) + (k - n).clamp(min=0) * vals[:, -1]) / k
