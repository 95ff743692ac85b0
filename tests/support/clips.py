"""Tiny synthetic video clips: a synthetic scene (dcsam.data.synthetic) seen by a panning camera."""

from __future__ import annotations

import cv2
import numpy as np

from dcsam.data.synthetic import SyntheticEpisodes
from dcsam.engines.base import LabelledImage


def panning_clip(
    ds: SyntheticEpisodes, target: int, index: int, frames: int = 5, step: float = 5.0
) -> list[LabelledImage]:
    """``frames`` frames of scene (``target``, ``index``) panning by ``step`` pixels a frame, in a direction
    drawn from the index, each with fresh sensor noise; the target object's mask follows (never empty: the
    scene is shrunk to 80 % first, so the pan never pushes it out)."""
    img, mask = ds.scene(target, index)
    h, w = mask.shape
    rng = np.random.default_rng([target, index, 17])
    angle = rng.uniform(0, 2 * np.pi)
    dx, dy = step * np.cos(angle), step * np.sin(angle)
    border = tuple(float(v) for v in img.reshape(-1, 3).mean(0))
    out = []
    for t in range(frames):
        # shrink about the centre (80 %), then shift: the scene drifts across a plain border of its mean colour
        shift = np.float32([[0.8, 0, 0.1 * w + dx * (t - frames / 2)], [0, 0.8, 0.1 * h + dy * (t - frames / 2)]])
        frame = cv2.warpAffine(
            img, shift, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=border
        )
        noisy = np.clip(frame.astype(np.int16) + rng.integers(-8, 9, frame.shape), 0, 255).astype(np.uint8)
        m = cv2.warpAffine(mask.astype(np.uint8), shift, (w, h), flags=cv2.INTER_NEAREST, borderValue=0) > 0
        out.append(LabelledImage(noisy, m))
    return out
