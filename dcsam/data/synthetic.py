"""A synthetic in-context dataset generated on the fly, for tests and smoke runs.

Each class is a (shape, texture, colour) combination. An episode draws a target class; the
support and the query each contain one object of that class at a random place and size, plus
distractor objects of other classes on a textured background. The query mask covers only the
target object, so a model must read the class off the support to segment the right thing.
Items are a pure function of (seed, index): the same index always gives the same episode.
"""

from __future__ import annotations

import cv2
import numpy as np
from torch.utils.data import Dataset

from .base import make_item

SHAPES = ("disc", "square", "triangle", "cross", "ring", "diamond")
TEXTURES = ("solid", "stripes", "checker", "dots")


def _palette(n: int) -> np.ndarray:
    hues = np.linspace(0, 179, n, endpoint=False).astype(np.uint8)
    hsv = np.stack([hues, np.full(n, 200, np.uint8), np.full(n, 230, np.uint8)], 1)[None]
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0]


def _shape_mask(kind: str, size: int, cx: int, cy: int, r: int) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    if kind == "disc":
        cv2.circle(m, (cx, cy), r, 1, -1)
    elif kind == "ring":
        cv2.circle(m, (cx, cy), r, 1, -1)
        cv2.circle(m, (cx, cy), max(1, r // 2), 0, -1)
    elif kind == "square":
        cv2.rectangle(m, (cx - r, cy - r), (cx + r, cy + r), 1, -1)
    elif kind == "triangle":
        pts = np.array([[cx, cy - r], [cx - r, cy + r], [cx + r, cy + r]], np.int32)
        cv2.fillPoly(m, [pts], 1)
    elif kind == "diamond":
        pts = np.array([[cx, cy - r], [cx + r, cy], [cx, cy + r], [cx - r, cy]], np.int32)
        cv2.fillPoly(m, [pts], 1)
    else:  # cross
        w = max(1, r // 3)
        cv2.rectangle(m, (cx - r, cy - w), (cx + r, cy + w), 1, -1)
        cv2.rectangle(m, (cx - w, cy - r), (cx + w, cy + r), 1, -1)
    return m.astype(bool)


def _texture(kind: str, size: int, colour: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    img = np.empty((size, size, 3), np.uint8)
    img[:] = colour
    yy, xx = np.mgrid[0:size, 0:size]
    period = int(rng.integers(4, 9))
    dark = (colour * 0.35).astype(np.uint8)
    if kind == "stripes":
        img[(xx + yy) // period % 2 == 0] = dark
    elif kind == "checker":
        img[(xx // period + yy // period) % 2 == 0] = dark
    elif kind == "dots":
        img[(xx % period < 2) & (yy % period < 2)] = dark
    return img


class SyntheticEpisodes(Dataset):
    def __init__(
        self,
        length: int = 1000,
        image_size: int = 128,
        shots: int = 1,
        classes: int = 12,
        distractors: int = 2,
        seed: int = 0,
    ) -> None:
        self.length, self.size, self.shots = length, image_size, shots
        self.num_classes, self.distractors, self.seed = classes, distractors, seed
        self.colours = _palette(classes)

    def __len__(self) -> int:
        return self.length

    def class_spec(self, c: int) -> tuple[str, str, np.ndarray]:
        return SHAPES[c % len(SHAPES)], TEXTURES[(c // len(SHAPES)) % len(TEXTURES)], self.colours[c]

    def _scene(self, rng: np.random.Generator, target: int) -> tuple[np.ndarray, np.ndarray]:
        s = self.size
        bg = rng.integers(0, 70, (s // 8, s // 8, 3)).astype(np.uint8)
        img = cv2.resize(bg, (s, s), interpolation=cv2.INTER_CUBIC)
        img = np.clip(img.astype(np.int16) + rng.integers(-12, 13, img.shape), 0, 255).astype(np.uint8)
        others = [c for c in range(self.num_classes) if c != target]
        classes = [target] + list(rng.choice(others, size=self.distractors, replace=False))
        target_mask = np.zeros((s, s), bool)
        for c in rng.permutation(len(classes)):
            cls = classes[c]
            shape, tex, colour = self.class_spec(cls)
            r = int(rng.integers(s // 10, s // 5))
            cx, cy = (int(v) for v in rng.integers(r, s - r, 2))
            m = _shape_mask(shape, s, cx, cy, r)
            img[m] = _texture(tex, s, colour, rng)[m]
            target_mask &= ~m  # later objects occlude earlier ones
            if cls == target:
                target_mask |= m
        return img, target_mask

    def scene(self, target: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        """One image holding an object of class ``target`` among distractors, and that object's mask: uint8
        (S, S, 3), bool (S, S). A pure function of (dataset seed, target, index), e.g. the tasks of a
        synthetic labelling project with one label per class."""
        return self._scene(np.random.default_rng([self.seed, 7919, target, index]), target)

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, index])
        target = int(rng.integers(self.num_classes))
        q_img, q_mask = self._scene(rng, target)
        supports = [self._scene(rng, target) for _ in range(self.shots)]
        return make_item(q_img, q_mask, supports, target, f"synthetic/{self.seed}/{index}", self.size)
