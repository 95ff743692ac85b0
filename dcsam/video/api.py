"""The video API: segment every frame of a video for each label, streaming, memory bounded.

>>> vs = VideoSegmenter.from_config(engine="lite")                 # or engine="dcsam", sam="sam2.1_hiera_b+"
>>> vs.add_examples(["cat.jpg"], ["cat.png"], label="cat")         # in-context examples (any image)
>>> for r in vs.segment("clip.mp4", progress=print):               # or a folder, or a list of frames
...     r.index, r.masks["cat"].shape, r.scores["cat"]

Or start from a labelled frame of the video itself (the DAVIS protocol, or a Label Studio user
who annotated frame k): ``vs.segment(frames, masks={"cat": mask_k}, frame_index=k)``; frames
after k are propagated forward, then frames before k backward.

How a video is segmented:

1. The conditioning frame (``frame_index``, default 0): its mask per label is the given one, or
   the image engine's in-context prediction from the examples (DC-SAM with its trained prompt
   generator or its cold start; or the lite engine).
2. Propagation through the other frames, all labels together:
   ``sam2`` - SAM 2 memory propagation (the mask enters SAM 2 as a mask prompt, like
   ``add_new_mask``), see :mod:`dcsam.video.sam2_propagation`;
   ``lite`` - the lite engine per frame with temporal smoothing, see :mod:`dcsam.video.lite`.
   ``auto`` picks ``sam2`` when the engine is DC-SAM on a SAM 2 model, else ``lite``.

Frames are decoded one at a time and released; the propagators keep a bounded memory (the
conditioning frame plus the last few frames), so memory does not grow with the video's length.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..api import InContextSegmenter
from ..config import SegmenterConfig
from ..engines.base import ProgressFn, SegmentResult
from ..errors import InputError
from ..io import ImageSource, read_mask
from ..masks import resize_mask
from .frames import FramesLike, FrameSource, VideoFileSource, open_frames

log = logging.getLogger(__name__)

PROPAGATIONS = ("auto", "sam2", "lite")


@dataclass
class VideoFrameResult:
    """Masks (bool, the frame's size) and scores in [0, 1] of one frame, keyed by label."""

    index: int  # frame index in the video
    name: str  # frame name (file stem for image folders, %05d otherwise)
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    conditioning: bool = False  # the frame the propagation started from
    error: str | None = None  # set when this frame could not be decoded (the video goes on)


class VideoSegmenter:
    """In-context video segmentation over any :class:`InContextSegmenter` engine."""

    def __init__(
        self,
        segmenter: InContextSegmenter,
        *,
        propagation: str = "auto",
        video_options: Mapping[str, Any] | None = None,
        sam2_model: Any = None,
    ) -> None:
        """``propagation``: auto | sam2 | lite. ``video_options``: lite propagation options
        (:data:`dcsam.video.lite.LITE_VIDEO_DEFAULTS`) or, for sam2, ``fill_hole_area``.
        ``sam2_model``: a SAM 2 model (``SAM2Base``) or name to propagate with, instead of the
        engine's own (e.g. the lite image engine with SAM 2 propagation)."""
        if propagation not in PROPAGATIONS:
            raise ValueError(f"unknown propagation {propagation!r}; choose one of {PROPAGATIONS}")
        self.segmenter = segmenter
        self.video_options = dict(video_options or {})
        self._sam2_model = sam2_model
        self.propagation = self._resolve(propagation)
        self.memory_stats: dict[str, Any] = {}  # what the propagator holds, after the latest frame
        if self.propagation == "lite":
            from .lite import normalise_video_options

            normalise_video_options(self.video_options)  # fail early on unknown options
        elif set(self.video_options) - {"fill_hole_area"}:
            raise ValueError(
                f"unknown sam2 video option(s) {sorted(set(self.video_options) - {'fill_hole_area'})}; "
                "known: ['fill_hole_area']"
            )

    @classmethod
    def from_config(
        cls,
        config: SegmenterConfig | Mapping[str, Any] | None = None,
        *,
        propagation: str = "auto",
        video_options: Mapping[str, Any] | None = None,
        sam2_model: Any = None,
        **overrides: Any,
    ) -> VideoSegmenter:
        """Like :meth:`InContextSegmenter.from_config` (same settings), plus the video ones."""
        return cls(
            InContextSegmenter.from_config(config, **overrides),
            propagation=propagation,
            video_options=video_options,
            sam2_model=sam2_model,
        )

    # -- set-up ----------------------------------------------------------------------------------
    def _resolve(self, propagation: str) -> str:
        from .sam2_propagation import sam2_model_of

        engine = self.segmenter.engine
        if isinstance(self._sam2_model, str):  # a SAM 2 model by name, for propagation only
            self._sam2_model = self._build_sam2(self._sam2_model, checkpoint=None)
        if propagation == "auto":
            if self._sam2_model is not None or sam2_model_of(engine) is not None:
                return "sam2"
            if engine.name != "lite":
                raise InputError(
                    f"no video propagation for engine {engine.name!r} on {self.segmenter.config.sam}: "
                    "use a SAM 2 model, or give sam2_model='sam2.1_hiera_t' (or another SAM 2 name)"
                )
            return "lite"
        if propagation == "lite" and engine.name != "lite":
            raise InputError("propagation 'lite' needs the lite engine (engine='lite')")
        if propagation == "sam2" and self._sam2_model is None and sam2_model_of(engine) is None:
            cfg = self.segmenter.config
            self._sam2_model = self._build_sam2(cfg.sam, checkpoint=cfg.sam_checkpoint)
        return propagation

    def _build_sam2(self, name: str, checkpoint: str | None):
        from ..sam_models import build_sam_model, get_spec

        cfg = self.segmenter.config
        if get_spec(name).family != "sam2":
            raise InputError(f"propagation 'sam2' needs a SAM 2 model; {name} is SAM 1")
        return build_sam_model(
            name,
            checkpoint=checkpoint,
            random_weights=cfg.random_sam_weights,
            cache_dir=cfg.resolved_cache_dir(),
            allow_download=cfg.allow_download,
            device=cfg.resolved_device(),
            image_size=cfg.sam_image_size,
        )

    def _propagator(self):
        if self.propagation == "lite":
            from .lite import LitePropagator

            return LitePropagator(self.segmenter.engine, self.video_options)
        from .sam2_propagation import Sam2Propagator, sam2_model_of

        model = self._sam2_model if self._sam2_model is not None else sam2_model_of(self.segmenter.engine)
        cfg = self.segmenter.config
        return Sam2Propagator(
            model,
            device=cfg.resolved_device(),
            dtype=cfg.resolved_dtype(),
            fill_hole_area=int(self.video_options.get("fill_hole_area", 8)),
        )

    @property
    def sam2_model(self) -> Any:
        """The SAM 2 model built for propagation only (None when the engine's own SAM 2 is used, or lite)."""
        return self._sam2_model

    @property
    def version(self) -> str:
        return f"{self.segmenter.version}+video-{self.propagation}"

    @property
    def labels(self) -> list[str]:
        return self.segmenter.labels

    def add_examples(self, images: Sequence[ImageSource], masks: Sequence[ImageSource], label: str = "object") -> None:
        """In-context examples for ``label`` (images from anywhere: another video, a photo...)."""
        self.segmenter.add_examples(images, masks, label=label)

    def clear_examples(self, label: str | None = None) -> None:
        self.segmenter.clear_examples(label)

    def finetune(
        self, tubes: Sequence[Any], *, steps: int | None = None, progress: ProgressFn | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """Mask-tube fine-tuning from annotated videos (:class:`dcsam.video.tubes.MaskTube`, e.g.
        from :func:`dcsam.video.tubes.tube_from_video`): the lite engine's head, or DC-SAM's prompt
        generator through SAM 2 memory. Returns figures (losses, steps, seconds)."""
        from .tubes import finetune_on_tubes

        return finetune_on_tubes(self.segmenter, tubes, steps=steps, progress=progress, **kwargs)

    # -- segmentation ----------------------------------------------------------------------------
    def segment(
        self,
        frames: FramesLike,
        *,
        masks: Mapping[str, ImageSource] | None = None,
        frame_index: int = 0,
        labels: Iterable[str] | None = None,
        direction: str = "both",
        end: int | None = None,
        progress: ProgressFn | None = None,
    ) -> Iterator[VideoFrameResult]:
        """Yield one :class:`VideoFrameResult` per frame, as soon as it is segmented.

        ``frames``: a folder of images, a video file, a list of image sources or a FrameSource.
        ``masks``: given masks of frame ``frame_index`` per label (arrays or mask files); labels
        without one are predicted on that frame from this segmenter's examples.
        ``labels``: which labels to segment (default: those of ``masks`` plus every label with
        examples). ``direction``: ``both`` (forward from ``frame_index`` to the end, then backward
        to frame 0), ``forward`` or ``backward``. ``end``: stop before this frame index (forward).
        Order: the conditioning frame, then forward frames, then backward frames.
        ``progress(done, total, {"index": i})`` is called after every frame.
        Arguments are checked now; frames are read only as the caller iterates.
        """
        if direction not in ("both", "forward", "backward"):
            raise ValueError(f"direction {direction!r}; use both, forward or backward")
        source = open_frames(frames)
        given = {lab: m for lab, m in (masks or {}).items()}
        wanted = list(labels) if labels is not None else list(dict.fromkeys([*given, *self.labels]))
        if not wanted:
            raise InputError("nothing to segment: give masks for a frame or add examples first")
        missing = [lab for lab in wanted if lab not in given and lab not in self.labels]
        if missing:
            raise InputError(f"no mask and no examples for label(s) {missing}; known: {self.labels}")
        n = len(source)
        if not 0 <= frame_index < max(n, 1):
            raise InputError(f"frame_index {frame_index} outside the video (0..{n - 1})")
        stop = n if end is None else min(n, int(end))
        return self._propagate(source, source is not frames, given, wanted, frame_index, direction, stop, progress)

    def _propagate(
        self,
        source: FrameSource,
        owned: bool,
        given: Mapping[str, Any],
        wanted: list[str],
        frame_index: int,
        direction: str,
        stop: int,
        progress: ProgressFn | None,
    ) -> Iterator[VideoFrameResult]:
        """The frames' results in order; closes ``source`` at the end when ``owned`` (opened here)."""
        try:
            n = len(source)
            fwd = direction in ("both", "forward")
            bwd = direction in ("both", "backward") and frame_index > 0
            total = 1 + (max(0, stop - frame_index - 1) if fwd else 0) + (frame_index if bwd else 0)
            done = 0

            def tick(index: int) -> None:
                nonlocal done
                done += 1
                if progress is not None:
                    progress(done, total, {"index": index})

            t0 = time.perf_counter()
            anchor = source.read(frame_index)
            cond_masks = self._conditioning_masks(anchor, given, wanted)
            prop = self._propagator()
            if self.propagation == "lite":
                examples = {lab: list(getattr(self.segmenter, "_examples", {}).get(lab, [])) for lab in wanted}
                first = prop.start(anchor, cond_masks, examples, predicted=[lab for lab in wanted if lab not in given])
            else:
                first = prop.start(anchor, cond_masks, index=frame_index, num_frames=n)
            del anchor
            yield self._result(source, frame_index, first, conditioning=True)
            tick(frame_index)
            runs: list[tuple[int, int | None, int]] = []
            if fwd:
                runs.append((frame_index + 1, stop, 1))
            if bwd:
                runs.append((frame_index - 1, None, -1))
            for k, (start, run_stop, step) in enumerate(runs):
                if k > 0:
                    prop.rewind()
                for index, frame in self._frames(source, start, run_stop, step):
                    if isinstance(frame, Exception):
                        yield VideoFrameResult(index, source.frame_name(index), error=str(frame))
                        tick(index)
                        continue
                    if self.propagation == "lite":
                        out = prop.step(frame)
                    else:
                        out = prop.step(frame, index, reverse=step < 0)
                    del frame
                    self.memory_stats = prop.memory_size()
                    yield self._result(source, index, out)
                    tick(index)
            log.info("video %s: %d frames, %d labels, %.1f s", source.name, done, len(wanted), time.perf_counter() - t0)
        finally:
            if owned:
                source.close()

    @staticmethod
    def _frames(source: FrameSource, start: int, stop: int | None, step: int):
        """(index, frame) pairs; a frame that cannot be decoded gives (index, InputError)."""
        if isinstance(source, VideoFileSource):  # sequential (forward) or chunked (backward) decoding
            yield from source.iter_range(start, stop, step)
            return
        indices = (
            range(start, stop if stop is not None else len(source))
            if step > 0
            else range(start, -1 if stop is None else stop, -1)
        )
        for i in indices:  # random access: one bad frame does not end the run
            try:
                yield i, source.read(i)
            except InputError as exc:
                log.error("frame %d: %s", i, exc)
                yield i, exc

    def _conditioning_masks(
        self, frame: np.ndarray, given: Mapping[str, Any], wanted: list[str]
    ) -> dict[str, np.ndarray]:
        h, w = frame.shape[:2]
        out: dict[str, np.ndarray] = {}
        for lab in wanted:
            if lab in given:
                m = read_mask(given[lab])
                if m.shape != (h, w):
                    log.warning(
                        "mask of %r is %dx%d, the frame %dx%d: resized (nearest)", lab, m.shape[1], m.shape[0], w, h
                    )
                    m = resize_mask(m, h, w)
                out[lab] = m
        predict = [lab for lab in wanted if lab not in given]
        if predict:
            [pred] = self.segmenter.predict([frame], labels=predict)
            if pred.error:
                raise InputError(f"conditioning frame: {pred.error}")
            for lab in predict:
                out[lab] = pred.masks[lab]
                if not out[lab].any():
                    log.warning("label %r: nothing found on the conditioning frame", lab)
        return out

    @staticmethod
    def _result(
        source: FrameSource, index: int, out: Mapping[str, SegmentResult], conditioning: bool = False
    ) -> VideoFrameResult:
        return VideoFrameResult(
            index=index,
            name=source.frame_name(index),
            masks={lab: r.mask for lab, r in out.items()},
            scores={lab: float(r.score) for lab, r in out.items()},
            conditioning=conditioning,
        )
