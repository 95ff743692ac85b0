"""Colour boundary: a predicted mask grown to where the frame's own colours change.

The matching decides stride-8 cells and the guided filter draws their edge through the image, so a
mask often stops a few pixels short of its object: a horse's leg, a dancer's sleeve, a kite's edge,
parts that fill too little of a cell to win it. Near the edge the frame itself knows better. The
colours inside the mask (all but its outermost pixel, where both sides mix) are the object's and
those of a ring around it, beyond a band of about half a cell outside the edge, are its
surroundings. A pixel of the band, or of the mask's outermost pixel, is object when its colour is
clearly likelier under the object's histogram than under the surroundings', and the mask becomes
its inside plus what of those connects to it. The inside is kept as it is: reaching deeper into
the mask (two or three pixels) took the cores of thin parts, limbs a few pixels wide, and scored
lower.

Local histograms, not the labelled frame's: an object's colours change with light and pose, and the
surroundings that matter are the ones beside it in this frame.
"""

from __future__ import annotations

import cv2
import numpy as np

from .postprocess import ColourModel, attached

BAND = 0.45  # the band reaches this many cells beyond the mask's edge (about 4 pixels of a 854x480 frame)
RING = 3.4  # the surroundings: within this many cells of the mask, beyond the band
INSIDE = 1  # pixels of the mask's edge left out of the object's colours (they mix both sides)
MARGIN = 1.0  # log-likelihood ratio a band pixel's colour needs to be object (e: 2.7 times likelier)
MIN_PIXELS = 50  # fewer object or surrounding pixels than this: too few colours to judge, no change


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def snap_to_colour(image: np.ndarray, mask: np.ndarray, cell: float) -> np.ndarray:
    """``mask`` (H, W) bool of ``image`` (H, W, 3) uint8 grown to its local colour edge;
    ``cell``: the matching's cell side in the image's pixels (the band and ring scale with it)."""
    mask = np.asarray(mask, bool)
    if not mask.any():
        return mask
    band_r, ring_r = max(1, round(BAND * cell)), max(2, round(RING * cell))
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    top, bottom = max(0, ys.min() - ring_r), min(h, ys.max() + 1 + ring_r)
    left, right = max(0, xs.min() - ring_r), min(w, xs.max() + 1 + ring_r)
    crop = mask[top:bottom, left:right].astype(np.uint8)
    inside = cv2.erode(crop, _disk(INSIDE)) > 0
    reach = cv2.dilate(crop, _disk(band_r)) > 0
    around = (cv2.dilate(crop, _disk(ring_r)) > 0) & ~reach
    if np.count_nonzero(inside) < MIN_PIXELS or np.count_nonzero(around) < MIN_PIXELS:
        return mask
    pixels = image[top:bottom, left:right]
    colours = ColourModel().add(pixels, inside, around)
    # tens of thousands of pixels fill these histograms: blurring them would only mix the nearby
    # colours an edge separates (a dark leg, its shadow)
    ratio = colours.log_ratio(pixels, colours.log_ratio_table(smooth=False))
    # one pixel's colour noise does not move the edge; a median, unlike a blur, keeps a sharp edge's
    # outermost pixels, whose 5x5 neighbourhood is mostly their own side (a blur mixed them with the
    # background's and dropped them: a crisp disc's mask went from IoU 0.999 to 0.976)
    ratio = cv2.medianBlur(ratio.astype(np.float32), 5)
    out = mask.copy()
    out[top:bottom, left:right] = inside | attached(inside, reach & ~inside & (ratio > MARGIN))
    return out
