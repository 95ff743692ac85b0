"""Cross-validated fine-tuning on a project's labelled tasks: folds, episodes, scoring, the decision.

A platform adapter (the Label Studio backend) collects one :class:`LabelledTask` per (task, label) from
its accepted annotations and calls :func:`cross_validate`; everything model-side happens here:

1. The tasks go into ``folds`` cross-validation folds, stratified by label (:func:`assign_folds`).
   Episodes share a label and their images are different tasks: groups of up to K+1 training tasks,
   K supports and the rest queries (:func:`episodes`).
2. For each fold: validation IoU of each held-out (task, label) with the serving weights (examples: the
   label's latest K training tasks, as when serving; :func:`validation_ious`), then the engine's
   trainable part is fine-tuned from the serving weights on the other folds and scored again, once per
   step count in ``step_choices`` (default: the engine's :meth:`~dcsam.engines.base.Engine.finetune_step_choices`).
   Every annotated task is validated once, so the decision does not hang on which few tasks a single
   hold-out split picked. When every task is a frame of a video (``frame_of`` set), the fine-tuning data
   are mask tubes instead (:func:`tubes`, :func:`dcsam.video.tubes.finetune_on_tubes`).
3. Only a better pooled score (by more than ``min_gain``) is promoted: the engine is fine-tuned once
   more on every task with the best step count and its trainable state is returned as the candidate.

The caller holds whatever lock guards the engine, and puts its serving weights back afterwards: the
engine is left holding the last run's weights.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..api import InContextSegmenter
from ..checkpoints import clone_state
from ..config import SegmenterConfig
from ..engines.base import Engine, Episode, LabelledImage, ProgressFn
from ..errors import DcsamError
from ..masks import iou
from ..video.tubes import MaskTube, finetune_on_tubes
from .loop import EarlyStop, early_stopping

__all__ = [
    "CrossValError",
    "CrossValResult",
    "FinetuneRefused",
    "LabelledTask",
    "NoValidationPair",
    "NotEnoughData",
    "ReportFn",
    "assign_folds",
    "cross_validate",
    "episodes",
    "split",
    "steps_name",
    "task_rank",
    "tubes",
    "validation_ious",
]


@dataclass
class LabelledTask:
    """One annotated task's mask for one label (``key``): a unit of cross-validation data."""

    task_id: int
    key: str  # the label (the backend's example key: control and label)
    image: np.ndarray  # uint8 (H, W, 3)
    mask: np.ndarray  # bool (H, W), same size as the image
    updated_at: str  # when the annotation was last changed: the latest K serve as examples
    frame_of: tuple[str, int] | None = None  # (video id, frame number) of a frame-sequence task


class CrossValError(DcsamError):
    """Cross-validated fine-tuning cannot go on; the message is meant for the user."""


class NotEnoughData(CrossValError):
    """No task can be held out: too few annotated tasks per label. ``figures`` holds the counts."""

    def __init__(self, message: str, figures: dict[str, Any]):
        super().__init__(message)
        self.figures = figures


class NoValidationPair(CrossValError):
    """Every held-out label lacked training examples, so nothing was scored."""


class FinetuneRefused(CrossValError):
    """The engine cannot be fine-tuned (no trainable part) or refused the data."""


class ReportFn(Protocol):
    """Progress sink, shaped like the backend's ``JobContext.report`` (writes may be throttled unless ``force``)."""

    def __call__(
        self,
        *,
        done: int | None = ...,
        total: int | None = ...,
        figures: dict | None = ...,
        message: str | None = ...,
        force: bool = ...,
    ) -> None: ...


def _no_report(**_: Any) -> None:
    pass


def _no_cancel() -> None:
    pass


def task_rank(seed: int, task_id: int) -> str:
    """A task's place in fold and episode order: a hash of (seed, task), unrelated to upload order."""
    # the exact hash input is part of the contract: changing it would reshuffle every project's folds
    return hashlib.sha1(f"{seed}:{task_id}".encode()).hexdigest()


def assign_folds(seed: int, items: Sequence[LabelledTask], folds: int) -> dict[int, int | None]:
    """Cross-validation folds by task, stratified by label: {task id: fold, or None = always trained on}.

    A task is wholly in one fold. Each label's tasks are spread evenly over the folds, and a task is
    held out only where every one of its labels keeps at least two training tasks in that fold (a
    label with fewer than three tasks is never held out). The order is :func:`task_rank` (the backend
    passes the project id as ``seed``): deterministic, and unrelated to upload order.
    """
    by_task: dict[int, set[str]] = {}
    for it in items:
        by_task.setdefault(it.task_id, set()).add(it.key)
    order = sorted(by_task, key=lambda t: task_rank(seed, t))
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


def split(
    items: Sequence[LabelledTask], fold_of: Mapping[int, int | None], fold: int
) -> tuple[list[LabelledTask], list[LabelledTask]]:
    """(train, validation) items for one fold."""
    return ([it for it in items if fold_of[it.task_id] != fold], [it for it in items if fold_of[it.task_id] == fold])


def episodes(seed: int, train: Sequence[LabelledTask], k: int) -> list[Episode]:
    """Fine-tuning episodes: per label, its tasks in :func:`task_rank` order in groups of up to K+1.

    A group's first K (at least one, leaving at least one query) are the supports, the rest queries; a
    last group of one joins the group before it; a label with a single task gives no episode.
    """
    by_key: dict[str, list[LabelledTask]] = {}
    for it in train:
        by_key.setdefault(it.key, []).append(it)
    out = []
    for key, its in sorted(by_key.items()):
        if len(its) < 2:
            continue
        its = sorted(its, key=lambda i: task_rank(seed, i.task_id))
        size = k + 1
        groups = [its[i : i + size] for i in range(0, len(its), size)]
        if len(groups) > 1 and len(groups[-1]) < 2:
            groups[-2].extend(groups.pop())
        for g in groups:
            n_support = max(1, min(k, len(g) - 1))
            out.append(
                Episode(
                    support=[LabelledImage(i.image, i.mask) for i in g[:n_support]],
                    query=[LabelledImage(i.image, i.mask) for i in g[n_support:]],
                    label=key,
                )
            )
    return out


def tubes(train: Sequence[LabelledTask]) -> list[MaskTube]:
    """Mask tubes when every item is a frame of a video: per (video, label), its frames in order; else []."""
    framed = [(it, it.frame_of) for it in train if it.frame_of is not None]
    if not train or len(framed) != len(train):
        return []
    by: dict[tuple[str, str], list[tuple[LabelledTask, int]]] = {}
    for it, (video, frame) in framed:
        by.setdefault((video, it.key), []).append((it, frame))
    return [
        MaskTube(key, [LabelledImage(i.image, i.mask) for i, _ in sorted(its, key=lambda p: p[1])])
        for (_, key), its in sorted(by.items(), key=lambda kv: kv[0])
    ]


def validation_ious(
    engine: Engine,
    config: SegmenterConfig,
    train: Sequence[LabelledTask],
    val: Sequence[LabelledTask],
    k: int,
    check_cancel: Callable[[], None] | None = None,
) -> list[float]:
    """IoU of each validation (task, label) pair; its examples are the label's latest K training tasks.

    Scores the weights the engine holds now. A label with no training task gives no pair; a missing
    prediction scores 0; two empty masks agree (:func:`dcsam.masks.iou`).
    """
    check_cancel = check_cancel or _no_cancel
    seg = InContextSegmenter(engine, config)
    by_key: dict[str, list[LabelledTask]] = {}
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
            check_cancel()
            mask = p.masks.get(key)
            scores.append(iou(mask, q.mask) if mask is not None else 0.0)
    return scores


def steps_name(steps: int | None) -> str:
    """How a step choice is named in figures and messages."""
    return "default steps" if steps is None else f"{steps} steps"


@dataclass
class CrossValResult:
    """The outcome of :func:`cross_validate`.

    ``figures`` is JSON-ready (counts, pooled and per-fold scores, the decision's inputs). When
    ``promote`` is true, ``candidate_state`` is a detached copy of the engine's trainable state after the
    final fine-tune on every task (``chosen_steps``); otherwise it is None.
    """

    figures: dict[str, Any]
    promote: bool
    candidate_state: dict[str, Any] | None
    chosen_steps: int | None


def cross_validate(
    engine: Engine,
    config: SegmenterConfig,
    items: Sequence[LabelledTask],
    *,
    seed: int,
    folds: int,
    k: int,
    reset_weights: Callable[[], None],
    step_choices: Sequence[int | None] | None = None,
    min_gain: float = 0.0,
    weights_changing: Callable[[], None] | None = None,
    report: ReportFn | None = None,
    check_cancel: Callable[[], None] | None = None,
    extra_figures: Mapping[str, Any] | None = None,
    score: Callable[..., list[float]] | None = None,
    early_stop: EarlyStop | None = None,
) -> CrossValResult:
    """Fine-tune ``engine`` on ``items`` if, and only if, cross-validation says it helps.

    ``seed`` orders tasks in folds and episodes (the backend passes the project id). ``k`` examples per
    label, as when serving. ``step_choices``: the step counts to compare (None: the engine's own).
    ``reset_weights()`` must put the serving weights back in the engine: it is called before each fold's
    scoring of the serving model and before each fine-tune run (each starts from the serving weights).
    ``weights_changing()``, if given, is called right after the reset that precedes a fine-tune, i.e. just
    before the engine's weights are changed in place (the backend marks its weight cache stale there).
    ``report`` receives progress (``done``/``total`` count fine-tune runs; ``figures`` during a run add
    ``run``, ``step``, ``steps`` and ``loss``); ``check_cancel`` is called often and may raise to stop.
    ``extra_figures`` (e.g. the parent version) join the figures once the data are known to suffice.
    ``score`` replaces :func:`validation_ious` (same arguments), e.g. to stub scoring in tests.
    ``early_stop``: every fine-tune run (each fold's and the final one alike, so the decision validates
    the procedure that makes the candidate) stops early by this rule; figures ``steps_run`` list the steps
    each run took.

    Raises :class:`NotEnoughData` (no task can be held out), :class:`NoValidationPair` and
    :class:`FinetuneRefused`; whatever ``check_cancel``, ``report`` or the engine raise passes through.
    The engine is left holding the last run's weights: put the serving ones back afterwards.
    """
    emit: ReportFn = report or _no_report
    cancel = check_cancel or _no_cancel
    scorer = score or validation_ious
    fold_of = assign_folds(seed, items, folds)
    used_folds = [f for f in range(folds) if any(fold == f for fold in fold_of.values())]
    n_tasks = len(fold_of)
    figures: dict[str, Any] = {
        "annotated_tasks": n_tasks,
        "labels": len({i.key for i in items}),
        "folds": len(used_folds),
        "val_tasks": sum(fold is not None for fold in fold_of.values()),
        "episodes": len(episodes(seed, items, k)),
    }
    n_tubes = len(tubes(items))
    if n_tubes:
        figures["tubes"] = n_tubes  # a frame-sequence project: mask-tube fine-tuning
    if not used_folds:
        raise NotEnoughData(
            f"not enough accepted annotations to fine-tune and validate ({n_tasks} usable "
            f"task(s)): a label needs at least 3 annotated tasks (2 to train, 1 to validate); "
            f"{figures}",
            figures,
        )
    figures.update(extra_figures or {})
    choices = list(step_choices) if step_choices is not None else list(engine.finetune_step_choices())
    runs = len(used_folds) * len(choices) + 1  # each choice fine-tuned once per fold, then the kept one on all
    done_runs = 0

    def finetune(train: Sequence[LabelledTask], steps: int | None) -> dict[str, Any]:
        nonlocal done_runs
        reset_weights()  # every run starts from the serving weights
        if weights_changing is not None:
            weights_changing()

        def progress(step: int, total: int, figs: dict) -> None:
            cancel()
            emit(figures={**figures, "run": done_runs + 1, "step": step, "steps": total, "loss": figs.get("loss")})

        on_step: ProgressFn = progress
        try:
            video_tubes = tubes(train)
            with early_stopping(early_stop):
                if video_tubes:
                    seg = InContextSegmenter(engine, config)
                    out = finetune_on_tubes(seg, video_tubes, steps=steps, progress=on_step)
                else:
                    out = engine.finetune(episodes(seed, train, k), steps=steps, progress=on_step)
        except NotImplementedError as exc:
            raise FinetuneRefused(f"{exc}: this engine has no trainable part to fine-tune") from exc
        except DcsamError as exc:
            raise FinetuneRefused(f"fine-tuning refused: {exc}") from exc
        done_runs += 1
        cancel()
        emit(done=done_runs, total=runs, force=True)
        return out

    emit(done=0, total=runs, force=True)
    before: list[float] = []
    after: dict[int, list[float]] = {i: [] for i in range(len(choices))}
    per_fold = []
    for n, fold in enumerate(used_folds):
        train, val = split(items, fold_of, fold)
        emit(message=f"fold {n + 1}/{len(used_folds)}: scoring the serving model", force=True)
        reset_weights()
        b = scorer(engine, config, train, val, k, cancel)
        before += b
        row: dict[str, Any] = {
            "val_tasks": len({i.task_id for i in val}),
            "before": round(float(np.mean(b)), 4) if b else None,
        }
        for i, steps in enumerate(choices):
            emit(message=f"fold {n + 1}/{len(used_folds)}: fine-tuning ({steps_name(steps)})", force=True)
            finetune(train, steps)
            a = scorer(engine, config, train, val, k, cancel)
            after[i] += a
            row[steps_name(steps)] = round(float(np.mean(a)), 4) if a else None
        per_fold.append(row)
    if not before:
        raise NoValidationPair("no validation pair: every validation label lacks training examples")
    scores = {i: float(np.mean(v)) for i, v in after.items()}
    best = max(scores, key=lambda i: (scores[i], -i))  # ties: the earlier (cheaper) choice
    figures.update(
        val_pairs=len(before),
        val_miou_before=round(float(np.mean(before)), 4),
        val_miou_after=round(scores[best], 4),
        chosen_steps=steps_name(choices[best]),
        choices={steps_name(c): round(scores[i], 4) for i, c in enumerate(choices)},
        per_fold=per_fold,
        min_gain=min_gain,
    )
    if early_stop is not None:
        figures["steps_run"] = [ran for ran, _ in early_stop.runs]
    if not scores[best] - float(np.mean(before)) > min_gain:
        return CrossValResult(figures, False, None, choices[best])
    emit(figures=figures, message="fine-tuning on every accepted annotation", force=True)
    train_figs = finetune(items, choices[best])
    if early_stop is not None:
        figures["steps_run"] = [ran for ran, _ in early_stop.runs]
    figures["train"] = {key: v for key, v in (train_figs or {}).items() if not isinstance(v, (dict, list))}
    return CrossValResult(figures, True, clone_state(engine.trainable_state_dict()), choices[best])
