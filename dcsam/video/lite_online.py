"""Online fine-tuning of the lite head on a video's conditioning frame (OSVOS-style), before propagating.

The training-free matching knows the object only through the conditioning frame's features; the
small head (:class:`dcsam.lite.head.LiteHead`) can learn from that one frame what sets this object
apart from this background. One labelled frame gives one view only, so the head learns from
randomly transformed copies of it (scale, shift, small rotation, mirror, brightness): the pairs
"one view as the example -> another view as the target" teach it to keep the object when it
grows, shrinks or moves, which is the failure seen most on hard videos (the plan;
see below for what was measured).

The views alone, as extra examples, need no training (``views`` in :mod:`dcsam.video.lite`); the
head's fine-tune is opt-in (``online``): measured, it lost more on a hard video than it won on
the easy ones (figures in :mod:`dcsam.video.lite`).

The served engine never changes: the fine-tune runs on a training twin
(:func:`dcsam.training.twin.training_twin`: own head and matching memory, shared frozen backbone),
through the engine's public :meth:`~dcsam.engines.lite.LiteEngine.finetune`.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import islice

import cv2
import numpy as np

from ..engines.base import Episode, LabelledImage
from ..engines.lite import LiteEngine
from ..training.twin import training_twin

__all__ = ["augmented_view", "augmented_views", "online_engine"]


def augmented_view(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, *, scale: float = 0.25, shift: float = 0.1
) -> LabelledImage | None:
    """A random similarity transform of ``image`` and its bool ``mask`` (same size; the border is
    mirrored so no black frame becomes a cue), with a mirror and a brightness change half the time.

    Scale in ``[1 - scale, 1 + scale]`` about the object's centre, shift up to ``shift`` of the image
    side, rotation up to 10 degrees. None when the object leaves the view (nothing to learn from)."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    centre = (float(xs.mean()), float(ys.mean()))
    s = float(rng.uniform(1.0 - scale, 1.0 + scale))
    m = np.asarray(cv2.getRotationMatrix2D(centre, float(rng.uniform(-10.0, 10.0)), s), np.float64)
    m[:, 2] += rng.uniform(-shift, shift, 2) * np.array([w, h], np.float64)
    img = cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    out = cv2.warpAffine(mask.astype(np.uint8), m, (w, h), flags=cv2.INTER_NEAREST, borderValue=0) > 0
    if rng.random() < 0.5:
        img, out = img[:, ::-1], out[:, ::-1]
    if rng.random() < 0.5:
        img = np.clip(img.astype(np.float32) * rng.uniform(0.8, 1.2), 0, 255).astype(np.uint8)
    if out.sum() < 0.25 * mask.sum():  # mostly pushed out of the frame
        return None
    return LabelledImage(np.ascontiguousarray(img), np.ascontiguousarray(out))


def augmented_views(image: np.ndarray, mask: np.ndarray, n: int, rng: np.random.Generator) -> list[LabelledImage]:
    """Up to ``n`` views of :func:`augmented_view` (a few tries each: a view may lose the object)."""
    made = (augmented_view(image, mask, rng) for _ in range(3 * n))
    return list(islice((v for v in made if v is not None), n))


def online_engine(
    engine: LiteEngine,
    frame: np.ndarray,
    masks: Mapping[str, np.ndarray],
    views: Mapping[str, list[LabelledImage]],
    *,
    steps: int,
) -> LiteEngine:
    """A twin of ``engine`` whose head is fine-tuned for ``steps`` steps on ``frame`` with each label's
    mask in ``masks`` and that label's ``views`` (:func:`augmented_views`), which also join the twin's
    matching memory; ``engine`` is left as it was."""
    episodes = [
        Episode(support=[LabelledImage(frame, mask)], query=list(views[label]), label=label)
        for label, mask in masks.items()
        if views.get(label)
    ]
    twin = training_twin(engine)
    assert isinstance(twin, LiteEngine)  # a copy of a LiteEngine
    if episodes:
        twin.finetune(episodes, steps=steps)
    return twin
