"""Keyframe boxes of ``<Video>`` tasks as the makings of masks: a shared step of examples and video.

A box becomes a mask through the segmenter's refinement (its examples help when the label has some);
the frame comes from the task's video, downloaded once into a private temporary file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np

from dcsam.errors import InputError
from dcsam.video.frames import VideoFileSource

from ..labelstudio.labelconfig import ControlTag
from ..labelstudio.media import LabelStudioAccess, MediaError
from ..labelstudio.outputs import RegionError, VideoRectangleOutput


def box_to_mask(segmenter, frame: np.ndarray, box_percent, key: str | None) -> np.ndarray:
    """The object inside a keyframe box: the segmenter's refinement with the box (and its examples)."""
    h, w = frame.shape[:2]
    x, y, bw, bh = box_percent
    box = (x / 100 * w, y / 100 * h, (x + bw) / 100 * w, (y + bh) / 100 * h)
    mask, _ = segmenter.refine(frame, None, box=box, label=key if key in segmenter.labels else None)
    return np.asarray(mask, bool)


class downloaded_video:
    """``with downloaded_video(fetch, task_id) as source``: the task's video (``fetch()`` returns its
    bytes, within the download limits) in a private temporary file removed afterwards, read by
    :class:`dcsam.video.frames.VideoFileSource`."""

    def __init__(self, fetch: Callable[[], bytes], task_id: int | None):
        self.fetch, self.task_id = fetch, task_id
        self.path: str | None = None
        self.source: VideoFileSource | None = None

    def __enter__(self) -> VideoFileSource:
        raw = self.fetch()
        fd, self.path = tempfile.mkstemp(prefix="dcsam-video-", suffix=".mp4")
        try:  # __exit__ runs only once __enter__ returns: any error here (a full disk, a decoder crash) cleans up
            with os.fdopen(fd, "wb") as fh:
                fh.write(raw)
            del raw
            try:
                self.source = VideoFileSource(self.path, backend="opencv")
            except InputError as exc:
                raise MediaError(f"task {self.task_id}: not a readable video ({exc})") from exc
            if len(self.source) == 0:
                raise MediaError(f"task {self.task_id}: the video has no frames")
        except BaseException:
            self.__exit__()
            raise
        return self.source

    def __exit__(self, *exc: Any) -> None:
        try:
            if self.source is not None:
                self.source.close()
        finally:
            if self.path and os.path.exists(self.path):
                os.unlink(self.path)


def track_frame(
    control: ControlTag, result: list, label: str, video_ref: Any, task_id: int, access: LabelStudioAccess
) -> tuple[np.ndarray, tuple]:
    """The frame of ``label``'s first keyframe in an annotated video, and that keyframe's box (percent):
    the makings of an in-context example (see :func:`box_to_mask`). Raises RegionError / MediaError."""
    first = VideoRectangleOutput(control).first_box(result, label)
    if first is None:
        raise RegionError(f"no keyframe box for {label!r}")
    with downloaded_video(lambda: access.fetch(video_ref, task_id), task_id) as source:
        frame = source.read(min(first[0], len(source) - 1))
    return frame, first[1]
