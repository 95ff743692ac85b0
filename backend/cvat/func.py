"""CVAT auto-annotation function: label a few frames, segment the same objects in every other frame.

    cvat-cli task auto-annotate TASK --function-module backend.cvat.func -p examples=str:DIR
    cvat-cli task auto-annotate TASK --function-module backend.cvat.func \
        -p example_task=int:ID -p example_frames=str:0,12

(cvat-cli 2.23: ``cvat-cli auto-annotate TASK ...``; agents, CVAT Online / Enterprise:
``cvat-cli function create-native NAME --function-module backend.cvat.func -p ...`` then ``run-agent``.)

Parameters (``-p name=type:value``): ``examples`` (a folder, see :mod:`backend.cvat.examples`) and/or
``example_task`` or ``example_job``, with ``example_frames`` (frames of a CVAT task or job carrying mask or
polygon shapes; the client comes from ``CVAT_HOST`` and ``CVAT_ACCESS_TOKEN`` or ``CVAT_USER`` /
``CVAT_PASSWORD``, or ``cvat_host``);
``skip_example_frames`` (default true: frames named like an example frame get nothing, so annotating the
example task itself never duplicates the user's shapes); ``engine``, ``sam``, ``sam_checkpoint``,
``prompt_generator``, ``device``, ``precision``, ``min_score`` (the backend's ``DCSAM_*`` settings).

All the model work is :class:`dcsam.api.InContextSegmenter`'s; this module only speaks CVAT.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from dcsam.errors import InputError
from dcsam.io import read_image

from .examples import Example, cvat_client, folder_examples, parse_frames, task_examples
from .model import SETTING_PARAMS, function_settings, load_segmenter
from .shapes import mask_points, polygons

log = logging.getLogger(__name__)

PARAMS = {
    *("examples", "example_task", "example_job", "example_frames", "skip_example_frames", "cvat_host"),
    *SETTING_PARAMS,
}


class InContextDetector:
    """A cvat-sdk ``DetectionFunction``: ``spec`` lists the examples' labels, ``detect`` segments a frame."""

    def __init__(self, examples: Sequence[Example], params: dict[str, Any] | None = None) -> None:
        params = dict(params or {})
        self.settings = function_settings(params)
        self.segmenter, self.version = load_segmenter(self.settings)
        for ex in examples:  # encoded once, here: every frame reuses the features
            self.segmenter.add_examples([ex.image], [ex.mask], label=ex.label)
        self.labels = self.segmenter.labels
        self.skip_frames = (
            {ex.frame_name for ex in examples if ex.frame_name} if params.get("skip_example_frames", True) else set()
        )
        self.skipped: list[str] = []  # frames left alone (examples), for the log and the tests
        self.failed: dict[str, str] = {}  # frame name -> why it got nothing
        log.info("CVAT function ready: %s, labels %s, %d example(s)", self.version, self.labels, len(examples))

    # -- the DetectionFunction protocol ------------------------------------------------------------------
    @property
    def spec(self) -> Any:
        """The labels, by name (CVAT maps them to the task's); built on use, so the Nuclio handler runs
        without cvat-sdk."""
        import cvat_sdk.auto_annotation as cvataa

        return cvataa.DetectionFunctionSpec(
            labels=[cvataa.label_spec(name, i, type="mask") for i, name in enumerate(self.labels)]
        )

    def detect(self, context: Any, image: Image.Image) -> list[Any]:
        """Shapes for one frame; a frame that cannot be used gets none (logged), never failing the task."""
        name = str(getattr(context, "frame_name", ""))
        if name in self.skip_frames:
            self.skipped.append(name)
            return []
        try:
            results = self.segment(image)
        except InputError as exc:
            log.error("frame %s: %s; no shapes for this frame", name, exc)
            self.failed[name] = str(exc)
            return []
        threshold = getattr(context, "conf_threshold", None)
        return self.shapes(results, threshold, bool(getattr(context, "conv_mask_to_poly", False)))

    # -- the parts the Nuclio handler shares ---------------------------------------------------------------
    def segment(self, image: Image.Image | np.ndarray | bytes) -> list[tuple[int, str, np.ndarray, float]]:
        """``(label id, label, mask, score)`` per label found on ``image`` (InputError when it is unusable)."""
        array = read_image(image)
        pixels = array.shape[0] * array.shape[1]
        if pixels > self.settings.max_image_pixels:
            raise InputError(f"{pixels} pixels is over DCSAM_MAX_IMAGE_PIXELS={self.settings.max_image_pixels}")
        [pred] = self.segmenter.predict([array])
        if pred.error:
            raise InputError(pred.error)
        out = []
        for label_id, label in enumerate(self.labels):
            mask = pred.masks.get(label)
            if mask is not None and mask.any():
                out.append((label_id, label, mask, float(pred.scores.get(label, 0.0))))
        return out

    def keep(self, score: float, threshold: float | None) -> bool:
        """The context's threshold when CVAT gives one, else ``DCSAM_MIN_SCORE``."""
        return score >= (self.settings.min_score if threshold is None else float(threshold))

    def shapes(self, results: Sequence[tuple[int, str, np.ndarray, float]], threshold: float | None, poly: bool):
        import cvat_sdk.auto_annotation as cvataa

        out: list[Any] = []
        for label_id, _, mask, score in results:
            if not self.keep(score, threshold):
                continue
            if poly:  # conv_mask_to_poly: the driver refuses masks then
                out += [cvataa.polygon(label_id, points) for points in polygons(mask)]
            else:
                out.append(cvataa.mask(label_id, mask_points(mask)))
        return out


def load_examples(params: dict[str, Any]) -> list[Example]:
    """The examples the parameters name (a folder, a CVAT task, or both)."""
    examples: list[Example] = []
    if params.get("examples"):
        examples += folder_examples(params["examples"])
    task, job = params.get("example_task"), params.get("example_job")
    if task is not None or job is not None:
        client = cvat_client(params.get("cvat_host"))
        frames = parse_frames(params.get("example_frames"))
        examples += task_examples(
            client, None if task is None else int(task), frames, job_id=None if job is None else int(job)
        )
    if not examples:
        raise InputError("no examples: pass -p examples=str:DIR and/or -p example_task=int:ID (or example_job)")
    return examples


def create(**params: Any) -> InContextDetector:
    """The factory cvat-cli calls with the ``-p`` parameters."""
    unknown = sorted(set(params) - PARAMS)
    if unknown:
        raise InputError(f"unknown parameter(s) {unknown}; known: {sorted(PARAMS)}")
    return InContextDetector(load_examples(params), params)
