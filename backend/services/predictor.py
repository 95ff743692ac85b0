"""/predict: batch pre-annotation from the project's examples, and interactive refinement from a context.

Protocol handling only: every model call goes through ``dcsam.api.InContextSegmenter`` (and the
refinement entry point); media and outputs live in :mod:`backend.labelstudio.media` and
:mod:`backend.labelstudio.outputs`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from dcsam.errors import DcsamError

from ..labelstudio.labelconfig import ControlTag, LabelConfig
from ..labelstudio.media import LabelStudioAccess, LabelStudioError, MediaError, decode_image, fetch_media
from ..labelstudio.outputs import mask_regions, output_for, region_labels
from ..settings import BackendSettings
from .examples import ExampleManager, example_key
from .runtime import ModelRuntime
from .video import PENDING, VideoPredictor, sequence_id

log = logging.getLogger(__name__)


class PromptError(ValueError):
    """Interactive prompts this project's label config cannot answer (the request is refused)."""


@dataclass
class TaskOutcome:
    prediction: dict
    error: str | None = None  # set: the task was not predicted (no examples, media, model, a pending track)


def empty_prediction(version: str) -> dict:
    return {"result": [], "score": 0.0, "model_version": version}


def answer(outcome: TaskOutcome) -> dict | list:
    """A task's element of a /predict answer: its prediction, or ``[]`` (no prediction) when it could not be
    predicted. Label Studio stores every prediction it gets and never asks again for a task holding one of the
    current model_version, so an empty prediction stored for a missing example, a failed download or a track
    still running would stick; with ``[]`` it stores nothing and asks again on the next task open or Retrieve
    Predictions (LS 1.23 ``MLBackend._get_predictions_from_ml_backend``: an element may be a list of predictions)."""
    return outcome.prediction if outcome.error is None else []


class Predictor:
    def __init__(
        self,
        settings: BackendSettings,
        model: ModelRuntime,
        examples: ExampleManager,
        *,
        version_for: Callable[[int | None], str],
        prepare: Callable[[int | None], str],
        on_task_error: Callable[[str], None],
        video: VideoPredictor | None = None,
    ):
        """``version_for(project)`` is the project's model_version; ``prepare(project)``, run under the inference
        lock before each model call, puts the project's fine-tuned weights into the engine (see
        :mod:`backend.services.versions`) and returns their version, which labels what that call predicts;
        ``on_task_error(kind)`` counts a task that got no prediction."""
        self.model = model
        self.examples = examples
        self.version_for = version_for
        self.prepare = prepare
        self.batch_size = max(1, settings.batch_size)
        self.min_score = settings.min_score
        self.max_pixels = settings.max_image_pixels
        self.max_download_bytes = settings.max_download_bytes
        self.local_files_root = settings.local_files_root
        self.on_task_error = on_task_error
        self.video = video  # frame-sequence and <Video> tasks (None: every task is a single image)

    # -- media -------------------------------------------------------------------------------
    def _load(self, task: dict, key: str, access: LabelStudioAccess | None) -> np.ndarray:
        data = task.get("data")
        if not isinstance(data, dict) or key not in data:
            raise MediaError(f"task {task.get('id')}: data has no {key!r} field")
        raw = fetch_media(
            data[key],
            task.get("id"),
            access=access,
            max_bytes=self.max_download_bytes,
            local_files_root=self.local_files_root,
        )
        return decode_image(raw, self.max_pixels, f"task {task.get('id')}")

    # -- batch -------------------------------------------------------------------------------
    def predict_tasks(
        self, project_id: int | None, tasks: list[dict], cfg: LabelConfig, access: LabelStudioAccess | None
    ) -> list[dict | list]:
        """One element per task, in order (see :func:`answer`): a task that could not be predicted gets ``[]``."""
        return [answer(o) for o in self.predict_outcomes(project_id, tasks, cfg, access)]

    def plan(
        self,
        project_id: int,
        cfg: LabelConfig,
        access: LabelStudioAccess | None,
    ) -> tuple[object, dict[str, list[tuple[ControlTag, str, str]]]]:
        """The project's examples and, per image (or video) tag, the (control, label, key) that have examples."""
        pe = self.examples.ensure(project_id, cfg, access)
        keys = set(pe.keys())
        plan: dict[str, list[tuple[ControlTag, str, str]]] = {}
        for control in cfg.label_controls:
            for label in control.labels:
                key = example_key(control.name, label)
                if key in keys:
                    plan.setdefault(control.to_name, []).append((control, label, key))
        return pe, plan

    def load_many(
        self, tasks: list[dict], value_keys: list[str], access: LabelStudioAccess | None, pool: ThreadPoolExecutor
    ) -> dict[tuple[int, str], tuple[np.ndarray | None, str | None]]:
        """Download and decode every task's image(s) with ``pool``: {(index, value key): (image, error)}.

        Frame-sequence tasks are left out: their video's propagation reads its frames itself."""
        futures = {
            (i, key): pool.submit(self._try_load, task, key, access)
            for i, task in enumerate(tasks)
            for key in value_keys
            if not self._is_frame(task)
        }
        return {k: f.result() for k, f in futures.items()}

    def predict_outcomes(
        self,
        project_id: int | None,
        tasks: list[dict],
        cfg: LabelConfig,
        access: LabelStudioAccess | None,
        *,
        preloaded: dict | None = None,
        planned: tuple | None = None,
        video_wait_s: float | None = None,
        sequence_wait_s: float | None = None,
    ) -> list[TaskOutcome]:
        """Each task's prediction and error (None when it was predicted). ``<Video>`` tasks' tracks are waited
        for at most ``video_wait_s`` seconds, then they get the PENDING error; frame-sequence frames at most
        ``sequence_wait_s`` seconds (None: until done, as pre-annotation jobs do)."""
        version = self.version_for(project_id)
        results = [TaskOutcome(empty_prediction(version)) for _ in tasks]
        if project_id is None:
            log.error("/predict without a project id: cannot find examples; no prediction for %d task(s)", len(tasks))
            for o in results:
                o.error = "no project id"
            return results
        pe, plan = planned or self.plan(project_id, cfg, access)
        if not plan:
            labels = sorted({lab for c in cfg.label_controls for lab in c.labels})
            log.warning(
                "project %s has no accepted annotation with any of the labels %s yet: no prediction for %d "
                "task(s). Annotate one image (and submit it), then open the task or retrieve predictions again.",
                project_id,
                labels,
                len(tasks),
            )
            for o in results:
                o.error = "no examples"
            return results
        for image_name, wanted in plan.items():
            if image_name in cfg.videos:
                controls = [c for c, _, _ in wanted]
                self._predict_videos(project_id, tasks, cfg, image_name, controls, access, pe, results, video_wait_s)
                continue
            value_key = cfg.images[image_name].value_key
            single = list(range(len(tasks)))
            if self.video is not None and any(self._is_frame(t) for t in tasks):
                framed = self.video.predict_sequences(
                    project_id, tasks, cfg, image_name, access, pe, version, self._load_for(access), sequence_wait_s
                )
                for i, outcome in framed.items():
                    self._record(tasks[i], results[i], outcome.regions, outcome.error)
                single = [i for i in single if i not in framed]
            for start in range(0, len(single), self.batch_size):
                chunk = single[start : start + self.batch_size]
                if preloaded is not None:
                    loaded = [preloaded.get((i, value_key)) or (None, "not downloaded") for i in chunk]
                else:
                    with ThreadPoolExecutor(max_workers=min(4, len(chunk))) as pool:
                        n = len(chunk)
                        loaded = list(
                            pool.map(self._try_load, [tasks[i] for i in chunk], [value_key] * n, [access] * n)
                        )
                ok = [(i, img) for i, (img, err) in zip(chunk, loaded) if img is not None]
                for i, (_img, err) in zip(chunk, loaded):
                    if err:
                        log.error("task %s: no prediction: %s", tasks[i].get("id"), err)
                        self.on_task_error("media")
                        results[i].error = err
                if not ok:
                    continue
                try:
                    with self.model.inference_lock:
                        served = self.prepare(project_id)
                        preds = pe.segmenter.predict([img for _, img in ok], labels=[key for _, _, key in wanted])
                except DcsamError as exc:
                    log.error(
                        "project %s: the model refused tasks %s: %s",
                        project_id,
                        [tasks[i].get("id") for i, _ in ok],
                        exc,
                    )
                    self.on_task_error("model")
                    for i, _ in ok:
                        results[i].error = f"model: {exc}"
                    continue
                for (i, _), pred in zip(ok, preds):
                    if pred.error:
                        log.error("task %s: %s", tasks[i].get("id"), pred.error)
                        self.on_task_error("model")
                        results[i].error = pred.error
                        continue
                    results[i].prediction["model_version"] = served
                    results[i].prediction["result"] += mask_regions(
                        pred.masks,
                        pred.scores,
                        [(key, control, label) for control, label, key in wanted],
                        self.min_score,
                    )
        for pred in (o.prediction for o in results):
            scores = [r["score"] for r in pred["result"] if "score" in r]
            pred["score"] = float(np.mean(scores)) if scores else 0.0
        return results

    def _is_frame(self, task: dict) -> bool:
        return (
            self.video is not None
            and sequence_id(task, self.video.settings.video_key, self.video.settings.frame_key) is not None
        )

    def _load_for(self, access: LabelStudioAccess | None) -> Callable[[dict, str], np.ndarray]:
        return lambda task, key: self._load(task, key, access)

    def _record(self, task: dict, outcome: TaskOutcome, regions: list[dict], error: str | None) -> None:
        if error:
            log.error("task %s: %s", task.get("id"), error)
            self.on_task_error("video")
            outcome.error = error
        outcome.prediction["result"].extend(regions)

    def _predict_videos(
        self,
        project_id: int,
        tasks: list[dict],
        cfg: LabelConfig,
        video_name: str,
        controls: list[ControlTag],
        access: LabelStudioAccess | None,
        pe,
        results: list[TaskOutcome],
        wait_s: float | None,
    ) -> None:
        if self.video is None:
            return
        version = self.version_for(project_id)
        unique = list(dict.fromkeys(controls))
        # every task's track starts first, so that they all run while the request waits, under one deadline
        runs = [
            self.video.start_video_task(project_id, task, cfg, video_name, unique, access, pe, version)
            for task in tasks
        ]
        deadline = None if wait_s is None else time.monotonic() + wait_s
        for task, outcome, run in zip(tasks, results, runs):
            got = run.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if got is None:  # not a failure: Label Studio asks again and gets the cached track
                log.info("task %s: no prediction yet: %s", task.get("id"), PENDING)
                outcome.error = PENDING
                continue
            self._record(task, outcome, got.regions, got.error)

    def _try_load(self, task: dict, value_key: str, access) -> tuple[np.ndarray | None, str | None]:
        try:
            return self._load(task, value_key, access), None
        except (MediaError, LabelStudioError) as exc:
            return None, str(exc)
        except Exception as exc:  # a broken image must not fail the batch
            return None, f"{type(exc).__name__}: {exc}"

    # -- interactive -------------------------------------------------------------------------
    def predict_interactive(
        self, project_id: int | None, task: dict, context: dict, cfg: LabelConfig, access: LabelStudioAccess | None
    ) -> dict:
        """Refine the task's mask with the smart-tool prompts; one region for the target mask control."""
        prompts = [
            r
            for r in (context.get("result") or [])
            if isinstance(r, dict)
            and str(r.get("type", "")).lower() in ("keypointlabels", "keypoint", "rectanglelabels", "rectangle")
        ]
        if not prompts:
            log.info("task %s: interactive context without keypoint / rectangle prompts; nothing to do", task.get("id"))
            return empty_prediction(self.version_for(project_id))
        to_name = prompts[-1].get("to_name")
        label = None
        for region in reversed(prompts):
            labels = region_labels(region, str(region.get("type", "")).lower())
            if labels:
                label = labels[0]
                break
        candidates = [c for c in cfg.mask_controls if c.to_name == to_name] or cfg.mask_controls
        if not candidates:
            raise PromptError(
                "interactive prompts need a mask control (BrushLabels, BitmaskLabels or PolygonLabels) "
                "on an <Image> in the label config"
            )
        target = next((c for c in candidates if label in c.labels), candidates[0])
        if label not in target.labels:
            log.info(
                "interactive label %r is not a label of <%s name=%s>; using %r",
                label,
                target.type,
                target.name,
                target.labels[0],
            )
            label = target.labels[0]
        try:
            image = self._load(task, cfg.images[target.to_name].value_key, access)
        except (MediaError, LabelStudioError) as exc:
            log.error("task %s: interactive prediction impossible: %s", task.get("id"), exc)
            self.on_task_error("media")
            return empty_prediction(self.version_for(project_id))
        height, width = image.shape[:2]
        points, box = [], None
        for region in prompts:
            value = region.get("value") or {}
            try:
                x = float(value["x"]) / 100.0 * width
                y = float(value["y"]) / 100.0 * height
            except (KeyError, TypeError, ValueError):
                log.warning("task %s: ignoring a prompt without x/y: %s", task.get("id"), region.get("id"))
                continue
            kind = str(region.get("type", "")).lower()
            if kind.startswith("rectangle"):
                try:
                    w = float(value.get("width", 0)) / 100.0 * width
                    h = float(value.get("height", 0)) / 100.0 * height
                except (TypeError, ValueError):
                    continue
                box = (x, y, x + w, y + h)
            else:
                positive = region.get("is_positive")
                points.append((x, y, True if positive is None else bool(positive)))
        if not points and box is None:
            return empty_prediction(self.version_for(project_id))
        key = example_key(target.name, label)
        segmenter = None
        if project_id is not None:
            try:
                pe = self.examples.ensure(project_id, cfg, access)
                if key in pe.keys():
                    segmenter = pe.segmenter
            except Exception as exc:  # examples are a bonus here: prompts alone still work
                log.error("project %s: examples unavailable for interactive refinement: %s", project_id, exc)
        if segmenter is None:
            log.info("task %s: no examples for %r; refining from the prompts alone", task.get("id"), label)
            segmenter = self.model.new_segmenter()
        try:
            with self.model.inference_lock:
                version = self.prepare(project_id)
                start, start_score = None, None
                if key in segmenter.labels:
                    pred = segmenter.predict([image], labels=[key])[0]
                    start, start_score = pred.masks.get(key), float(pred.scores.get(key, 1.0))
                # the score is the refined mask's own (the starting mask's when the prompts kept it)
                mask, score = segmenter.refine(image, start, points=points, box=box, label=key, mask_score=start_score)
        except DcsamError as exc:
            log.error("task %s: interactive refinement failed: %s", task.get("id"), exc)
            self.on_task_error("model")
            return empty_prediction(self.version_for(project_id))
        region = output_for(target).region(np.asarray(mask, bool), label, float(score))
        return {
            "result": [region] if region else [],
            "score": float(score) if region else 0.0,
            "model_version": version,
        }
