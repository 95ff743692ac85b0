"""Video in Label Studio, two ways; protocol and formats only, the propagation is ``dcsam.video``.

1. **Frame-sequence image tasks**: one ``<Image>`` task per frame, whose data names its video and
   its frame number (keys ``DCSAM_VIDEO_KEY`` / ``DCSAM_FRAME_KEY``, default ``video`` / ``frame``).
   Predicting any frame of a video starts one propagation through all of that video's tasks in the
   project, in the background; the request returns as soon as its own frames are done and the
   other frames' regions are cached for their own requests (and for pre-annotation jobs).
   Conditioning: each annotated frame of the video (latest accepted annotation) owns the frames
   nearer to it than to any other annotated frame and is propagated from with its own masks; a
   video without any annotated frame starts at its first frame, predicted from the project's
   examples (other videos or images with the same labels). Labels an annotated frame lacks are
   predicted on it from the examples too.
2. **``<Video>`` tasks**: the file is downloaded once and decoded lazily (OpenCV). The task's own
   ``VideoRectangle`` keyframe (its first box of each label) conditions the propagation, the mask
   being the box refined on that frame; without one, the first frame is predicted from the
   project's examples (first boxes of annotated videos, refined the same way). Output: one
   ``VideoRectangle`` track per label (see :class:`backend.labelstudio.outputs.VideoRectangleOutput`).
   Like a frame sequence, a task's tracks are computed in the background (:class:`TrackRun`, cached per
   task until its video, annotation, examples or model_version change): a ``/predict`` request waits at
   most ``DCSAM_VIDEO_TASK_WAIT_S`` for them, so it answers within Label Studio's 100 s limit, and a task
   not done by then gets no prediction yet (Label Studio asks again; the finished track is then served
   from the cache). Pre-annotation jobs wait for the track. A run that failed is never reused.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from dcsam.errors import DcsamError, InputError
from dcsam.video import VideoSegmenter
from dcsam.video.frames import FrameSource

from ..labelstudio.annotations import latest_accepted
from ..labelstudio.labelconfig import ControlTag, LabelConfig, VideoTag
from ..labelstudio.media import LabelStudioAccess, LabelStudioError, MediaError, fetch_media
from ..labelstudio.outputs import RegionError, VideoRectangleOutput, annotation_mask, mask_box, mask_regions
from .examples import example_key
from .tracks import box_to_mask, downloaded_video

log = logging.getLogger(__name__)

PREFETCH = 6  # frames downloaded ahead of the propagation
# finished <Video> track runs kept: a few KB of keyframes each, and an evicted one is propagated again when
# Label Studio asks for it, so a Retrieve Predictions over many videos must find its tracks still here
TRACKS_KEPT = 1024


@dataclass
class FrameOutcome:
    regions: list[dict]
    error: str | None = None


class ModelChanged(Exception):
    """The project's model version changed during a propagation (a promotion or a rollback landed)."""


PENDING = "its track is still being computed in the background (DCSAM_VIDEO_TASK_WAIT_S); ask again later"


@dataclass
class TrackRun:
    """One ``<Video>`` task's tracks, computed by a background thread; requests and jobs wait on it."""

    key: tuple
    done: threading.Event = field(default_factory=threading.Event)
    outcome: FrameOutcome | None = None

    def finish(self, outcome: FrameOutcome) -> TrackRun:
        self.outcome = outcome
        self.done.set()
        return self

    def wait(self, timeout: float | None) -> FrameOutcome | None:
        """The outcome, or None when the run is not done within ``timeout`` seconds (None: wait until done)."""
        return self.outcome if self.done.wait(timeout) else None

    @property
    def failed(self) -> bool:
        return self.done.is_set() and (self.outcome is None or self.outcome.error is not None)


def sequence_id(task: dict, video_key: str, frame_key: str) -> tuple[str, int] | None:
    """(video id, frame number) of a frame-sequence task, or None for an ordinary image task."""
    data = task.get("data")
    if not isinstance(data, dict) or video_key not in data or frame_key not in data:
        return None
    video, frame = data[video_key], data[frame_key]
    if video is None or isinstance(video, (dict, list)) or str(video) == "":
        return None
    try:
        number = int(float(frame))
    except (TypeError, ValueError, OverflowError):
        return None
    return str(video), number


class TaskFrames(FrameSource):
    """The frames of a video's tasks, downloaded by ``load(i)`` a few frames ahead of the reader."""

    def __init__(self, loaders: list[Callable[[], np.ndarray]], name: str, pool: ThreadPoolExecutor):
        self.loaders, self.name, self.pool = loaders, name, pool
        self._pending: dict[int, Future] = {}
        self._last = -1

    def __len__(self) -> int:
        return len(self.loaders)

    def read(self, index: int) -> np.ndarray:
        direction = 1 if index >= self._last else -1
        self._last = index
        future = self._pending.pop(index, None)
        wanted = {index + direction * k for k in range(1, PREFETCH + 1)} & set(range(len(self)))
        for i in list(self._pending):
            if i not in wanted:
                self._pending.pop(i).cancel()
        for i in sorted(wanted - set(self._pending)):
            self._pending[i] = self.pool.submit(self.loaders[i])
        try:
            return future.result() if future is not None else self.loaders[index]()
        except (MediaError, LabelStudioError) as exc:
            raise InputError(str(exc)) from exc

    def close(self) -> None:
        for f in self._pending.values():
            f.cancel()
        self._pending.clear()


class SubFrames(FrameSource):
    """Frames ``start .. stop-1`` of another source, re-indexed from 0."""

    def __init__(self, source: FrameSource, start: int, stop: int):
        self.source, self.start, self.stop, self.name = source, start, stop, source.name

    def __len__(self) -> int:
        return self.stop - self.start

    def read(self, index: int) -> np.ndarray:
        return self.source.read(self.start + index)


@dataclass
class SequenceRun:
    """One propagation through a frame-sequence video, filled in by a background thread."""

    key: tuple
    task_ids: list[int]
    first_wanted: set[int] = field(default_factory=set)  # positions the request that started it waits for
    outcomes: dict[int, FrameOutcome] = field(default_factory=dict)
    finished: bool = False
    cancelled: bool = False
    started_at: float = field(default_factory=time.monotonic)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def put(self, task_id: int, outcome: FrameOutcome) -> None:
        with self.cond:
            self.outcomes[task_id] = outcome
            self.cond.notify_all()

    def finish(self, error: str | None = None) -> None:
        with self.cond:
            for t in self.task_ids:  # frames the run never reached (an error, a cancellation)
                self.outcomes.setdefault(t, FrameOutcome([], error or "the propagation stopped before this frame"))
            self.finished = True
            self.cond.notify_all()

    def wait(self, task_ids: list[int], timeout: float | None) -> dict[int, FrameOutcome]:
        """The outcomes of ``task_ids`` once they are all in, or what there is after ``timeout`` seconds
        (None: no limit; the others are reported as timed out; the run goes on for later requests)."""
        with self.cond:
            done = self.cond.wait_for(lambda: self.finished or all(t in self.outcomes for t in task_ids), timeout)
            got = {t: self.outcomes[t] for t in task_ids if t in self.outcomes}
            if not done:
                late = FrameOutcome([], "the propagation did not reach this frame in time (DCSAM_VIDEO_WAIT_S)")
                got.update((t, late) for t in task_ids if t not in got)
            return got


def segments(anchors: list, n: int, first: set[int]) -> list[tuple[int, int, int, int]]:
    """(anchor index, anchor position, lo, hi): each annotated frame (or frame 0 without any) owns the
    frames ``lo .. hi-1`` nearer to it than to another one. The segments holding ``first`` (the frames
    the request that started the run waits for) come first, then the rest in video order."""
    positions = [pos for pos, _ in anchors] or [0]
    out = []
    for j, anchor in enumerate(positions):
        lo = 0 if j == 0 else (positions[j - 1] + anchor) // 2 + 1
        hi = n if j == len(positions) - 1 else (anchor + positions[j + 1]) // 2 + 1
        out.append((j, anchor, lo, hi))
    return sorted(out, key=lambda seg: not any(seg[2] <= f < seg[3] for f in first))


class VideoPredictor:
    """Frame-sequence and ``<Video>`` predictions for :class:`backend.services.predictor.Predictor`."""

    def __init__(
        self, *, model, settings, prepare: Callable[[int | None], str], count: Callable[..., None] | None = None
    ):
        self.model = model
        self.settings = settings
        self.prepare = prepare
        self.count = count or (lambda name, n=1.0, **labels: None)
        self._runs: OrderedDict[tuple, SequenceRun] = OrderedDict()  # (project, image, video) -> latest run
        self._listings: OrderedDict[tuple, tuple[Any, float, list[dict]]] = OrderedDict()  # as many as runs
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="dcsam-frames")
        self._tracks: OrderedDict[tuple, TrackRun] = OrderedDict()  # (project, video tag, task) -> latest run
        # two at a time: one downloads while the other propagates (the inference lock serialises the model)
        self._track_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="dcsam-track")
        self.sam2_model: Any = None  # a SAM 2 model built for propagation, shared by every project (settable)
        self._unsupported: str | None = None

    # -- the dcsam.video segmenter of a project ----------------------------------------------------
    def sequence_runs(self) -> list[SequenceRun]:
        """The cached frame-sequence propagation runs, oldest first (for status pages and tests)."""
        with self._lock:
            return list(self._runs.values())

    def track_runs(self) -> list[TrackRun]:
        """The cached ``<Video>`` track runs, oldest first (for status pages and tests)."""
        with self._lock:
            return list(self._tracks.values())

    def video_segmenter(self, segmenter) -> VideoSegmenter | None:
        """A :class:`VideoSegmenter` over the project's segmenter; None when the engine cannot propagate."""
        if self._unsupported is not None:
            return None
        try:
            vs = VideoSegmenter(segmenter, propagation=self.settings.video_propagation, sam2_model=self.sam2_model)
        except (DcsamError, ValueError) as exc:
            self._unsupported = str(exc)
            log.warning("video propagation unavailable (%s): frame-sequence tasks are predicted frame by frame", exc)
            return None
        if vs.propagation == "sam2" and self.sam2_model is None and vs.sam2_model is not None:
            self.sam2_model = vs.sam2_model
        return vs

    def _step(self, project_id: int, iterator, version: str):
        """The next result of a propagation, computed under the inference lock with the project's weights.
        Raises :class:`ModelChanged` once they are no longer ``version``'s (a promotion or a rollback landed):
        the rest of the propagation would mix two models under one label."""
        with self.model.inference_lock:
            served = self.prepare(project_id)
            if served != version:
                raise ModelChanged(
                    f"the model changed from {version} to {served} during the propagation; "
                    "it is computed again with the new one"
                )
            return next(iterator, None)

    # -- 1. frame-sequence image tasks -------------------------------------------------------------
    def predict_sequences(
        self,
        project_id: int,
        tasks: list[dict],
        cfg: LabelConfig,
        image_name: str,
        access: LabelStudioAccess | None,
        pe,
        version: str,
        load: Callable[[dict, str], np.ndarray],
        wait_s: float | None,
    ) -> dict[int, FrameOutcome]:
        """Outcomes (by index into ``tasks``) of the frame-sequence tasks among ``tasks``; each video's frames are
        waited for at most ``wait_s`` seconds (None: until the propagation has done them)."""
        s = self.settings
        by_video: dict[str, list[int]] = {}
        for i, task in enumerate(tasks):
            sid = sequence_id(task, s.video_key, s.frame_key)
            if sid is not None and isinstance(task.get("id"), int):
                by_video.setdefault(sid[0], []).append(i)
        if not by_video or access is None:
            return {}
        vs = self.video_segmenter(pe.segmenter)
        if vs is None:
            return {}
        out: dict[int, FrameOutcome] = {}
        for video, indices in by_video.items():
            wanted_ids = [tasks[i]["id"] for i in indices]
            deadline = None if wait_s is None else time.monotonic() + wait_s
            try:
                for _ in range(2):  # a run superseded while we waited (new annotations): wait for its successor
                    run = self._sequence_run(
                        project_id, cfg, image_name, video, wanted_ids, access, pe, version, load, vs
                    )
                    got = run.wait(wanted_ids, None if deadline is None else max(deadline - time.monotonic(), 0.0))
                    if not run.cancelled:
                        break
            except LabelStudioError as exc:
                log.error("project %s, video %r: cannot list its frames: %s", project_id, video, exc)
                for i in indices:
                    out[i] = FrameOutcome([], f"video {video!r}: {exc}")
                continue
            for i in indices:
                out[i] = got.get(tasks[i]["id"]) or FrameOutcome([], "not a frame of the propagated video")
        return out

    def _video_tasks(
        self, project_id: int, video: str, must_have: list[int], access: LabelStudioAccess, rev: Any
    ) -> list[dict]:
        """The project's tasks of ``video`` (annotations included), listed once per examples revision."""
        s = self.settings
        key = (project_id, video)
        with self._lock:
            cached = self._listings.get(key)
        if (
            cached
            and cached[0] == rev
            and time.monotonic() - cached[1] < s.examples_recheck_s
            and set(must_have) <= {t["id"] for t in cached[2]}
        ):
            return cached[2]
        flt = [{"filter": f"filter:tasks:data.{s.video_key}", "operator": "equal", "type": "String", "value": video}]
        found = [t for t in access.tasks(project_id, flt) if self._of_video(t, video)]
        if not set(must_have) <= {t["id"] for t in found}:  # a filter this Label Studio does not honour
            found = [t for t in access.tasks(project_id) if self._of_video(t, video)]
        with self._lock:
            self._listings[key] = (rev, time.monotonic(), found)
            self._listings.move_to_end(key)
            while len(self._listings) > s.video_cache:
                self._listings.popitem(last=False)
        return found

    def _of_video(self, task: dict, video: str) -> bool:
        sid = sequence_id(task, self.settings.video_key, self.settings.frame_key)
        return sid is not None and sid[0] == video and isinstance(task.get("id"), int)

    def _sequence_run(
        self, project_id, cfg, image_name, video, wanted_ids, access, pe, version, load, vs
    ) -> SequenceRun:
        s = self.settings
        rev = (pe.rev_seen, tuple(sorted(pe.fingerprints.items())))
        frames = sorted(
            self._video_tasks(project_id, video, wanted_ids, access, rev),
            key=lambda t: (sequence_id(t, s.video_key, s.frame_key)[1], t["id"]),
        )
        controls = [c for c in cfg.mask_controls if c.to_name == image_name]
        anchors: list[tuple[int, dict]] = []  # (position, annotation)
        for pos, task in enumerate(frames):
            ann = latest_accepted(task)
            if ann and any(
                isinstance(r, dict) and r.get("from_name") in {c.name for c in controls}
                for r in ann.get("result") or []
            ):
                anchors.append((pos, ann))
        key = (
            version,
            rev,
            tuple(t["id"] for t in frames),
            tuple((pos, ann["id"], str(ann.get("updated_at"))) for pos, ann in anchors),
        )
        slot = (project_id, image_name, video)
        with self._lock:
            run = self._runs.get(slot)
            if run is not None and run.key == key:
                self._runs.move_to_end(slot)
                return run
            if run is not None and not run.finished:
                run.cancelled = True  # superseded: new examples, annotations or weights
            wanted = set(wanted_ids)
            run = SequenceRun(key, [t["id"] for t in frames], {i for i, t in enumerate(frames) if t["id"] in wanted})
            self._runs[slot] = run
            while len(self._runs) > s.video_cache:
                self._runs.popitem(last=False)
        self.count("dcsam_video_propagations_total", kind="sequence")
        # not a daemon: the interpreter lets it finish instead of killing it inside the model
        thread = threading.Thread(
            target=self._propagate_sequence,
            name=f"dcsam-video-{video}"[:60],
            args=(run, project_id, cfg, image_name, video, frames, anchors, controls, pe, load, vs),
        )
        thread.start()
        return run

    def _propagate_sequence(
        self,
        run: SequenceRun,
        project_id,
        cfg,
        image_name,
        video,
        frames,
        anchors,
        controls,
        pe,
        load,
        vs: VideoSegmenter,
    ) -> None:
        value_key = cfg.images[image_name].value_key
        loaders = [lambda t=t: load(t, value_key) for t in frames]
        source = TaskFrames(loaders, str(video), self._pool)
        wanted = [(c, lab) for c in controls for lab in c.labels]
        keys = {example_key(c.name, lab): (c, lab) for c, lab in wanted}
        t0, error = time.monotonic(), None
        try:
            for j, anchor, lo, hi in segments(anchors, len(frames), run.first_wanted):
                masks = self._anchor_masks(anchors[j][1], controls, project_id) if anchors else {}
                labels = [k for k in keys if k in masks or k in pe.encoded]
                if not labels:
                    for t in frames[lo:hi]:
                        run.put(t["id"], FrameOutcome([], "no examples and no annotated frame for this video's labels"))
                    continue
                try:
                    iterator = vs.segment(
                        SubFrames(source, lo, hi), masks=masks, frame_index=anchor - lo, labels=labels
                    )
                    while not run.cancelled:
                        res = self._step(project_id, iterator, run.key[0])
                        if res is None:
                            break
                        task = frames[lo + res.index]
                        if res.error:
                            run.put(task["id"], FrameOutcome([], res.error))
                            continue
                        regions = mask_regions(
                            res.masks, res.scores, [(k, *keys[k]) for k in labels], self.settings.min_score
                        )
                        run.put(task["id"], FrameOutcome(regions))
                        self.count("dcsam_video_frames_total", kind="sequence")
                except (DcsamError, MediaError, LabelStudioError, ModelChanged) as exc:
                    log.error("project %s, video %r, frames %d..%d: %s", project_id, video, lo, hi - 1, exc)
                    run.cancelled = run.cancelled or isinstance(exc, ModelChanged)
                    for t in frames[lo:hi]:
                        if t["id"] not in run.outcomes:
                            run.put(t["id"], FrameOutcome([], f"video {video!r}: {exc}"))
                if run.cancelled:
                    error = "superseded by a newer propagation"
                    break
        except Exception as exc:  # a bug must not leave requests waiting
            log.exception("project %s, video %r: propagation failed", project_id, video)
            error = f"{type(exc).__name__}: {exc}"
        finally:
            source.close()
            run.finish(error)
        log.info(
            "project %s, video %r: %d frames propagated from %d annotated frame(s) in %.1f s",
            project_id,
            video,
            len(frames),
            len(anchors),
            time.monotonic() - t0,
        )

    def _anchor_masks(self, annotation: dict, controls: list[ControlTag], project_id: int) -> dict[str, np.ndarray]:
        masks = {}
        for control in controls:
            for lab in control.labels:
                try:
                    m = annotation_mask(control, annotation.get("result") or [], lab)
                except RegionError as exc:
                    log.error("project %s: annotation %s: %s", project_id, annotation.get("id"), exc)
                    continue
                if m is not None and m.any():
                    masks[example_key(control.name, lab)] = m
        return masks

    # -- 2. <Video> tasks ---------------------------------------------------------------------------
    def start_video_task(
        self,
        project_id: int,
        task: dict,
        cfg: LabelConfig,
        video_name: str,
        controls: list[ControlTag],
        access: LabelStudioAccess | None,
        pe,
        version: str,
    ) -> TrackRun:
        """The task's track run: the cached one while its inputs are unchanged (finished or still running),
        else a new one started in the background. A run that ended in an error is not reused, so a
        transient failure (a download, Label Studio) is retried by the next request."""
        tag = cfg.videos[video_name]
        data = task.get("data") if isinstance(task.get("data"), dict) else {}
        if tag.value_key not in data:
            return TrackRun(()).finish(FrameOutcome([], f"task {task.get('id')}: data has no {tag.value_key!r} field"))
        vs = self.video_segmenter(pe.segmenter)
        if vs is None:
            return TrackRun(()).finish(FrameOutcome([], f"video propagation unavailable: {self._unsupported}"))
        annotation = self._task_annotation(task, access)
        key = (
            version,
            (pe.rev_seen, tuple(sorted(pe.fingerprints.items()))),
            str(data[tag.value_key]),
            tuple((c.name, c.labels) for c in controls),
            (annotation["id"], str(annotation.get("updated_at"))) if annotation else None,
        )
        slot = (project_id, video_name, task.get("id"))
        with self._lock:
            run = self._tracks.get(slot)
            if run is not None and run.key == key and not run.failed:
                self._tracks.move_to_end(slot)
                return run
            run = TrackRun(key)
            self._tracks[slot] = run
            finished = [k for k, r in self._tracks.items() if r.done.is_set()]  # oldest first; running ones stay
            for k in finished[: max(0, len(self._tracks) - TRACKS_KEPT)]:
                del self._tracks[k]
        self._track_pool.submit(self._run_track, run, project_id, task, tag, controls, access, pe, vs, annotation)
        return run

    def _run_track(self, run: TrackRun, *args) -> None:
        try:
            outcome = self._track(run.key[0], *args)
        except Exception as exc:  # a bug must not leave requests waiting
            log.exception("task %s: track failed", args[1].get("id"))
            outcome = FrameOutcome([], f"{type(exc).__name__}: {exc}")
        run.finish(outcome)

    def _track(
        self,
        version: str,
        project_id: int,
        task: dict,
        tag: VideoTag,
        controls: list[ControlTag],
        access: LabelStudioAccess | None,
        pe,
        vs: VideoSegmenter,
        annotation: dict | None,
    ) -> FrameOutcome:
        data = task["data"]
        t0 = time.monotonic()
        try:
            fetch = partial(
                fetch_media,
                data[tag.value_key],
                task.get("id"),
                access=access,
                max_bytes=self.settings.max_download_bytes,
                local_files_root=self.settings.local_files_root,
            )
            with downloaded_video(fetch, task.get("id")) as source:
                masks, anchor = {}, 0
                if annotation is not None:
                    masks, anchor = self._track_anchor(project_id, annotation, controls, source, pe)
                keys = {example_key(c.name, lab): (c, lab) for c in controls for lab in c.labels}
                labels = [k for k in keys if k in masks or k in pe.encoded]
                if not labels:
                    return FrameOutcome([], "no examples and no annotated keyframe for this task's labels")
                boxes = {k: [None] * len(source) for k in labels}
                scores: dict[str, list[float]] = {k: [] for k in labels}
                iterator = vs.segment(source, masks=masks, frame_index=anchor, labels=labels)
                n = 0
                while True:
                    res = self._step(project_id, iterator, version)
                    if res is None:
                        break
                    n = max(n, res.index + 1)
                    for k in labels:
                        mask = res.masks.get(k)
                        if mask is not None and res.index < len(source):
                            boxes[k][res.index] = mask_box(mask)
                            if boxes[k][res.index] is not None:
                                scores[k].append(float(res.scores.get(k, 0.0)))
                    self.count("dcsam_video_frames_total", kind="video")
        except (DcsamError, MediaError, LabelStudioError, ModelChanged) as exc:
            return FrameOutcome([], f"task {task.get('id')}: {exc}")
        self.count("dcsam_video_propagations_total", kind="video")
        regions = []
        for k in labels:
            control, lab = keys[k]
            score = float(np.mean(scores[k])) if scores[k] else 0.0
            if score < self.settings.min_score:
                continue
            region = VideoRectangleOutput(control, self.settings.video_keyframe_tolerance).region(
                boxes[k][:n], lab, score, tag.fps(data)
            )
            if region is not None:
                regions.append(region)
        log.info(
            "project %s, task %s: <Video> tracked over %d frames from %s in %.1f s: %d track(s)",
            project_id,
            task.get("id"),
            n,
            "its keyframe" if masks else "the examples",
            time.monotonic() - t0,
            len(regions),
        )
        return FrameOutcome(regions)

    def _task_annotation(self, task: dict, access: LabelStudioAccess | None) -> dict | None:
        if "annotations" not in task and access is not None and isinstance(task.get("id"), int):
            try:  # Label Studio's /predict payload may leave them out
                task = access.api_get(f"/api/tasks/{task['id']}")
            except LabelStudioError as exc:
                log.warning("task %s: cannot read its annotations (%s); predicting from the examples", task["id"], exc)
                return None
        return latest_accepted(task)

    def _track_anchor(self, project_id, annotation, controls, source: FrameSource, pe) -> tuple[dict, int]:
        """Masks of the annotation's first keyframe (the earliest one, for every label drawn on that frame)."""
        firsts = {}
        for control in controls:
            out = VideoRectangleOutput(control)
            for lab in control.labels:
                fb = out.first_box(annotation.get("result") or [], lab)
                if fb is not None:
                    firsts[example_key(control.name, lab)] = fb
        if not firsts:
            return {}, 0
        frame_index = min(min(f for f, _ in firsts.values()), len(source) - 1)
        frame = source.read(frame_index)
        masks = {}
        with self.model.inference_lock:
            self.prepare(project_id)
            for k, (f, box) in firsts.items():
                if f == frame_index or min(f, len(source) - 1) == frame_index:
                    masks[k] = box_to_mask(pe.segmenter, frame, box, k)
        return masks, frame_index
