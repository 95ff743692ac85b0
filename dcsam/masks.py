"""Binary-mask helpers every module shares: resizing and IoU, each written once.

Convention for IoU: two empty masks agree perfectly (IoU 1.0). That is the DAVIS and
Label Studio reading (predicting "nothing here" where there is nothing is right), and it keeps
the mean over frames of a video where the object leaves the view meaningful.
"""

from __future__ import annotations

import cv2
import numpy as np


def resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of a (H, W) mask to (height, width); returns bool (height, width).

    Nearest neighbour keeps a mask binary and never invents a boundary band; a no-op when the
    size already matches (the result is still a fresh bool array).
    """
    m = np.asarray(mask)
    if m.shape[:2] == (height, width):
        return m.astype(bool, copy=True)
    return cv2.resize(m.astype(np.uint8), (int(width), int(height)), interpolation=cv2.INTER_NEAREST) > 0


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two same-shape masks (truthy = inside); 1.0 when both are empty."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"iou: mask shapes differ: {a.shape} vs {b.shape}")
    union = int(np.logical_or(a, b).sum())
    return float(np.logical_and(a, b).sum()) / union if union else 1.0
