"""Interactive refinement with clicks and a box (``InContextSegmenter.refine``). The in-context
prediction (when the label has examples) is kept when it already obeys every prompt; otherwise an
engine with a promptable model (DC-SAM: SAM's own point and box prompts) answers the prompts, and an
engine without one (lite) runs a GrabCut seeded by the prediction and steered by the prompts:

* positive points: hard foreground discs; the result keeps only the connected parts that contain one
  (or, refining a mask, overlap it: a click on a missed part adds it, the rest of the mask stays);
* negative points: hard background discs;
* refining a mask with clicks alone, the mask changes only near the clicks (within ``CLICK_REACH`` of
  its size): a click edits the part it is on;
* a box: everything outside it is background; without a prediction, its inside is the first guess;
* no prediction and no box: the first guess is a disc around each positive point.

A box is always answered (a prediction is never returned unchanged because it lies inside the box:
a tight box says where the object ends, and the prediction may stop short of that). DC-SAM answers it
with SAM's box prompt; the lite engine with GrabCut constrained to the box and seeded by the in-context
mask. In the GrabCut refinement the starting mask's body (eroded by ``SURE_CORE`` of its size) stays
foreground, except a part of it that a negative click hits.

GrabCut runs at a bounded working size (long side ``work_size``), so any image costs about the same.
The score estimates the returned mask's quality: a promptable model's own estimate for its mask
(SAM's predicted IoU); otherwise the engine's ``score_mask`` of that very mask when it can judge one
(the lite engine with examples: its calibrated score), else the starting mask's score (``mask_score``,
the model's score; 1 for prompts alone); times the fraction of clicks the mask obeys.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from .engines.base import Prompts
from .io import ImageSource, read_image
from .masks import resize_mask

Point = tuple[float, float, bool]  # (x, y) in pixels of the native image, positive?
PixelBox = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels
# The starting mask eroded by this fraction of its size stays foreground in a refinement: the
# in-context mask's outline is uncertain to a few percent of the object (stride-8 matching at a
# 512-pixel working size, a 6-pixel guided filter), its body is not.
SURE_CORE = 0.05
# How far from a click a refinement may change the starting mask, as a share of the start's short side.
# One corrective click (scripts/measure_scores_boxes.py), mean IoU before -> after, unbounded / 1.0 / 0.5:
# davis16-dev 0.725 -> 0.703 / 0.713 / 0.730, fss-mini 0.810 -> 0.867 / 0.867 / 0.854, perseg-mini
# 0.945 -> 0.955 / 0.954 / 0.949: a larger missed part takes a second click
CLICK_REACH = 0.5


def refine_mask(
    segmenter,
    image: ImageSource,
    points: Sequence[Point] = (),
    box: PixelBox | None = None,
    label: str | None = None,
    mask: np.ndarray | None = None,
    *,
    mask_score: float | None = None,
    work_size: int = 512,
    iterations: int = 4,
) -> tuple[np.ndarray, float]:
    """Return ``(mask bool HxW, score)`` for ``image`` refined by ``points`` / ``box``.

    ``mask`` is a starting mask (``mask_score``: its score, default 1); without one, and when
    ``segmenter`` has examples for ``label``, the segmenter's prediction is the start.
    """
    img = read_image(image)
    height, width = img.shape[:2]
    score = 1.0 if mask_score is None else float(mask_score)
    known = segmenter is not None and label is not None and label in getattr(segmenter, "labels", [])
    if mask is None and known:
        pred = segmenter.predict([img], labels=[label])[0]
        mask, score = pred.masks.get(label), float(pred.scores.get(label, 1.0))
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (height, width):
            raise ValueError(f"mask is {mask.shape[1]}x{mask.shape[0]} but the image is {width}x{height}")
    points = [(float(x), float(y), bool(pos)) for x, y, pos in points]
    if not points and box is None:
        return (mask.copy() if mask is not None else np.zeros((height, width), bool)), (
            score if mask is not None else 0.0
        )
    engine = getattr(segmenter, "engine", None)
    examples = list(segmenter.encoded_examples(label)) if known else []
    given = Prompts(points, box, examples, label)

    def judged(out: np.ndarray, fallback: float) -> float:
        """The score of the returned mask: the engine's estimate for it, else ``fallback``."""
        if not out.any():
            return 0.0
        own = engine.score_mask(img, out, given) if engine is not None else None
        return float(own) if own is not None else fallback

    if mask is not None and mask.any():
        # A prediction that already obeys every prompt is kept as it is (full resolution, no drift).
        kept = mask if box is None else mask & _box_mask(box, height, width)
        inside = kept.sum() / max(1, mask.sum())
        if box is None and inside >= 0.95 and kept.any() and all(_at(kept, x, y) == pos for x, y, pos in points):
            return kept, judged(kept, score)

    prompted = engine.prompt(img, given, start=mask) if engine is not None else None
    if prompted is not None:  # a promptable model (SAM, the lite box matching) answers the prompts itself
        out = prompted.mask if box is None else prompted.mask & _box_mask(box, height, width)
        obeyed = [_at(out, x, y) == pos for x, y, pos in points]
        return out, (prompted.score * (sum(obeyed) / len(obeyed) if obeyed else 1.0) if out.any() else 0.0)

    # The start's body is kept as a sure core: GrabCut may grow it to what the box holds (a missed
    # sole, a cut-off limb) and move its outline, and a negative click may remove a part it hits.
    core = SURE_CORE
    out = grabcut_prompts(img, mask, points, box, work_size=work_size, iterations=iterations, sure_core=core)
    obeyed = [_at(out, x, y) == pos for x, y, pos in points]
    consistency = (sum(obeyed) / len(obeyed)) if obeyed else 1.0
    return out, judged(out, score) * consistency if out.any() else 0.0


def grabcut_prompts(
    img: np.ndarray,
    mask: np.ndarray | None,
    points: Sequence[Point] = (),
    box: PixelBox | None = None,
    *,
    work_size: int = 512,
    iterations: int = 4,
    sure_core: float = 0.0,
) -> np.ndarray:
    """GrabCut of uint8 (H, W, 3) ``img`` seeded by bool (H, W) ``mask`` (or None) and steered by the
    prompts (see the module docstring); returns the bool (H, W) mask.

    ``sure_core`` > 0: the seed eroded by that fraction of its bounding box's short side is sure
    foreground (GrabCut may then grow the seed and move its outline, not drop its body)."""
    height, width = img.shape[:2]
    scale = min(1.0, work_size / max(height, width))
    sw, sh = max(1, round(width * scale)), max(1, round(height * scale))
    small = cv2.resize(img, (sw, sh), interpolation=cv2.INTER_AREA) if scale < 1 else img.copy()
    radius = max(2, round(0.012 * max(sw, sh)))

    gc = np.full((sh, sw), cv2.GC_PR_BGD, np.uint8)
    if mask is not None and mask.any():
        start = resize_mask(mask, sh, sw)
    else:
        start = np.zeros((sh, sw), bool)
    box_px = None
    if box is not None:
        x0, y0, x1, y1 = box
        bx0, bx1 = sorted((int(np.floor(x0 * scale)), int(np.ceil(x1 * scale))))
        by0, by1 = sorted((int(np.floor(y0 * scale)), int(np.ceil(y1 * scale))))
        bx0, by0 = max(0, bx0), max(0, by0)
        bx1, by1 = min(sw, max(bx1, bx0 + 1)), min(sh, max(by1, by0 + 1))
        box_px = (bx0, by0, bx1, by1)
        inside = np.zeros((sh, sw), bool)
        inside[by0:by1, bx0:bx1] = True
        start = start & inside
    seeded = start.any()  # a real starting mask (not the box or click discs standing in for one)
    if box_px is not None and not seeded:
        start = inside.copy()
    positives = [(x * scale, y * scale) for x, y, pos in points if pos]
    negatives = [(x * scale, y * scale) for x, y, pos in points if not pos]
    if not start.any() and positives:
        seed_r = max(radius * 2, round(0.15 * min(sw, sh)))
        for x, y in positives:
            cv2.circle(start.view(np.uint8), (round(x), round(y)), seed_r, 1, -1)
    gc[start] = cv2.GC_PR_FGD
    if sure_core > 0 and seeded:
        body = start.copy()
        for x, y in negatives:
            body &= ~released_by_negative_click(start, x, y)
        if body.any():
            ys, xs = np.nonzero(body)
            r = max(1, round(sure_core * min(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)))
            disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
            gc[cv2.erode(body.astype(np.uint8), disc) > 0] = cv2.GC_FGD
    if box_px is not None:
        outside = np.ones((sh, sw), bool)
        outside[box_px[1] : box_px[3], box_px[0] : box_px[2]] = False
        gc[outside] = cv2.GC_BGD
    fg = np.zeros((sh, sw), np.uint8)
    for x, y in positives:
        cv2.circle(fg, (round(x), round(y)), radius, 1, -1)
    bg = np.zeros((sh, sw), np.uint8)
    for x, y in negatives:
        cv2.circle(bg, (round(x), round(y)), radius, 1, -1)
    gc[fg > 0] = cv2.GC_FGD
    gc[bg > 0] = cv2.GC_BGD

    cv2.setRNGSeed(0)  # GrabCut's k-means starts from OpenCV's RNG: the same prompts give the same mask
    has_fg = np.isin(gc, (cv2.GC_FGD, cv2.GC_PR_FGD)).any()
    has_bg = np.isin(gc, (cv2.GC_BGD, cv2.GC_PR_BGD)).any()
    if has_fg and has_bg:
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        try:
            # OpenCV's stubs want a rect; GC_INIT_WITH_MASK takes None
            cv2.grabCut(
                cv2.cvtColor(small, cv2.COLOR_RGB2BGR),
                gc,
                None,
                bgd,
                fgd,
                iterations,  # type: ignore[call-overload]
                cv2.GC_INIT_WITH_MASK,
            )
        except cv2.error:
            pass  # degenerate colour models: keep the seeds as they are
    small_out = np.isin(gc, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.uint8)
    if positives and small_out.any():
        n, comp = cv2.connectedComponents(small_out, connectivity=8)
        keep = {comp[min(sh - 1, max(0, round(y))), min(sw - 1, max(0, round(x)))] for x, y in positives} - {0}
        if seeded:  # a click adds to a starting mask, it does not drop the parts of it elsewhere
            keep |= set(np.unique(comp[start & (small_out > 0)]).tolist()) - {0}
        if keep:
            small_out = np.isin(comp, list(keep)).astype(np.uint8)
    if seeded and points and box is None:  # a box may move the outline anywhere inside it
        small_out = _edits_near_clicks(small_out > 0, start, [(x * scale, y * scale) for x, y, _ in points], radius)
        small_out = small_out.astype(np.uint8)
    if scale < 1:
        out = cv2.resize(small_out * 255, (width, height), interpolation=cv2.INTER_LINEAR) > 127
    else:
        out = small_out > 0
    if mask is not None and mask.any():
        # where GrabCut agrees with the prediction at the working size, keep the full-resolution prediction
        start_small = resize_mask(mask, sh, sw)
        out_small = resize_mask(out, sh, sw)
        changed = resize_mask(
            cv2.dilate((start_small != out_small).astype(np.uint8), np.ones((3, 3), np.uint8)), height, width
        )
        out = np.where(changed, out, mask)
    if box is not None:
        out &= _box_mask(box, height, width)
    elif mask is not None and seeded and not positives:
        out &= mask  # negative clicks only take away: GrabCut's new colour models must not flood the rest
    return out


def _edits_near_clicks(
    out: np.ndarray, start: np.ndarray, clicks: Sequence[tuple[float, float]], disc: int
) -> np.ndarray:
    """``out`` where it differs from ``start`` within reach of a click, ``start`` elsewhere: a click edits
    the part of the mask it is on. GrabCut refits its colour models to the whole image, and a road as
    grey as a car's shadow would otherwise join the mask far from any click. A click's reach is
    ``CLICK_REACH`` of the start's short side (bounding box), at least a few click discs."""
    ys, xs = np.nonzero(start)
    reach = max(4 * disc, round(CLICK_REACH * min(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)))
    near = np.zeros(start.shape, np.uint8)
    for x, y in clicks:
        cv2.circle(near, (round(x), round(y)), reach, 1, -1)
    return np.where(near > 0, out, start)


def released_by_negative_click(start: np.ndarray, x: float, y: float) -> np.ndarray:
    """bool mask of the part of ``start`` that a negative click at (x, y) takes its sure core from.

    A click on the core of a part (at least 3/4 as deep inside it as its innermost point) rejects the
    whole part: a look-alike. A click nearer the part's edge rejects the side of the part nearer the
    click than its innermost point, no deeper than twice the click's own depth (the false region a
    person clicks on is a protrusion or a strip along the edge, not the body)."""
    h, w = start.shape
    cx, cy = min(w - 1, max(0, round(x))), min(h - 1, max(0, round(y)))
    _, comp = cv2.connectedComponents(start.astype(np.uint8), connectivity=8)
    label = comp[cy, cx]
    if label == 0:
        return np.zeros_like(start)
    part = comp == label
    dist = cv2.distanceTransform(np.pad(part.astype(np.uint8), 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
    iy, ix = np.unravel_index(int(dist.argmax()), dist.shape)
    depth = float(dist[cy, cx])
    # depth, not the distance to the innermost point: a click a few pixels inside the edge can lie
    # within the inscribed circle, and a click on the shadow strip under a car released the whole car
    if depth >= 0.75 * dist[iy, ix]:
        return part
    yy, xx = np.mgrid[:h, :w]
    nearer_click = (xx - cx) ** 2 + (yy - cy) ** 2 < (xx - ix) ** 2 + (yy - iy) ** 2
    return part & nearer_click & (dist <= 2 * max(depth, 2.0))


def _box_mask(box: PixelBox, height: int, width: int) -> np.ndarray:
    x0, y0, x1, y1 = box
    clip = np.zeros((height, width), bool)
    clip[
        max(0, int(np.floor(min(y0, y1)))) : max(0, int(np.ceil(max(y0, y1)))),
        max(0, int(np.floor(min(x0, x1)))) : max(0, int(np.ceil(max(x0, x1)))),
    ] = True
    return clip


def _at(mask: np.ndarray, x: float, y: float) -> bool:
    h, w = mask.shape
    return bool(mask[min(h - 1, max(0, round(y))), min(w - 1, max(0, round(x)))])
