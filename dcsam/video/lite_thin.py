"""Thin parts for lite video propagation: lines, ropes and cables narrower than a grid cell.

The matching decides stride-8 cells of the working frame, so a structure a pixel or two wide (a
paraglider's or a kite-surfer's lines, a bicycle's frame) is never more than a sliver of a cell and
is lost: even a perfect classification of every cell scores such videos poorly (their boundary F
is mostly the lines'). When the labelled frame has thin parts, they are recovered per pixel:

1. The labelled frame's thin parts are its mask less its morphological opening (parts narrower
   than about two cells). Each pixel's colour less its local median (a thin line stands out from
   what surrounds it) is projected on the direction that best separates the thin parts' pixels
   from the background's (Fisher's discriminant, from the labelled frame).
2. Line evidence: that projection averaged along short segments at ``ORIENTATIONS`` angles, the
   best angle kept (a straight line adds up along its own direction; texture averages out).
   Computed at half the frame's own long side (a line's response survives the halving; the cost
   is a quarter).
3. A frame's pixels above the threshold join its mask where they connect to it: a line belongs to
   the object it hangs from.
4. The threshold is chosen on the labelled frame itself: its thin parts are removed and recovered
   at candidate thresholds (quantiles of the background's evidence), and the middle one of those
   whose recovered mask scores within ``PLATEAU`` of the best J&F against the given mask wins. If
   no threshold improves the labelled frame by ``MIN_GAIN``, the label has no thin
   parts worth recovering and nothing is added on any frame (objects without thin parts, or thin
   parts this evidence does not find).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..lite.postprocess import attached
from ..masks import iou, resize_mask
from .metrics import boundary_measure

ORIENTATIONS = 16  # line directions tried (11.25 degrees apart)
SEGMENT = 0.04  # length of the averaging segment, as a share of the detection image's long side
THIN_RADIUS = 4  # opening radius at the detection size: parts narrower than about 2 x 4 px are thin
MEDIAN = 5  # local median window for the colour residual (lines are a few pixels wide at most)
QUANTILES = (0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.998)  # candidate thresholds: background quantiles
MIN_GAIN = 0.02  # J&F the recovery must add on the labelled frame to be used at all
PLATEAU = 0.01  # labelled-frame J&F within this of the best: thresholds that do as well
ACROSS = np.array([0.25, 0.5, 0.25], np.float32)  # a line between two rows of a rotated image is still one line


def _opening_kernel() -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * THIN_RADIUS + 1, 2 * THIN_RADIUS + 1))


def _residual(image: np.ndarray) -> np.ndarray:
    """(h, w, 3) float32: each pixel's colour less its local median."""
    return image.astype(np.float32) - cv2.medianBlur(image, MEDIAN).astype(np.float32)


def line_evidence(score: np.ndarray, segment: int, orientations: int = ORIENTATIONS) -> np.ndarray:
    """(h, w) the best, over ``orientations`` (even) directions, mean of ``score`` (h, w) along a
    centred segment of ``segment`` pixels. The image is rotated (into the rotated image's bounding
    box, so no pixel is cut off) by each angle below 90 degrees, averaged along its rows and along
    its columns (that angle and the one at right angles to it), and the better of the two rotated
    back."""
    h, w = score.shape
    along = np.full(segment, 1.0 / segment, np.float32)
    best = np.full((h, w), -np.inf, np.float32)
    for k in range(orientations // 2):
        angle = 180.0 * k / orientations
        c, s = abs(np.cos(np.deg2rad(angle))), abs(np.sin(np.deg2rad(angle)))
        bw, bh = int(np.ceil(w * c + h * s)), int(np.ceil(w * s + h * c))
        rot = np.asarray(cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0), np.float64)
        rot[:, 2] += ((bw - w) / 2, (bh - h) / 2)  # the image's centre to the box's centre
        turned = cv2.warpAffine(score, rot, (bw, bh), flags=cv2.INTER_LINEAR)
        mean = np.maximum(cv2.sepFilter2D(turned, -1, along, ACROSS), cv2.sepFilter2D(turned, -1, ACROSS, along))
        back = cv2.warpAffine(mean, rot, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
        np.maximum(best, back, out=best)
    return best


def _shrink(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """``mask`` at a smaller size, a pixel set wherever any of it was (a line a pixel wide stays whole)."""
    return cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_AREA) > 0


def _jf(pred: np.ndarray, truth: np.ndarray) -> float:
    return 0.5 * (iou(pred, truth) + boundary_measure(pred, truth))


@dataclass
class ThinParts:
    """A label's thin-part recovery, fitted on its labelled frame (see the module doc)."""

    direction: np.ndarray  # (3,) the residual colour projection
    threshold: float  # line evidence a pixel needs
    side: int  # long side of the detection image
    gain: float  # J&F the recovery added on the labelled frame

    @staticmethod
    def _detection_size(shape: tuple[int, ...], side: int) -> tuple[int, int]:
        s = side / max(shape)
        return max(1, round(shape[0] * s)), max(1, round(shape[1] * s))

    @staticmethod
    def _segment(side: int) -> int:
        return max(3, int(round(SEGMENT * side)) | 1)

    @classmethod
    def fit(cls, image: np.ndarray, mask: np.ndarray, side: int) -> ThinParts | None:
        """From the labelled frame (uint8 RGB (H, W, 3), its given mask (H, W)); ``side``: the long
        side to detect at. None when the mask has no thin parts the recovery finds again."""
        mask = np.asarray(mask, bool)
        h, w = cls._detection_size(mask.shape, side)
        small_image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
        small = _shrink(mask, h, w)
        body = cv2.morphologyEx(small.astype(np.uint8), cv2.MORPH_OPEN, _opening_kernel()) > 0
        thin = small & ~body
        background = ~small
        if np.count_nonzero(thin) < 20 or not body.any() or np.count_nonzero(background) < 20:
            return None
        residual = _residual(small_image)
        spread = np.cov(residual[background].T) + np.eye(3, dtype=np.float64)
        direction = np.linalg.solve(spread, residual[thin].mean(0) - residual[background].mean(0))
        evidence = line_evidence(residual @ direction.astype(np.float32), cls._segment(side))
        full_body = resize_mask(body, *mask.shape)
        baseline = _jf(full_body, mask)
        thresholds = np.quantile(evidence[background], QUANTILES)
        scores = [_jf(resize_mask(body | attached(body, evidence > t), *mask.shape), mask) for t in thresholds]
        best = max(scores)
        if best < baseline + MIN_GAIN:
            return None
        # the middle of the thresholds that do about as well: the best one alone may sit at the edge
        # of what finds the lines, and a later frame's lines a little fainter would be lost
        near = [i for i, s in enumerate(scores) if s >= best - PLATEAU]
        pick = near[len(near) // 2]
        return cls(direction.astype(np.float32), float(thresholds[pick]), int(side), scores[pick] - baseline)

    def recover(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """``mask`` (H, W) of the frame ``image`` with the thin parts that hang from it added."""
        mask = np.asarray(mask, bool)
        if not mask.any():
            return mask
        h, w = self._detection_size(mask.shape, self.side)
        small_image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
        small = resize_mask(mask, h, w)
        evidence = line_evidence(_residual(small_image) @ self.direction, self._segment(self.side))
        added = attached(small, evidence > self.threshold)
        if not added.any():
            return mask
        return mask | resize_mask(added, *mask.shape)
