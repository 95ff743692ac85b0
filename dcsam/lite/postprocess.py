"""Turning a coarse foreground probability into a full-resolution, edge-accurate mask.

* :func:`guided_coefficients` / :func:`apply_guided` - He et al.'s colour guided filter, split so the
  linear coefficients are computed at a working resolution and applied to the full-resolution
  image ("fast guided filter"): memory and time stay bounded while edges follow the full image.
* :func:`grabcut_refine` - an OpenCV GrabCut pass initialised from the probability.
* :func:`filter_components` - drops weak connected components.
* :func:`attached` - the candidate pixels that connect to a mask.
* :class:`ColourModel` - foreground / background colour histograms and their log-likelihood ratio.
"""

from __future__ import annotations

import cv2
import numpy as np


def _box(x: np.ndarray, r: int) -> np.ndarray:
    return cv2.boxFilter(x, -1, (2 * r + 1, 2 * r + 1), normalize=True, borderType=cv2.BORDER_REFLECT)


def _solve_symmetric3(s: dict[tuple[int, int], np.ndarray], y: np.ndarray) -> np.ndarray:
    """Per pixel, x with S x = y for the symmetric 3x3 S (upper entries ``s[a, c]``, each (h, w)) and
    y (h, w, 3), by the adjugate: the same answer as a batched LU solve, several times faster here."""
    s00, s01, s02, s11, s12, s22 = s[0, 0], s[0, 1], s[0, 2], s[1, 1], s[1, 2], s[2, 2]
    c00 = s11 * s22 - s12 * s12
    c01 = s02 * s12 - s01 * s22
    c02 = s01 * s12 - s02 * s11
    c11 = s00 * s22 - s02 * s02
    c12 = s01 * s02 - s00 * s12
    c22 = s00 * s11 - s01 * s01
    inv_det = 1.0 / (s00 * c00 + s01 * c01 + s02 * c02)
    y0, y1, y2 = y[..., 0], y[..., 1], y[..., 2]
    return np.stack(
        [
            (c00 * y0 + c01 * y1 + c02 * y2) * inv_det,
            (c01 * y0 + c11 * y1 + c12 * y2) * inv_det,
            (c02 * y0 + c12 * y1 + c22 * y2) * inv_det,
        ],
        axis=-1,
    ).astype(np.float32)


def guided_coefficients(guide: np.ndarray, p: np.ndarray, radius: int, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Box-averaged coefficients (A: (h, w, 3), b: (h, w)) of the colour guided filter.

    ``guide`` is float32 RGB in [0, 1], ``p`` the float32 map to filter; the output of the
    filter is ``sum_c A[..., c] * guide[..., c] + b``, see :func:`apply_guided`.
    """
    guide = guide.astype(np.float32, copy=False)
    p = p.astype(np.float32, copy=False)
    h, w = p.shape
    mean_i = _box(guide, radius)  # (h, w, 3)
    mean_p = _box(p, radius)
    cov_ip = _box(guide * p[..., None], radius) - mean_i * mean_p[..., None]
    var = {}
    for a in range(3):
        for c in range(a, 3):
            v = _box(guide[..., a] * guide[..., c], radius) - mean_i[..., a] * mean_i[..., c]
            var[a, c] = v + eps if a == c else v
    a_coef = _solve_symmetric3(var, cov_ip)
    b_coef = mean_p - np.einsum("hwc,hwc->hw", a_coef, mean_i)
    return _box(a_coef, radius), _box(b_coef, radius)


def apply_guided(a_coef: np.ndarray, b_coef: np.ndarray, guide: np.ndarray) -> np.ndarray:
    """Apply guided-filter coefficients to ``guide`` (float32 RGB [0,1]) of the same size."""
    out = b_coef.copy()
    for c in range(3):
        out += a_coef[..., c] * guide[..., c]
    return out


def _strip_maps(h_src: int, w_src: int, h: int, w: int, y0: int, y1: int) -> tuple[np.ndarray, np.ndarray]:
    """cv2.remap maps sampling a (h_src, w_src) map at rows y0..y1 of a (h, w) image (pixel centres)."""
    xs = ((np.arange(w, dtype=np.float32) + 0.5) * (w_src / w) - 0.5).clip(0, w_src - 1)
    ys = ((np.arange(y0, y1, dtype=np.float32) + 0.5) * (h_src / h) - 0.5).clip(0, h_src - 1)
    return np.broadcast_to(xs, (y1 - y0, w)).copy(), np.broadcast_to(ys[:, None], (y1 - y0, w)).copy()


def upsample_guided(
    a_coef: np.ndarray,
    b_coef: np.ndarray,
    image: np.ndarray,
    drop: np.ndarray | None = None,
    threshold: float = 0.5,
    strip_rows: int = 1024,
) -> np.ndarray:
    """Full-resolution bool mask ``A . image + b > threshold`` (fast guided filter upsampling).

    ``a_coef``/``b_coef`` come from :func:`guided_coefficients` at a lower resolution; ``image`` is
    the full-resolution uint8 RGB image. Works in row strips so memory stays bounded for huge
    images. ``drop`` (bool, low resolution) marks regions forced to background.
    """
    h, w = image.shape[:2]
    hs, ws = b_coef.shape
    out = np.empty((h, w), bool)
    coef = np.dstack([a_coef, b_coef[..., None]]).astype(np.float32)
    drop_u8 = drop.astype(np.uint8) if drop is not None else None
    for y0 in range(0, h, strip_rows):
        y1 = min(h, y0 + strip_rows)
        mx, my = _strip_maps(hs, ws, h, w, y0, y1)
        c = cv2.remap(coef, mx, my, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        g = image[y0:y1].astype(np.float32) * (1.0 / 255.0)
        q = c[..., 3] + c[..., 0] * g[..., 0] + c[..., 1] * g[..., 1] + c[..., 2] * g[..., 2]
        m = q > threshold
        if drop_u8 is not None:
            m &= cv2.remap(drop_u8, mx, my, interpolation=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE) == 0
        out[y0:y1] = m
    return out


def upsample_linear(
    prob: np.ndarray,
    shape: tuple[int, int],
    drop: np.ndarray | None = None,
    threshold: float = 0.5,
    strip_rows: int = 1024,
) -> np.ndarray:
    """Full-resolution bool mask of a bilinearly upsampled probability (no edge awareness)."""
    h, w = shape
    hs, ws = prob.shape
    out = np.empty((h, w), bool)
    p = prob.astype(np.float32)
    drop_u8 = drop.astype(np.uint8) if drop is not None else None
    for y0 in range(0, h, strip_rows):
        y1 = min(h, y0 + strip_rows)
        mx, my = _strip_maps(hs, ws, h, w, y0, y1)
        m = cv2.remap(p, mx, my, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE) > threshold
        if drop_u8 is not None:
            m &= cv2.remap(drop_u8, mx, my, interpolation=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE) == 0
        out[y0:y1] = m
    return out


def guided_filter(guide: np.ndarray, p: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """Colour guided filter of ``p`` by ``guide`` at the same resolution."""
    a, b = guided_coefficients(guide, p, radius, eps)
    return apply_guided(a, b, guide)


def to_float_rgb(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32) * (1.0 / 255.0)


def grabcut_refine(
    image: np.ndarray, prob: np.ndarray, iterations: int = 3, sure_fg: float = 0.9, sure_bg: float = 0.1
) -> np.ndarray:
    """One GrabCut run on uint8 RGB ``image`` initialised from ``prob``; returns a bool mask.

    Pixels above ``sure_fg`` (eroded) are fixed foreground, below ``sure_bg`` fixed background,
    the rest is "probably" foreground / background by the 0.5 threshold.
    """
    fg = prob >= 0.5
    if not fg.any() or fg.all():
        return fg
    init = np.where(fg, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    k = np.ones((3, 3), np.uint8)
    sure_f = cv2.erode((prob >= sure_fg).astype(np.uint8), k, iterations=2) > 0
    sure_b = cv2.erode((prob <= sure_bg).astype(np.uint8), k, iterations=2) > 0
    init[sure_f] = cv2.GC_FGD
    init[sure_b] = cv2.GC_BGD
    if not (init == cv2.GC_BGD).any() and not (init == cv2.GC_PR_BGD).any():
        return fg
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    try:
        # OpenCV's stubs want a rect; GC_INIT_WITH_MASK takes None
        cv2.grabCut(
            np.ascontiguousarray(image[..., ::-1]),
            init,
            None,
            bgd,
            fgd,
            iterations,  # type: ignore[call-overload]
            cv2.GC_INIT_WITH_MASK,
        )
    except cv2.error:  # degenerate colour statistics (e.g. a flat image): keep the input
        return fg
    return (init == cv2.GC_FGD) | (init == cv2.GC_PR_FGD)


def filter_components(
    mask: np.ndarray, prob: np.ndarray, mode: str = "weighted", keep_ratio: float = 0.2
) -> np.ndarray:
    """Which pixels of ``mask`` to keep, dropping weak connected components.

    A component's evidence is the sum of ``prob - 0.5`` over it. ``largest``: keep the strongest
    component only; ``weighted``: keep every component with >= ``keep_ratio`` x the strongest
    one's evidence; ``confident``: of the components ``weighted`` would keep, only the one with the
    highest mean probability (one object expected: a big but less certain look-alike loses);
    ``none``: keep everything.
    """
    if mode == "none" or not mask.any():
        return mask
    n, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    if n <= 2:
        return mask
    evidence = np.bincount(labels.ravel(), weights=(prob - 0.5).ravel().astype(np.float64), minlength=n)
    evidence[0] = -np.inf
    best = float(evidence[1:].max())
    if mode == "largest":
        keep: np.ndarray = np.zeros(n, bool)
        keep[int(np.argmax(evidence))] = True
    elif mode == "weighted":
        keep = evidence >= keep_ratio * best
        keep[0] = False
    elif mode == "confident":
        candidates = evidence >= keep_ratio * best
        candidates[0] = False
        area = np.bincount(labels.ravel(), minlength=n).astype(np.float64)
        mean = np.bincount(labels.ravel(), weights=prob.ravel().astype(np.float64), minlength=n) / np.maximum(area, 1)
        keep = np.zeros(n, bool)
        keep[int(np.argmax(np.where(candidates, mean, -np.inf)))] = True
    else:
        raise ValueError(f"unknown component filter {mode!r}; use none, largest, weighted or confident")
    return keep[labels]


def attached(mask: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """The ``candidates`` pixels outside ``mask`` that connect (8-neighbours, through candidates) to it."""
    count, parts = cv2.connectedComponents((candidates | mask).astype(np.uint8), connectivity=8)
    touching = np.zeros(count, bool)
    touching[np.unique(parts[mask])] = True
    touching[0] = False
    return touching[parts] & candidates & ~mask


class ColourModel:
    """Foreground / background colour histograms (RGB, ``bins`` per channel) of labelled images."""

    def __init__(self, bins: int = 16):
        self.bins = bins
        self.fg = np.zeros(bins**3, np.float64)
        self.bg = np.zeros(bins**3, np.float64)

    def _index(self, image: np.ndarray) -> np.ndarray:
        q = (image.astype(np.int32) * self.bins) >> 8
        return (q[..., 0] * self.bins + q[..., 1]) * self.bins + q[..., 2]

    def add(self, image: np.ndarray, mask: np.ndarray, background: np.ndarray | None = None) -> ColourModel:
        """Count ``image``'s colours under ``mask`` as foreground and under ``background`` (default:
        everything else) as background."""
        idx = self._index(image).ravel()
        m = mask.ravel()
        bg = ~m if background is None else background.ravel()
        n = self.bins**3
        self.fg += np.bincount(idx[m], minlength=n)
        self.bg += np.bincount(idx[bg], minlength=n)
        return self

    def merged(self, others: list[ColourModel]) -> ColourModel:
        out = ColourModel(self.bins)
        for o in [self, *others]:
            out.fg += o.fg
            out.bg += o.bg
        return out

    def _smoothed(self, hist: np.ndarray) -> np.ndarray:
        h: np.ndarray = hist.reshape(self.bins, self.bins, self.bins)
        for axis in range(3):  # separable [1, 2, 1] / 4 smoothing along each colour axis
            p = np.pad(h, [(1, 1) if a == axis else (0, 0) for a in range(3)], mode="edge")

            def sl(a: int, b: int, p: np.ndarray = p, axis: int = axis) -> tuple[slice, ...]:
                return tuple(slice(a, p.shape[i] - b) if i == axis else slice(None) for i in range(3))

            h = 0.25 * p[sl(0, 2)] + 0.5 * p[sl(1, 1)] + 0.25 * p[sl(2, 0)]
        return h.ravel()

    def log_ratio_table(self, clip: float = 3.0, smooth: bool = True) -> np.ndarray:
        """log P(colour | foreground) / P(colour | background) per bin; ``smooth``: the histograms
        blurred across neighbouring bins first (for models with few pixels per bin)."""
        fg, bg = (self._smoothed(self.fg), self._smoothed(self.bg)) if smooth else (self.fg, self.bg)
        pf = (fg + 1.0) / (fg.sum() + fg.size)
        pb = (bg + 1.0) / (bg.sum() + bg.size)
        return np.clip(np.log(pf / pb), -clip, clip).astype(np.float32)

    def log_ratio(self, image: np.ndarray, table: np.ndarray | None = None) -> np.ndarray:
        table = self.log_ratio_table() if table is None else table
        return table[self._index(image)]
