"""Segmentation metrics as the few-shot benchmarks compute them (HSNet / PFENet conventions)."""

from __future__ import annotations

from collections import defaultdict

import torch

from ..data.base import IGNORE


class SegmentationScore:
    """Accumulates intersection/union per class; mIoU = mean over classes, FB-IoU over fg and bg.

    Pixels labelled 255 in the ground truth are excluded.
    """

    def __init__(self) -> None:
        self.inter = defaultdict(float)
        self.union = defaultdict(float)
        self.bg_inter = 0.0
        self.bg_union = 0.0
        self.episodes = 0

    def update(self, pred: torch.Tensor, target: torch.Tensor, class_ids) -> None:
        """pred (B, S, S) bool; target (B, S, S) 0/1/255; class_ids (B,)."""
        for p, t, c in zip(pred, target, class_ids):
            valid = t != IGNORE
            fg = (t == 1) & valid
            p = p.bool() & valid
            self.inter[int(c)] += float((p & fg).sum())
            self.union[int(c)] += float((p | fg).sum())
            bg_p, bg_t = ~p & valid, ~fg & valid
            self.bg_inter += float((bg_p & bg_t).sum())
            self.bg_union += float((bg_p | bg_t).sum())
            self.episodes += 1

    def merge(self, other: "SegmentationScore") -> None:
        for c in other.inter:
            self.inter[c] += other.inter[c]
            self.union[c] += other.union[c]
        self.bg_inter += other.bg_inter
        self.bg_union += other.bg_union
        self.episodes += other.episodes

    def class_iou(self) -> dict[int, float]:
        return {c: self.inter[c] / self.union[c] if self.union[c] else 0.0 for c in sorted(self.union)}

    def summary(self) -> dict:
        ious = self.class_iou()
        miou = sum(ious.values()) / len(ious) if ious else 0.0
        fg_i, fg_u = sum(self.inter.values()), sum(self.union.values())
        fg = fg_i / fg_u if fg_u else 0.0
        bg = self.bg_inter / self.bg_union if self.bg_union else 0.0
        return {"miou": miou, "fb_iou": (fg + bg) / 2, "class_iou": ious, "episodes": self.episodes}
