"""Dataset-level IoU as the few-shot benchmarks compute it (HSNet / PFENet conventions).

Per-class IoU here is *accumulated*: intersections and unions are summed over every query of a
class, then divided; mIoU is the mean over classes and FB-IoU the mean of the accumulated
foreground and background IoU. That differs from the mean of per-query IoUs
(:func:`dcsam.masks.iou`), which weighs a small object as much as a large one. A ratio with an
empty union is 1.0, the :mod:`dcsam.masks` convention.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable
from typing import Any

import numpy as np


def _ratio(inter: int, union: int) -> float:
    return inter / union if union else 1.0


class DatasetIoU:
    """Sums of intersections and unions per class, and of the background, over many queries."""

    def __init__(self) -> None:
        self.inter: dict[Hashable, int] = defaultdict(int)
        self.union: dict[Hashable, int] = defaultdict(int)
        self.bg_inter = 0
        self.bg_union = 0
        self.count = 0

    def add(self, pred: np.ndarray, gt: np.ndarray, label: Hashable, valid: np.ndarray | None = None) -> None:
        """One query: bool masks ``pred`` and ``gt`` (same shape); pixels where ``valid`` is False
        (e.g. the datasets' 255 "ignore" label) count for nothing."""
        pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
        if valid is not None:
            pred, gt = pred & valid, gt & valid
        total = int(np.count_nonzero(valid)) if valid is not None else pred.size
        inter, union = int(np.count_nonzero(pred & gt)), int(np.count_nonzero(pred | gt))
        self.inter[label] += inter
        self.union[label] += union
        self.bg_inter += total - union  # valid pixels outside both masks
        self.bg_union += total - inter
        self.count += 1

    def merge(self, other: DatasetIoU) -> None:
        for label in other.union:
            self.inter[label] += other.inter[label]
            self.union[label] += other.union[label]
        self.bg_inter += other.bg_inter
        self.bg_union += other.bg_union
        self.count += other.count

    def class_iou(self) -> dict[Hashable, float]:
        return {label: _ratio(self.inter[label], self.union[label]) for label in self.union}

    def fg_iou(self) -> float:
        return _ratio(sum(self.inter.values()), sum(self.union.values()))

    def bg_iou(self) -> float:
        return _ratio(self.bg_inter, self.bg_union)

    def summary(self) -> dict[str, Any]:
        """class_iou, miou (mean over classes), fg_iou, bg_iou and fb_iou; None with no query."""
        ious = self.class_iou()
        if not self.count:
            return {"class_iou": ious, "miou": None, "fg_iou": None, "bg_iou": None, "fb_iou": None}
        fg, bg = self.fg_iou(), self.bg_iou()
        return {
            "class_iou": ious,
            "miou": float(np.mean(list(ious.values()))),
            "fg_iou": fg,
            "bg_iou": bg,
            "fb_iou": (fg + bg) / 2,
        }
