"""What fine-tuning on one project's annotations needs besides the model: augmented views, the schedule.

A project has few annotated images (a handful to a few hundred), so the DC-SAM engine trains its
project prompter (:class:`dcsam.modeling.ProjectPrompter`) on a fixed bank of augmented views of each image
(:func:`augmented_views`): every view is encoded by the frozen networks once and reused by every step,
fold and step choice of a training job (the view of an image depends on its content only, so the
backend's feature cache recognises it across folds). The number of steps grows with the number of
annotated images (:func:`schedule_steps`) and the learning rate decays on a cosine (:func:`cosine_lr`).
"""

from __future__ import annotations

import hashlib
import math

import cv2
import numpy as np

from ..engines.base import LabelledImage

__all__ = ["augment", "augmented_views", "content_seed", "cosine_lr", "schedule_steps"]

STEPS_PER_IMAGE = 25
MIN_STEPS = 100
MAX_STEPS = 600


def schedule_steps(images: int, per_image: int = STEPS_PER_IMAGE, lo: int = MIN_STEPS, hi: int = MAX_STEPS) -> int:
    """Optimiser steps for a project of ``images`` annotated images: ``per_image`` each, within [lo, hi]."""
    return int(min(hi, max(lo, per_image * images)))


def cosine_lr(base: float, step: int, total: int, warmup: int = 10) -> float:
    """Learning rate at ``step`` (0-based) of ``total``: a short linear warm-up, then cosine decay to 0."""
    if step < warmup:
        return base * (step + 1) / warmup
    span = max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * min(step - warmup, span) / span))


def content_seed(item: LabelledImage, view: int) -> int:
    """A seed from the image's and mask's content and the view number (the same in every fold and job)."""
    h = hashlib.blake2b(digest_size=8)
    h.update(np.ascontiguousarray(item.image).tobytes())
    h.update(np.packbits(np.asarray(item.mask, bool)).tobytes())
    h.update(view.to_bytes(4, "little"))
    return int.from_bytes(h.digest(), "little")


def _jitter_colour(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-8, 8)) % 180  # OpenCV's hue is 0..179
    hsv[..., 1] *= rng.uniform(0.7, 1.3)
    out = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
    mean = out.mean()
    out = (out - mean) * rng.uniform(0.7, 1.3) + mean * rng.uniform(0.7, 1.3)  # contrast, brightness
    return np.clip(out, 0, 255).astype(np.uint8)


def _crop_box(mask: np.ndarray, rng: np.random.Generator) -> tuple[int, int, int, int] | None:
    """A random crop (x0, y0, x1, y1) of 60-100 % of each side that keeps part of the mask; None if none."""
    h, w = mask.shape
    for _ in range(10):
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        inside = mask[y0 : y0 + ch, x0 : x0 + cw].sum()
        if inside >= 0.5 * mask.sum():
            return x0, y0, x0 + cw, y0 + ch
    return None


def augment(item: LabelledImage, rng: np.random.Generator) -> LabelledImage:
    """One strongly augmented view at the image's size: horizontal flip, a crop (zoom in) or a shrink
    onto a mean-colour canvas (zoom out), colour jitter (hue, saturation, contrast, brightness)."""
    image, mask = item.image, np.asarray(item.mask, bool)
    h, w = mask.shape
    if rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    if rng.random() < 0.6:
        box = _crop_box(mask, rng)
        if box is not None:
            x0, y0, x1, y1 = box
            image = cv2.resize(np.ascontiguousarray(image[y0:y1, x0:x1]), (w, h), interpolation=cv2.INTER_LINEAR)
            mask = cv2.resize(mask[y0:y1, x0:x1].astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
    else:
        s = rng.uniform(0.7, 1.0)
        sw, sh = max(1, int(w * s)), max(1, int(h * s))
        x0, y0 = int(rng.integers(0, w - sw + 1)), int(rng.integers(0, h - sh + 1))
        canvas = np.empty_like(image)
        canvas[:] = np.asarray(image).reshape(-1, 3).mean(0).astype(np.uint8)
        small = cv2.resize(np.ascontiguousarray(image), (sw, sh), interpolation=cv2.INTER_AREA)
        canvas[y0 : y0 + sh, x0 : x0 + sw] = small
        m = np.zeros((h, w), bool)
        m[y0 : y0 + sh, x0 : x0 + sw] = cv2.resize(mask.astype(np.uint8), (sw, sh), interpolation=cv2.INTER_NEAREST) > 0
        image, mask = canvas, m
    if rng.random() < 0.8:
        image = _jitter_colour(np.ascontiguousarray(image), rng)
    if not mask.any():  # never train on a view that lost the object
        return item
    return LabelledImage(np.ascontiguousarray(image), np.ascontiguousarray(mask))


def augmented_views(item: LabelledImage, views: int) -> list[LabelledImage]:
    """``views`` views of one labelled image: itself, then ``views - 1`` augmentations (:func:`augment`),
    each a pure function of the content and its number."""
    return [item] + [augment(item, np.random.default_rng(content_seed(item, v))) for v in range(1, views)]
