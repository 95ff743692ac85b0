"""Fine-tuning from the project's accepted annotations, as a background job.

Triggered by ``START_TRAINING`` on ``/webhook`` (Label Studio's "Start Training", ``POST /api/ml/{id}/train``),
by ``POST /jobs/train``, and after ``DCSAM_TRAIN_EVERY`` new accepted annotations (debounced by
``DCSAM_TRAIN_DEBOUNCE_S``).

1. Every task's latest accepted (submitted, not cancelled) annotation gives one labelled image per
   (mask control, label) it contains.
2. The tasks go into ``DCSAM_TRAIN_FOLDS`` (4) cross-validation folds, stratified by label. Episodes
   share a label and their images are different tasks: groups of up to K+1 training tasks
   (K = ``DCSAM_EXAMPLES_PER_LABEL``), K supports and the rest queries.
3. For each fold: validation IoU of each held-out (task, label) with the serving weights (examples: the
   label's latest K training tasks, as when serving), then the engine's trainable part (lite: its head
   and matching memory; dcsam: the prompt generator) is fine-tuned from the serving weights on the other
   folds and scored again, once per step count the engine offers (lite: 0 steps, i.e. memory and
   single-object rule only, and its default; ``DCSAM_TRAIN_STEPS`` fixes one). Every annotated task is
   validated once, so the decision does not hang on which few tasks a single hold-out split picked.
   In a project of frame-sequence tasks (every annotated task is a frame of a video, see
   :mod:`backend.services.video`), the fine-tuning data are mask tubes instead: each video's annotated frames of
   a label, in frame order (``dcsam.video.tubes``; DC-SAM trains its prompt generator through SAM 2's
   memory on them, the lite engine pairs frames within a tube).
4. Only a better pooled score (by more than ``DCSAM_TRAIN_MIN_GAIN``, default 0) is promoted: the engine
   is fine-tuned once more on every annotation with the best step count and written as a new checkpoint
   with a new ``model_version``. The figures are kept in the job record either way.

All of it holds the inference lock (one writer to the accelerator); the engine's weights are marked stale
afterwards, so the next request reloads the project's active version: a failed or cancelled run never
leaves its weights in the serving model.
"""

from __future__ import annotations

import hashlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from dcsam.api import InContextSegmenter
from dcsam.checkpoints import clone_state
from dcsam.engines.base import Episode, LabelledImage
from dcsam.errors import DcsamError
from dcsam.video.tubes import MaskTube, finetune_on_tubes

from .examples import example_key
from .jobs import JobContext, JobError
from ..labelstudio.media import LabelStudioError, MediaError, decode_image
from ..labelstudio.annotations import control_labels, latest_accepted
from ..labelstudio.outputs import RegionError, annotation_mask
from .deps import JobDeps
from .video import sequence_id

log = logging.getLogger(__name__)


@dataclass
class Item:
    task_id: int
    key: str
    image: np.ndarray
    mask: np.ndarray
    updated_at: str
    frame_of: tuple[str, int] | None = None  # (video id, frame number) of a frame-sequence task


def _task_rank(project_id: int, task_id: int) -> str:
    return hashlib.sha1(f"{project_id}:{task_id}".encode()).hexdigest()


def collect(deps: JobDeps, project_id: int, cfg, access, ctx: JobContext) -> list[Item]:
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
                wanted.append((int(task["id"]), example_key(control.name, label), ref, control, label, result,
                               str(ann.get("updated_at") or ""), frame_of))
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
            import cv2

            mask = cv2.resize(mask.astype(np.uint8), (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST) > 0
        items.append(Item(task_id, key, image, mask, updated, frame_of))
    return items


def assign_folds(project_id: int, items: list[Item], folds: int) -> dict[int, int | None]:
    """Cross-validation folds by task, stratified by label: {task id: fold, or None = always trained on}.

    A task is wholly in one fold. Each label's tasks are spread evenly over the folds, and a task is
    held out only where every one of its labels keeps at least two training tasks in that fold (a
    label with fewer than three tasks is never held out). The order is a hash of (project, task):
    deterministic, and unrelated to upload order.
    """
    by_task: dict[int, set[str]] = {}
    for it in items:
        by_task.setdefault(it.task_id, set()).add(it.key)
    order = sorted(by_task, key=lambda t: _task_rank(project_id, t))
    tasks_of: dict[str, int] = {}
    for keys in by_task.values():
        for k in keys:
            tasks_of[k] = tasks_of.get(k, 0) + 1
    held: dict[tuple[str, int], int] = {}
    out: dict[int, int | None] = {}
    for task_id in order:
        keys = by_task[task_id]
        fits = [f for f in range(folds) if all(tasks_of[k] - held.get((k, f), 0) - 1 >= 2 for k in keys)]
        fold = min(fits, key=lambda f: (sum(held.get((k, f), 0) for k in keys), f)) if fits else None
        out[task_id] = fold
        if fold is not None:
            for k in keys:
                held[(k, fold)] = held.get((k, fold), 0) + 1
    return out


def split(items: list[Item], fold_of: dict[int, int | None], fold: int) -> tuple[list[Item], list[Item]]:
    """(train, validation) items for one fold."""
    return ([it for it in items if fold_of[it.task_id] != fold], [it for it in items if fold_of[it.task_id] == fold])


def episodes(project_id: int, train: list[Item], k: int) -> list[Episode]:
    by_key: dict[str, list[Item]] = {}
    for it in train:
        by_key.setdefault(it.key, []).append(it)
    out = []
    for key, its in sorted(by_key.items()):
        if len(its) < 2:
            continue
        its = sorted(its, key=lambda i: _task_rank(project_id, i.task_id))
        size = k + 1
        groups = [its[i:i + size] for i in range(0, len(its), size)]
        if len(groups) > 1 and len(groups[-1]) < 2:
            groups[-2].extend(groups.pop())
        for g in groups:
            n_support = max(1, min(k, len(g) - 1))
            out.append(Episode(support=[LabelledImage(i.image, i.mask) for i in g[:n_support]],
                               query=[LabelledImage(i.image, i.mask) for i in g[n_support:]], label=key))
    return out


def tubes(train: list[Item]) -> list[MaskTube]:
    """Mask tubes when every item is a frame of a video: per (video, label), its frames in order; else []."""
    if not train or any(it.frame_of is None for it in train):
        return []
    by: dict[tuple[str, str], list[Item]] = {}
    for it in train:
        by.setdefault((it.frame_of[0], it.key), []).append(it)
    return [MaskTube(key, [LabelledImage(i.image, i.mask) for i in sorted(its, key=lambda i: i.frame_of[1])])
            for (_, key), its in sorted(by.items())]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def validation_ious(deps: JobDeps, train: list[Item], val: list[Item], k: int, ctx: JobContext) -> list[float]:
    """IoU of each validation (task, label) pair; its examples are the label's latest K training tasks.

    Call with the inference lock held and the weights to score in the engine.
    """
    seg = InContextSegmenter(deps.runtime.base().engine, deps.runtime.base().config)
    by_key: dict[str, list[Item]] = {}
    for it in train:
        by_key.setdefault(it.key, []).append(it)
    scores = []
    for key in sorted({it.key for it in val}):
        support = sorted(by_key.get(key, []), key=lambda i: (i.updated_at, i.task_id), reverse=True)[:k]
        if not support:
            continue
        seg.clear_examples()
        seg.add_examples([i.image for i in support], [i.mask for i in support], label=key)
        queries = [it for it in val if it.key == key]
        preds = seg.predict([q.image for q in queries], labels=[key])
        for q, p in zip(queries, preds):
            ctx.check_cancel()
            mask = p.masks.get(key)
            scores.append(_iou(mask, q.mask) if mask is not None else 0.0)
    return scores


def _steps_name(steps: int | None) -> str:
    return "default steps" if steps is None else f"{steps} steps"


def run_train(deps: JobDeps, ctx: JobContext) -> tuple[str, str, dict]:
    project_id, access = deps.project_access(ctx, "training")
    s = deps.settings
    k = s.examples_per_label
    deps.projects.reset_annotation_counter(project_id)
    cfg = deps.project_config(project_id, access)
    t0 = time.monotonic()
    ctx.report(message="collecting accepted annotations", force=True)
    items = collect(deps, project_id, cfg, access, ctx)
    fold_of = assign_folds(project_id, items, s.train_folds)
    folds = [f for f in range(s.train_folds) if any(fold == f for fold in fold_of.values())]
    all_episodes = episodes(project_id, items, k)
    n_tasks = len(fold_of)
    figures: dict = {"annotated_tasks": n_tasks, "labels": len({i.key for i in items}), "folds": len(folds),
                     "val_tasks": sum(fold is not None for fold in fold_of.values()), "episodes": len(all_episodes)}
    n_tubes = len(tubes(items))
    if n_tubes:
        figures["tubes"] = n_tubes  # a frame-sequence project: mask-tube fine-tuning
    if not folds:
        raise JobError(f"project {project_id}: not enough accepted annotations to fine-tune and validate "
                       f"({n_tasks} usable task(s)): a label needs at least 3 annotated tasks (2 to train, 1 to "
                       f"validate); {figures}")
    parent = deps.version_for(project_id)
    figures["parent_version"] = parent
    engine = deps.runtime.base().engine
    # step counts to compare (the engine's choices, or the one DCSAM_TRAIN_STEPS sets)
    choices = [s.train_steps] if s.train_steps is not None else engine.finetune_step_choices()
    runs = len(folds) * len(choices) + 1  # each choice fine-tuned once per fold, then the kept one on everything
    done_runs = 0
    candidate = None
    with deps.runtime.inference_lock:
        try:
            def finetune(train: list[Item], steps: int | None) -> dict:
                nonlocal done_runs
                deps.prepare(project_id)  # every run starts from the serving weights
                deps.runtime.forget_weights()  # from here on the engine holds a candidate's weights

                def progress(step: int, total: int, figs: dict) -> None:
                    ctx.check_cancel()
                    ctx.report(figures={**figures, "run": done_runs + 1, "step": step, "steps": total,
                                        "loss": figs.get("loss")})

                try:
                    video_tubes = tubes(train)
                    if video_tubes:
                        out = finetune_on_tubes(InContextSegmenter(engine, deps.runtime.base().config), video_tubes,
                                                steps=steps, progress=progress)
                    else:
                        out = engine.finetune(episodes(project_id, train, k), steps=steps, progress=progress)
                except NotImplementedError as exc:
                    raise JobError(f"{exc}: this engine has no trainable part to fine-tune") from exc
                except DcsamError as exc:
                    raise JobError(f"fine-tuning refused: {exc}") from exc
                done_runs += 1
                ctx.check_cancel()
                ctx.report(done=done_runs, total=runs, force=True)
                return out

            ctx.report(done=0, total=runs, force=True)
            before: list[float] = []
            after: dict[int, list[float]] = {i: [] for i in range(len(choices))}
            per_fold = []
            for n, fold in enumerate(folds):
                train, val = split(items, fold_of, fold)
                ctx.report(message=f"fold {n + 1}/{len(folds)}: scoring the serving model", force=True)
                deps.prepare(project_id)
                b = validation_ious(deps, train, val, k, ctx)
                before += b
                row = {"val_tasks": len({i.task_id for i in val}), "before": round(float(np.mean(b)), 4) if b else None}
                for i, steps in enumerate(choices):
                    ctx.report(message=f"fold {n + 1}/{len(folds)}: fine-tuning ({_steps_name(steps)})", force=True)
                    finetune(train, steps)
                    a = validation_ious(deps, train, val, k, ctx)
                    after[i] += a
                    row[_steps_name(steps)] = round(float(np.mean(a)), 4) if a else None
                per_fold.append(row)
            if not before:
                raise JobError("no validation pair: every validation label lacks training examples")
            scores = {i: float(np.mean(v)) for i, v in after.items()}
            best = max(scores, key=lambda i: (scores[i], -i))
            figures.update(val_pairs=len(before), val_miou_before=round(float(np.mean(before)), 4),
                           val_miou_after=round(scores[best], 4), chosen_steps=_steps_name(choices[best]),
                           choices={_steps_name(c): round(scores[i], 4) for i, c in enumerate(choices)},
                           per_fold=per_fold, min_gain=s.train_min_gain)
            if scores[best] - float(np.mean(before)) > s.train_min_gain:
                ctx.report(figures=figures, message="fine-tuning on every accepted annotation", force=True)
                train_figs = finetune(items, choices[best])
                figures["train"] = {key: v for key, v in (train_figs or {}).items() if not isinstance(v, (dict, list))}
                candidate = clone_state(engine.trainable_state_dict())
        finally:
            deps.runtime.forget_weights()
    figures["seconds"] = round(time.monotonic() - t0, 2)
    if candidate is None:
        figures["promoted"] = False
        return "done", (f"not promoted: cross-validated mIoU {figures['val_miou_before']:.4f} -> "
                        f"{figures['val_miou_after']:.4f} (a gain of more than {s.train_min_gain:g} is needed); "
                        f"still serving {parent}"), figures
    ctx.check_cancel()
    version = deps.versions.promote(project_id, candidate, figures, parent)
    figures["promoted"] = True
    figures["new_version"] = version
    msg = (f"promoted {version}: cross-validated mIoU {figures['val_miou_before']:.4f} -> "
           f"{figures['val_miou_after']:.4f}")
    if s.preannotate_after_train:
        job = deps.submit_preannotate(project_id, reason=f"after training job {ctx.id}")
        figures["preannotate_job"] = job
        msg += f"; pre-annotation job {job} queued"
    return "done", msg, figures
