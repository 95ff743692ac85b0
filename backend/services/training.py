"""Fine-tuning from the project's accepted annotations, as a background job.

Triggered by ``START_TRAINING`` on ``/webhook`` (Label Studio's "Start Training", ``POST /api/ml/{id}/train``),
by ``POST /jobs/train``, and after ``DCSAM_TRAIN_EVERY`` new accepted annotations (debounced by
``DCSAM_TRAIN_DEBOUNCE_S``).

1. Every task's latest accepted (submitted, not cancelled) annotation gives one labelled image per
   (mask control, label) it contains.
2. The cross-validated decision is :func:`dcsam.training.crossval.cross_validate`: the tasks go into
   ``DCSAM_TRAIN_FOLDS`` (4) cross-validation folds, stratified by label. Episodes
   share a label and their images are different tasks: groups of up to K+1 training tasks
   (K = ``DCSAM_EXAMPLES_PER_LABEL``), K supports and the rest queries.
3. For each fold: validation IoU of each held-out (task, label) with the serving weights (examples: the
   label's latest K training tasks, as when serving), then the engine's trainable part (lite: its head
   and matching memory; dcsam: the prompt generator, or on the cold start a project prompter) is
   fine-tuned from the serving weights on the other folds and scored again, once per step count the
   engine offers (lite: 0 steps, i.e. memory and single-object rule only, and its default;
   ``DCSAM_TRAIN_STEPS`` fixes one). Every run, the final one
   too, stops early once its smoothed loss has not improved for ``DCSAM_TRAIN_PATIENCE`` (30) steps
   (figures ``steps_run``), so the decision validates the procedure that makes the candidate. Every annotated task is
   validated once, so the decision does not hang on which few tasks a single hold-out split picked.
   In a project of frame-sequence tasks (every annotated task is a frame of a video, see
   :mod:`backend.services.video`), the fine-tuning data are mask tubes instead: each video's annotated frames of
   a label, in frame order (``dcsam.video.tubes``; DC-SAM trains its prompt generator through SAM 2's
   memory on them, and so does its cold start's project prompter on SAM 2; the lite engine pairs frames
   within a tube). Held-out frames are scored as images.
4. Only a better pooled score (by more than ``DCSAM_TRAIN_MIN_GAIN``, default 0) is promoted: the engine
   is fine-tuned once more on every annotation with the best step count and written as a new checkpoint
   with a new ``model_version``. The figures are kept in the job record either way.

Training runs beside serving. It fine-tunes :meth:`~backend.services.runtime.ModelRuntime.training_engine`,
a twin of the serving engine (its own trainable part, the frozen networks shared), never the serving engine,
and never holds the inference lock: ``/predict`` and the smart tools keep answering. Between its steps and
scored images it gives way to serving (:meth:`~backend.services.runtime.ModelRuntime.yield_to_serving`).
Each annotated image's frozen features are computed once per job (:func:`dcsam.training.twin.cached_features`),
not once per fold and step choice. A promoted version reaches serving only through the version registry:
the next request's ``prepare`` loads it under the inference lock, between two requests. A failed or
cancelled run leaves the serving model as it was: its weights only ever lived in the twin.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from dcsam.masks import resize_mask
from dcsam.training.crossval import CrossValError, LabelledTask, NotEnoughData, cross_validate, validation_ious
from dcsam.training.loop import EarlyStop
from dcsam.training.twin import cached_features, warm_features

from ..labelstudio.annotations import control_labels, latest_accepted
from ..labelstudio.media import LabelStudioError, MediaError, decode_image
from ..labelstudio.outputs import RegionError, annotation_mask
from .deps import JobDeps
from .examples import example_key
from .jobs import JobContext, JobError
from .video import sequence_id

log = logging.getLogger(__name__)


def collect(deps: JobDeps, project_id: int, cfg, access, ctx: JobContext) -> list[LabelledTask]:
    """One labelled image per (task, control, label) from each task's latest accepted annotation."""
    wanted: list[tuple[int, str, str, object, str, list]] = []  # task, key, ref, control, updated, result
    for task in access.annotated_tasks(project_id):
        ann = latest_accepted(task)
        if ann is None:
            continue
        result = list(ann.get("result") or [])
        frame_of = sequence_id(task, deps.settings.video_key, deps.settings.frame_key)
        for control in cfg.mask_controls:
            ref = (task.get("data") or {}).get(cfg.images[control.to_name].value_key)
            for label in sorted(control_labels(result, control)):
                wanted.append(
                    (
                        int(task["id"]),
                        example_key(control.name, label),
                        ref,
                        control,
                        label,
                        result,
                        str(ann.get("updated_at") or ""),
                        frame_of,
                    )
                )
    ctx.check_cancel()
    images: dict[int, np.ndarray | None] = {}

    def load(task_id: int, ref):
        try:
            return task_id, decode_image(access.fetch(ref, task_id), deps.settings.max_image_pixels, f"task {task_id}")
        except (MediaError, LabelStudioError) as exc:
            log.error("project %s: task %s cannot be used for training: %s", project_id, task_id, exc)
            return task_id, None

    refs = {w[0]: w[2] for w in wanted}
    with ThreadPoolExecutor(max_workers=deps.settings.preannotate_io_threads) as pool:
        images = dict(pool.map(lambda kv: load(*kv), refs.items()))
    items = []
    for task_id, key, _ref, control, label, result, updated, frame_of in wanted:
        image = images.get(task_id)
        if image is None:
            continue
        try:
            mask = annotation_mask(control, result, label)
        except RegionError as exc:
            log.error("project %s: task %s, label %r: unusable region: %s", project_id, task_id, label, exc)
            continue
        if mask is None or not mask.any():
            continue
        if mask.shape != image.shape[:2]:
            mask = resize_mask(mask, image.shape[0], image.shape[1])
        items.append(LabelledTask(task_id, key, image, mask, updated, frame_of))
    return items


def run_train(deps: JobDeps, ctx: JobContext) -> tuple[str, str, dict]:
    project_id, access = deps.project_access(ctx, "training")
    s = deps.settings
    deps.projects.reset_annotation_counter(project_id)
    cfg = deps.project_config(project_id, access)
    t0 = time.monotonic()
    ctx.report(message="collecting accepted annotations", force=True)
    items = collect(deps, project_id, cfg, access, ctx)
    parent = deps.version_for(project_id)
    runtime = deps.runtime
    # the serving engine is never touched: training runs on its twin, beside serving (module docstring)
    engine = runtime.training_engine()
    serving_state = deps.versions.trainable_state(parent)
    start_state = runtime.base_state if serving_state is None else serving_state

    def reset_twin() -> None:
        engine.load_trainable_state_dict(start_state or {})

    def check() -> None:  # between steps and scored images: cancel, else let waiting requests run first
        ctx.check_cancel()
        runtime.yield_to_serving()

    try:
        with cached_features(engine) as cache:
            ctx.report(message="encoding the annotated images", force=True)
            warm_features(engine, [(it.image, it.mask) for it in items], between=check)
            result = cross_validate(
                engine,
                runtime.base().config,
                items,
                seed=project_id,
                folds=s.train_folds,
                k=s.examples_per_label,
                reset_weights=reset_twin,
                step_choices=[s.train_steps] if s.train_steps is not None else None,
                min_gain=s.train_min_gain,
                report=ctx.report,
                check_cancel=check,
                extra_figures={"parent_version": parent},
                score=validation_ious,
                early_stop=EarlyStop(patience=s.train_patience) if s.train_patience else None,
            )
    except NotEnoughData as exc:
        raise JobError(f"project {project_id}: {exc}") from exc
    except CrossValError as exc:
        raise JobError(str(exc)) from exc
    finally:
        reset_twin()  # drop the run's weights (memory); the serving engine never held them
    figures = result.figures
    figures["seconds"] = round(time.monotonic() - t0, 2)
    figures["feature_cache"] = dict(cache)
    if not result.promote or result.candidate_state is None:
        figures["promoted"] = False
        return (
            "done",
            (
                f"not promoted: cross-validated mIoU {figures['val_miou_before']:.4f} -> "
                f"{figures['val_miou_after']:.4f} (a gain of more than {s.train_min_gain:g} is needed); "
                f"still serving {parent}"
            ),
            figures,
        )
    ctx.check_cancel()
    version = deps.versions.promote(project_id, result.candidate_state, figures, parent)
    figures["promoted"] = True
    figures["new_version"] = version
    msg = (
        f"promoted {version}: cross-validated mIoU {figures['val_miou_before']:.4f} -> {figures['val_miou_after']:.4f}"
    )
    if s.preannotate_after_train:
        job = deps.submit_preannotate(project_id, reason=f"after training job {ctx.id}")
        figures["preannotate_job"] = job
        msg += f"; pre-annotation job {job} queued"
    return "done", msg, figures
