"""Spearman's rank correlation, for asking whether a score ranks masks the way their IoU does."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def ranks(values: Sequence[float]) -> np.ndarray:
    """float64 (n,) ranks 0..n-1 of ``values``; tied values share their mean rank."""
    v = np.asarray(values, np.float64)
    order = np.argsort(v, kind="mergesort")
    out = np.empty(len(v), np.float64)
    out[order] = np.arange(len(v), dtype=np.float64)
    for value in np.unique(v):
        tied = v == value
        out[tied] = out[tied].mean()
    return out


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rho of two equal-length sequences (Pearson's r of their ranks); NaN when either is
    constant or shorter than 2 (no ranking to compare)."""
    if len(a) != len(b):
        raise ValueError(f"spearman: {len(a)} vs {len(b)} values")
    ra, rb = ranks(a), ranks(b)
    if len(ra) < 2 or ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])
