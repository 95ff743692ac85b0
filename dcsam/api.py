"""The one Python API that the CLI, the Label Studio backend and a CVAT function all call.

>>> seg = InContextSegmenter.from_config(engine="lite")
>>> seg.add_examples(["example.jpg"], ["example.png"], label="cat")
>>> [pred] = seg.predict(["query.jpg"])
>>> pred.masks["cat"].shape, pred.scores["cat"]
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .config import SegmenterConfig
from .engines import create_engine
from .engines.base import Engine, Episode, LabelledImage, ProgressFn
from .errors import InputError
from .io import ImageSource, read_image, read_mask
from .masks import resize_mask

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    """Masks (bool, the query's native size) and scores in [0, 1], keyed by label."""

    masks: dict[str, np.ndarray] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    error: str | None = None  # set when this query could not be read; the batch still goes on


def load_example(image: ImageSource, mask: ImageSource) -> LabelledImage:
    """Read an example, checking the mask: empty is an error, another size is resized with a warning."""
    img = read_image(image)
    msk = read_mask(mask)
    if msk.shape != img.shape[:2]:
        warnings.warn(
            f"mask {getattr(mask, 'name', mask) if not isinstance(mask, np.ndarray) else 'array'} is "
            f"{msk.shape[1]}x{msk.shape[0]} but its image is {img.shape[1]}x{img.shape[0]}; "
            "resizing the mask (nearest neighbour)",
            stacklevel=2,
        )
        msk = resize_mask(msk, *img.shape[:2])
    if not msk.any():
        name = mask if isinstance(mask, str) else "the example mask"
        raise InputError(f"{name} is empty: an example needs at least one foreground pixel")
    return LabelledImage(image=img, mask=msk)


class InContextSegmenter:
    """Segments query images given labelled examples, with any engine.

    Each example's features are computed once, when it is added, and cached by label.
    """

    def __init__(self, engine: Engine, config: SegmenterConfig | None = None):
        self.engine = engine
        self.config = config or SegmenterConfig()
        self._examples: dict[str, list[Any]] = {}

    @classmethod
    def from_config(
        cls, config: SegmenterConfig | Mapping[str, Any] | None = None, **overrides: Any
    ) -> InContextSegmenter:
        if not isinstance(config, SegmenterConfig):
            config = SegmenterConfig.from_dict(config, **overrides)
        elif overrides:
            config = SegmenterConfig.from_dict(config.to_dict(), **overrides)
        return cls(create_engine(config), config)

    # -- examples ---------------------------------------------------------------------------
    @property
    def labels(self) -> list[str]:
        return list(self._examples)

    def add_examples(self, images: Sequence[ImageSource], masks: Sequence[ImageSource], label: str = "object") -> None:
        """Add labelled examples for ``label``; their features are computed now, once."""
        if len(images) != len(masks):
            raise InputError(f"{len(images)} example images but {len(masks)} masks")
        encoded = [self.engine.encode_example(load_example(i, m)) for i, m in zip(images, masks)]
        self._examples.setdefault(label, []).extend(encoded)

    def encoded_examples(self, label: str) -> list[Any]:
        """The cached, engine-encoded examples of ``label`` (empty when it has none)."""
        return list(self._examples.get(label, []))

    def clear_examples(self, label: str | None = None) -> None:
        if label is None:
            self._examples.clear()
        else:
            self._examples.pop(label, None)

    # -- inference ----------------------------------------------------------------------------
    def predict(self, images: Sequence[ImageSource], labels: Iterable[str] | None = None) -> list[Prediction]:
        """Segment each image for each label; an unreadable image gets ``error`` set, not an exception."""
        if not self._examples:
            raise InputError("no examples: call add_examples() first")
        wanted = list(labels) if labels is not None else self.labels
        missing = [lab for lab in wanted if lab not in self._examples]
        if missing:
            raise InputError(f"no examples for label(s) {missing}; known: {self.labels}")
        examples = {lab: self._examples[lab] for lab in wanted}
        results: list[Prediction] = [Prediction() for _ in images]
        decoded: list[tuple[int, np.ndarray]] = []
        for i, src in enumerate(images):
            try:
                decoded.append((i, read_image(src)))
            except InputError as exc:
                log.error("query %d: %s", i, exc)
                results[i].error = str(exc)
        batch = max(1, self.config.batch_size)
        for start in range(0, len(decoded), batch):
            chunk = decoded[start : start + batch]
            outs = self.engine.predict([img for _, img in chunk], examples)
            for (i, _), out in zip(chunk, outs):
                results[i].masks = {lab: r.mask for lab, r in out.items()}
                results[i].scores = {lab: float(r.score) for lab, r in out.items()}
        return results

    def refine(
        self,
        image: ImageSource,
        mask: np.ndarray | None = None,
        *,
        points: Sequence[tuple[float, float, bool]] = (),
        box: tuple[float, float, float, float] | None = None,
        label: str | None = None,
        mask_score: float | None = None,
    ) -> tuple[np.ndarray, float]:
        """Refine one image's mask with clicks ``(x, y, positive)`` and/or a box (native pixels).

        Starts from ``mask`` (``mask_score``: its score, e.g. the prediction's), else from this
        segmenter's prediction for ``label`` when it has examples for it. Returns ``(mask, score)``:
        the score estimates the refined mask's quality (see :mod:`dcsam.prompting`).
        """
        from .prompting import refine_mask

        return refine_mask(self, image, points, box, label, mask=mask, mask_score=mask_score)

    # -- learning -----------------------------------------------------------------------------
    def finetune(
        self, episodes: Sequence[Episode], *, steps: int | None = None, progress: ProgressFn | None = None
    ) -> dict:
        """Fine-tune the engine's trainable part.

        Cached example features hold only frozen-network outputs, so they stay valid.
        """
        return self.engine.finetune(episodes, steps=steps, progress=progress)

    @property
    def version(self) -> str:
        return self.engine.version
