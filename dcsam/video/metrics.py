"""Video object segmentation metrics as in the DAVIS benchmark toolkit.

* J (region similarity): IoU of the predicted and ground-truth masks; an empty prediction of an
  empty ground truth scores 1.
* F (contour accuracy): F-measure of boundary precision and recall, a boundary pixel counting as
  matched when the other boundary lies within ``bound_th`` x the image diagonal (0.008, rounded
  up: 8 px at 854x480), boundaries as in the toolkit's ``seg2bmap``.
* Per sequence: mean over the scored frames; J&F = (J + F) / 2. The benchmark figure is the mean
  over sequences (objects) of those means.
* Which frames are scored: the DAVIS 2016 and 2017 semi-supervised toolkits drop the first frame
  (its mask is given) and the last frame (``annotations[1:-1]``); :data:`DAVIS_FRAMES`. The IC-VOS
  protocol gives no frame of the video, so it scores every frame; :data:`ALL_FRAMES`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from ..masks import iou

DAVIS_FRAMES = "davis"  # skip the first and the last frame (DAVIS semi-supervised toolkits)
ALL_FRAMES = "all"  # score every frame (IC-VOS: no frame of the video is given)
SKIP_FIRST = "skip-first"  # skip only the given frame
FRAME_RULES = (DAVIS_FRAMES, ALL_FRAMES, SKIP_FIRST)


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """One-pixel-wide boundary of a boolean mask, as the DAVIS toolkit computes it.

    A pixel is on the boundary when it differs from its east, south or south-east neighbour.
    """
    seg = np.asarray(seg, bool)
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def disk(radius: int) -> np.ndarray:
    """A disk structuring element (x^2 + y^2 <= r^2), like skimage.morphology.disk."""
    r = int(radius)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (xx * xx + yy * yy <= r * r).astype(np.uint8)


def boundary_pixels(shape: tuple[int, ...], bound_th: float = 0.008) -> int:
    """Boundary tolerance in pixels: ``bound_th`` if >= 1, else ceil(bound_th x diagonal)."""
    return int(bound_th) if bound_th >= 1 else int(math.ceil(bound_th * math.hypot(*shape)))


def boundary_measure(pred: np.ndarray, gt: np.ndarray, bound_th: float = 0.008) -> float:
    """F: boundary F-measure with a tolerance of ``bound_th`` x the image diagonal."""
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    if pred.shape != gt.shape:
        raise ValueError(f"mask shapes differ: {pred.shape} vs {gt.shape}")
    radius = boundary_pixels(pred.shape, bound_th)
    fg_b = seg2bmap(pred)
    gt_b = seg2bmap(gt)
    kernel = disk(radius)
    fg_dil = cv2.dilate(fg_b.astype(np.uint8), kernel) > 0
    gt_dil = cv2.dilate(gt_b.astype(np.uint8), kernel) > 0
    n_fg = int(np.count_nonzero(fg_b))
    n_gt = int(np.count_nonzero(gt_b))
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1.0, 0.0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    else:
        precision = np.count_nonzero(fg_b & gt_dil) / n_fg
        recall = np.count_nonzero(gt_b & fg_dil) / n_gt
    if precision + recall == 0:
        return 0.0
    return 2.0 * precision * recall / (precision + recall)


def scored_frames(num_frames: int, rule: str = DAVIS_FRAMES, given: int = 0) -> list[int]:
    """Indices that count under ``rule`` (``given`` = the frame whose mask was given)."""
    if rule not in FRAME_RULES:
        raise ValueError(f"unknown frame rule {rule!r}; choose one of {FRAME_RULES}")
    idx = list(range(num_frames))
    if rule == DAVIS_FRAMES:
        return [i for i in idx if i != given and i != num_frames - 1]
    if rule == SKIP_FIRST:
        return [i for i in idx if i != given]
    return idx


def statistics(values: Sequence[float]) -> dict[str, float]:
    """DAVIS statistics of per-frame values: mean (M), recall (R: share > 0.5), decay (D).

    Decay: mean of the first quarter minus mean of the last quarter of the frames.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return {"mean": float("nan"), "recall": float("nan"), "decay": float("nan")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = float(np.nanmean(x))
        recall = float(np.nanmean(x > 0.5))
        ids = (np.round(np.linspace(1, len(x), 5) + 1e-10) - 1).astype(int)
        bins = [x[ids[i] : ids[i + 1] + 1] for i in range(4)]
        decay = float(np.nanmean(bins[0]) - np.nanmean(bins[3]))
    return {"mean": mean, "recall": recall, "decay": decay}


@dataclass
class SequenceScores:
    """Per-frame J and F of one (sequence, object); ``frames`` are the scored frame indices."""

    name: str
    frames: list[int] = field(default_factory=list)
    j: list[float] = field(default_factory=list)
    f: list[float] = field(default_factory=list)

    def add(self, index: int, pred: np.ndarray, gt: np.ndarray, bound_th: float = 0.008) -> tuple[float, float]:
        jj, ff = iou(pred, gt), boundary_measure(pred, gt, bound_th)
        self.frames.append(int(index))
        self.j.append(float(jj))
        self.f.append(float(ff))
        return jj, ff

    def summary(self) -> dict:
        js, fs = statistics(self.j), statistics(self.f)
        return {
            "name": self.name,
            "frames_scored": len(self.frames),
            "J": js["mean"],
            "F": fs["mean"],
            "J&F": (js["mean"] + fs["mean"]) / 2,
            "J_recall": js["recall"],
            "F_recall": fs["recall"],
            "J_decay": js["decay"],
            "F_decay": fs["decay"],
        }


def benchmark_means(sequences: Iterable[dict]) -> dict[str, float]:
    """The benchmark row: means over sequences of their J, F and J&F (and recall / decay)."""
    rows = list(sequences)
    if not rows:
        return {}
    keys = ("J", "F", "J&F", "J_recall", "F_recall", "J_decay", "F_decay")
    return {k: float(np.mean([r[k] for r in rows])) for k in keys}
