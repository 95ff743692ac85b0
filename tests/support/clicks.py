"""The standard simulated user of interactive segmentation benchmarks."""

from __future__ import annotations

import cv2
import numpy as np


def corrective_click(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float, bool] | None:
    """One click at the innermost pixel of the larger error region of ``pred``: positive in a missed region,
    negative in a false one; None when ``pred`` is ``gt``."""
    fn, fp = gt & ~pred, pred & ~gt
    if not fn.any() and not fp.any():
        return None
    positive = int(fn.sum()) >= int(fp.sum())
    err = (fn if positive else fp).astype(np.uint8)
    dist = cv2.distanceTransform(np.pad(err, 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(dist.argmax()), dist.shape)
    return float(x), float(y), positive
