"""The contract every segmentation engine fulfils, so the API, CLI and backend treat them alike."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class LabelledImage:
    """An image with its ground-truth mask: an in-context example or a training target."""

    image: np.ndarray  # uint8 (H, W, 3)
    mask: np.ndarray  # bool (H, W)


@dataclass
class Episode:
    """Supports and queries that share one label (used by fine-tuning and evaluation)."""

    support: list[LabelledImage]
    query: list[LabelledImage]
    label: str = "object"


@dataclass
class SegmentResult:
    """The engine's answer for one label on one query image."""

    mask: np.ndarray  # bool (H, W) at the query's native size
    score: float  # confidence in [0, 1] that the object is there and the mask is right
    extra: dict[str, Any] = field(default_factory=dict)


ProgressFn = Callable[[int, int, dict], None]  # (step, total, figures)
Click = tuple[float, float, bool]  # (x, y, positive) in native pixels
Box = tuple[float, float, float, float]  # (x0, y0, x1, y1) in native pixels


@dataclass(frozen=True)
class Prompts:
    """What a person gave for one image: clicks and a box, with the label's name and its encoded
    ``examples`` (hints an engine may use to segment or to judge a mask)."""

    points: Sequence[Click] = ()
    box: Box | None = None
    examples: Sequence[Any] = ()
    label: str | None = None


class Engine(ABC):
    """A model that segments queries given cached in-context examples.

    ``encode_example`` runs once per example; its result is what the caller caches.
    ``predict`` encodes each query once and decodes it for every label.
    """

    name: str = "engine"

    @abstractmethod
    def encode_example(self, example: LabelledImage) -> Any:
        """Compute and return the cached features of one labelled example."""

    @abstractmethod
    def predict(
        self, images: Sequence[np.ndarray], examples: Mapping[str, Sequence[Any]]
    ) -> list[dict[str, SegmentResult]]:
        """Segment every image for every label (``examples[label]`` = encoded examples)."""

    @property
    @abstractmethod
    def version(self) -> str:
        """A short, stable description of the weights in use (goes into ``model_version``)."""

    def prompt(self, image: np.ndarray, prompts: Prompts, start: np.ndarray | None = None) -> SegmentResult | None:
        """Segment ``image`` from the clicks and/or box of ``prompts`` with the engine's own promptable
        model; None when it has none (the caller then refines by colour, see :mod:`dcsam.prompting`).
        ``start`` (bool (H, W), the mask being refined) and the examples are hints an engine may use.
        The score estimates the returned mask's quality."""
        return None

    def score_mask(self, image: np.ndarray, mask: np.ndarray, prompts: Prompts) -> float | None:
        """The engine's quality estimate in [0, 1] of any bool (H, W) ``mask`` of ``image`` (e.g. one a
        refinement produced), given the label's encoded examples and the prompts; None when the
        engine has no way to judge one."""
        return None

    def finetune(
        self,
        episodes: Sequence[Episode],
        *,
        steps: int | None = None,
        progress: ProgressFn | None = None,
    ) -> dict[str, Any]:
        """Fine-tune the trainable part on episodes; returns figures (losses, steps, ...)."""
        raise NotImplementedError(f"engine {self.name!r} cannot be fine-tuned")

    def finetune_step_choices(self) -> list[int | None]:
        """Step counts worth comparing when fine-tuning on a project's annotations (None: the default).

        A caller with validation data (the backend's cross-validation) scores each and keeps the best.
        """
        return [None]

    def trainable_state_dict(self) -> dict[str, Any]:
        """Weights of the trainable part, as saved in a project checkpoint."""
        return {}

    def load_trainable_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore weights written by :meth:`trainable_state_dict`."""
        if state:
            raise NotImplementedError(f"engine {self.name!r} has no trainable state")
