"""Zoom for lite video propagation: a shrunken object matched again at the size it was labelled at.

The matching's features are not scale invariant and its cells are stride-8 squares of the working
frame. When an object moves away from the camera (a car driving off, a dog running across a field,
a horse seen from farther) it spans fewer and fewer cells, each more part background, and its
features drift from those of the labelled frame, where it was larger. Once a frame's mask is
clearly smaller than the labelled one, a window around it (the mask's box and a margin) is encoded
again, enlarged by the ratio of the two sizes (so the object is about as many cells across as when
it was labelled), matched against the same banks and decoded there; its mask replaces the frame's
within the window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MIN_ZOOM = 1.25  # objects less than this much smaller (linearly) than labelled: not worth another pass
MAX_ZOOM = 3.0  # beyond this the enlarged window holds little detail the frame did not
MARGIN = 0.5  # the window reaches this share of the mask's box size beyond each side of it ...
MARGIN_MIN = 8  # ... and at least this many frame pixels
MAX_WINDOW_SHARE = 0.5  # an enlarged window has at most this share of the frame's working pixels
MIN_WINDOW_SIDE = 64  # nor a working long side below this (the backbone's grid needs a few cells)


@dataclass(frozen=True)
class ZoomWindow:
    """Rows ``top:bottom`` and columns ``left:right`` of the frame, encoded at ``long_side``:
    ``zoom`` times the scale of the frame's own pass."""

    top: int
    bottom: int
    left: int
    right: int
    long_side: int
    zoom: float

    def crop(self, image: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(image[self.top : self.bottom, self.left : self.right])

    def paste(self, mask: np.ndarray, window_mask: np.ndarray) -> np.ndarray:
        """``mask`` (H, W) with the window's part replaced by ``window_mask`` (its own shape)."""
        out = mask.copy()
        out[self.top : self.bottom, self.left : self.right] = window_mask
        return out


def zoom_window(
    mask: np.ndarray, labelled_fraction: float, scale: float, frame_working_pixels: int
) -> ZoomWindow | None:
    """The window to match again for ``mask`` (H, W) bool, the frame's prediction, or None when the
    object is not clearly smaller than when labelled. ``labelled_fraction``: the labelled mask's
    share of its frame; ``scale``: working pixels per frame pixel of the frame's own pass;
    ``frame_working_pixels``: that pass's pixel count (the window's cost is bounded by a share of it)."""
    area = float(mask.mean())
    if area <= 0.0 or labelled_fraction <= 0.0:
        return None
    zoom = min(MAX_ZOOM, math.sqrt(labelled_fraction / area))
    if zoom < MIN_ZOOM:
        return None
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    margin_y = MARGIN * (ys.max() + 1 - ys.min()) + MARGIN_MIN
    margin_x = MARGIN * (xs.max() + 1 - xs.min()) + MARGIN_MIN
    top, bottom = int(max(0, ys.min() - margin_y)), int(min(h, ys.max() + 1 + margin_y))
    left, right = int(max(0, xs.min() - margin_x)), int(min(w, xs.max() + 1 + margin_x))
    pixels = (bottom - top) * (right - left) * (scale * zoom) ** 2
    zoom *= min(1.0, math.sqrt(MAX_WINDOW_SHARE * frame_working_pixels / pixels))
    if zoom < MIN_ZOOM:  # a large window: enlarging it within the bound would barely help
        return None
    long_side = max(MIN_WINDOW_SIDE, round(max(bottom - top, right - left) * scale * zoom))
    return ZoomWindow(top, bottom, left, right, long_side, zoom)
