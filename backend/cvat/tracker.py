"""CVAT tracking function: a mask or polygon on one frame, followed through the next frames.

    cvat-cli function create-native "dcsam tracker" --function-module backend.cvat.tracker
    cvat-cli function run-agent FUNCTION_ID --function-module backend.cvat.tracker [-p device=str:cuda]

CVAT's agents drive it (CVAT Online / Enterprise; cvat-sdk's ``TrackingFunction``, which cvat-sdk 2.23 does
not have yet). Each tracked shape is its own :meth:`dcsam.video.api.VideoSegmenter.segment` stream, fed one
frame at a time as CVAT sends them: SAM 2 memory propagation with DC-SAM on a SAM 2 model, the lite
propagation otherwise (``DCSAM_VIDEO_PROPAGATION``). Parameters: those of :mod:`backend.cvat.func` that name
settings (``engine``, ``sam``, ``sam_checkpoint``, ``device``, ...).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from dcsam.errors import InputError
from dcsam.io import read_image
from dcsam.video.api import VideoFrameResult, VideoSegmenter
from dcsam.video.frames import CallableSource

from .model import SETTING_PARAMS, function_settings, load_segmenter
from .shapes import mask_points, polygons, shape_mask

log = logging.getLogger(__name__)

SUPPORTED_SHAPES = ("mask", "polygon")
OBJECT = "object"  # each stream segments one shape, under one internal label
ENDLESS = 1 << 30  # CVAT decides when tracking stops; the stream never runs out first


@dataclass
class FrameFeed:
    """The frame CVAT sent last; the stream reads it when asked for its next frame."""

    frame: np.ndarray

    def read(self, index: int) -> np.ndarray:
        return self.frame


@dataclass
class TrackState:
    frames: Iterator[VideoFrameResult]  # the shape's propagation, one frame per next()
    feed: FrameFeed
    shape_type: str


class InContextTracker:
    """A cvat-sdk ``TrackingFunction`` over :class:`VideoSegmenter`."""

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        import cvat_sdk.auto_annotation as cvataa

        if not hasattr(cvataa, "TrackingFunctionSpec"):
            from cvat_sdk.version import VERSION

            raise InputError(f"cvat-sdk {VERSION} has no tracking functions: upgrade cvat-sdk (2.80 has them)")
        settings = function_settings(dict(params or {}))
        segmenter, self.version = load_segmenter(settings)
        self.video = VideoSegmenter(segmenter, propagation=settings.video_propagation)
        self.spec = cvataa.TrackingFunctionSpec(supported_shape_types=list(SUPPORTED_SHAPES))
        log.info("CVAT tracker ready: %s, %s propagation", self.version, self.video.propagation)

    def preprocess_image(self, context: Any, image: Image.Image) -> np.ndarray:
        """Decoded once per frame, shared by every shape tracked on it."""
        return read_image(image)

    def init_tracking_state(self, context: Any, pp_image: np.ndarray, shape: Any) -> TrackState:
        if shape.type not in SUPPORTED_SHAPES:
            raise InputError(f"cannot track a {shape.type!r} shape: draw a mask or a polygon")
        height, width = pp_image.shape[:2]
        mask = shape_mask(shape.type, shape.points, width, height)
        if not mask.any():
            raise InputError(f"the {shape.type} to track covers no pixel of the frame")
        feed = FrameFeed(pp_image)
        frames = self.video.segment(
            CallableSource(ENDLESS, feed.read, name="cvat-track"),
            masks={OBJECT: mask},
            frame_index=0,
            direction="forward",
        )
        next(frames)  # the conditioning frame: the user's own shape, which CVAT already has
        return TrackState(frames, feed, shape.type)

    def track(self, context: Any, pp_image: np.ndarray, state: TrackState) -> Any:
        """The shape on the next frame, of the tracked shape's type (None once the object is lost)."""
        import cvat_sdk.auto_annotation as cvataa

        state.feed.frame = pp_image
        result = next(state.frames)
        mask = result.masks.get(OBJECT)
        if result.error or mask is None or not mask.any():
            return None
        if state.shape_type == "mask":
            return cvataa.TrackableShape(type="mask", points=mask_points(mask))
        parts = polygons(mask)
        return cvataa.TrackableShape(type="polygon", points=parts[0]) if parts else None


def create(**params: Any) -> InContextTracker:
    """The factory cvat-cli calls with the ``-p`` parameters."""
    unknown = sorted(set(params) - set(SETTING_PARAMS))
    if unknown:
        raise InputError(f"unknown parameter(s) {unknown}; known: {sorted(SETTING_PARAMS)}")
    return InContextTracker(params)
