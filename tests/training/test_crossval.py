"""Cross-validated fine-tuning: folds, episodes, tubes, scoring and the promotion decision."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dcsam.api import InContextSegmenter
from dcsam.checkpoints import clone_state
from dcsam.config import SegmenterConfig
from dcsam.engines.base import Engine
from dcsam.errors import DcsamError, InputError
from dcsam.training.crossval import (
    CrossValError,
    FinetuneRefused,
    LabelledTask,
    NotEnoughData,
    NoValidationPair,
    assign_folds,
    cross_validate,
    episodes,
    split,
    steps_name,
    task_rank,
    tubes,
    validation_ious,
)
from tests.support.scenes import striped_disc_scene
from tests.support.spies import spy_on_tube_finetuning

# a small working size keeps each fine-tune run to seconds on a CPU
CONFIG = SegmenterConfig(engine="lite", device="cpu", options={"size": 128, "output_stride": 32})


# -- fold assignment -------------------------------------------------------------------------------
def test_training_folds_are_by_task_and_stratified_by_label():
    pixel, mask = np.zeros((4, 4, 3), np.uint8), np.ones((4, 4), bool)
    items = [LabelledTask(t, "tag\x1fcat", pixel, mask, "") for t in range(1, 9)]
    items += [LabelledTask(t, "tag\x1fdog", pixel, mask, "") for t in range(11, 15)]
    items += [LabelledTask(20, "tag\x1fcat", pixel, mask, ""), LabelledTask(20, "tag\x1fdog", pixel, mask, "")]
    items += [LabelledTask(t, "tag\x1fbird", pixel, mask, "") for t in (31, 32)]  # too few to validate
    for project in range(1, 6):
        fold_of = assign_folds(project, items, 4)
        assert fold_of[31] is None and fold_of[32] is None
        for label, n in (("cat", 9), ("dog", 5)):
            tasks = {i.task_id for i in items if i.key == f"tag\x1f{label}"}
            sizes = sorted(sum(fold_of[t] == f for t in tasks) for f in range(4))
            assert sizes[-1] - sizes[0] <= 1 and sum(sizes) == n, (project, label, sizes)  # spread evenly
        for fold in range(4):
            train, val = split(items, fold_of, fold)
            assert not {i.task_id for i in train} & {i.task_id for i in val}
            for label in ("cat", "dog", "bird"):  # every label keeps two tasks to train on
                assert len({i.task_id for i in train if i.key == f"tag\x1f{label}"}) >= 2
    assert assign_folds(1, items, 4) == assign_folds(1, items, 4)
    assert set(assign_folds(1, items[:2], 4).values()) == {None}  # too few tasks to hold any out


def test_fold_order_is_the_seeded_task_hash():
    import hashlib

    # the hash input is what keeps existing projects' folds stable across releases
    assert task_rank(7, 42) == hashlib.sha1(b"7:42").hexdigest()
    pixel, mask = np.zeros((2, 2, 3), np.uint8), np.ones((2, 2), bool)
    items = [LabelledTask(t, "k", pixel, mask, "") for t in range(1, 13)]
    a, b = assign_folds(1, items, 3), assign_folds(2, items, 3)
    assert set(a) == set(b) == set(range(1, 13))
    assert a != b  # another seed, another shuffle
    assert assign_folds(1, list(reversed(items)), 3) == a  # input order does not matter
    # the first tasks in hash order fill the folds in turn
    first = sorted(range(1, 13), key=lambda t: task_rank(1, t))[:3]
    assert [a[t] for t in first] == [0, 1, 2]


# -- episodes and tubes ----------------------------------------------------------------------------
def _tagged(task_id: int, key: str) -> LabelledTask:
    """A task whose image carries its id, so episodes can be read back."""
    return LabelledTask(task_id, key, np.full((2, 2, 3), task_id, np.uint8), np.ones((2, 2), bool), "")


def _ids(images) -> list[int]:
    return [int(li.image[0, 0, 0]) for li in images]


def test_episodes_group_k_plus_one_tasks_of_a_label_in_hash_order():
    items = [_tagged(t, "b") for t in range(1, 8)] + [_tagged(t, "a") for t in (20, 21)] + [_tagged(30, "c")]
    eps = episodes(5, items, k=2)
    assert [e.label for e in eps] == ["a", "b", "b"]  # by label; "c" (one task) has no episode
    a, b1, b2 = eps
    assert len(a.support) == 1 and len(a.query) == 1  # two tasks: one support, one query
    # seven tasks in groups of 3: 3 + 3 + 1, and a last group of one joins the one before
    assert (len(b1.support), len(b1.query)) == (2, 1) and (len(b2.support), len(b2.query)) == (2, 2)
    order = sorted(range(1, 8), key=lambda t: task_rank(5, t))
    assert _ids(b1.support) + _ids(b1.query) + _ids(b2.support) + _ids(b2.query) == order
    assert episodes(5, items[:1], k=2) == []


def test_tubes_only_when_every_task_is_a_frame():
    items = [
        LabelledTask(i, "k", np.full((2, 2, 3), f, np.uint8), np.ones((2, 2), bool), "", ("v", f))
        for i, f in ((1, 10), (2, 0), (3, 5))
    ]
    [tube] = tubes(items)
    assert [int(f.image[0, 0, 0]) for f in tube.frames] == [0, 5, 10]  # frame order, not task order
    assert tubes(items + [LabelledTask(4, "k", items[0].image, items[0].mask, "")]) == []  # mixed: episodes
    more = items + [
        LabelledTask(9, "k", items[0].image, items[0].mask, "", ("w", 3)),
        LabelledTask(8, "j", items[0].image, items[0].mask, "", ("v", 1)),
    ]
    assert [(t.label, len(t.frames)) for t in tubes(more)] == [("j", 1), ("k", 3), ("k", 1)]  # per (video, label)
    assert tubes([]) == []


def test_step_names():
    assert steps_name(None) == "default steps" and steps_name(0) == "0 steps" and steps_name(12) == "12 steps"


# -- cross-validation with the lite engine ---------------------------------------------------------
def _scene(seed: int, size: int = 96):
    """A textured background with an orange striped disc whose place varies; returns (image, mask)."""
    return striped_disc_scene(seed, size, 20)


@pytest.fixture(scope="module")
def engine() -> Engine:
    torch.manual_seed(0)
    return InContextSegmenter.from_config(CONFIG).engine


@pytest.fixture(scope="module")
def serving(engine) -> dict:
    return clone_state(engine.trainable_state_dict())


@pytest.fixture(scope="module")
def discs() -> list[LabelledTask]:
    return [LabelledTask(t, "disc", *_scene(t), updated_at=f"2024-01-0{t}") for t in range(1, 5)]


class Recorder:
    """reset_weights / report / check_cancel hooks that log the order of events."""

    def __init__(self, engine: Engine, serving: dict):
        self.engine, self.serving = engine, serving
        self.events: list[str] = []
        self.reports: list[dict] = []
        self.cancels = 0

    def reset(self) -> None:
        self.engine.load_trainable_state_dict(self.serving)
        self.events.append("reset")

    def report(self, **kw) -> None:
        self.reports.append(kw)
        if kw.get("message"):
            self.events.append(kw["message"])

    def check_cancel(self) -> None:
        self.cancels += 1


def _run(engine, serving, items, rec: Recorder, **kw):
    kw = {"seed": 3, "folds": 2, "k": 2, "step_choices": [0, 2], **kw}
    try:
        return cross_validate(
            engine, CONFIG, items, reset_weights=rec.reset, report=rec.report, check_cancel=rec.check_cancel, **kw
        )
    finally:
        engine.load_trainable_state_dict(serving)  # as the backend does: the serving weights back


def test_a_refused_decision_returns_no_candidate(engine, serving, discs):
    rec = Recorder(engine, serving)
    changed = []
    res = _run(
        engine,
        serving,
        discs,
        rec,
        min_gain=1.0,
        extra_figures={"parent_version": "base"},
        weights_changing=lambda: changed.append(rec.events[-1]),
    )
    f = res.figures
    assert not res.promote and res.candidate_state is None
    assert list(f) == [
        "annotated_tasks",
        "labels",
        "folds",
        "val_tasks",
        "episodes",
        "parent_version",
        "val_pairs",
        "val_miou_before",
        "val_miou_after",
        "chosen_steps",
        "choices",
        "per_fold",
        "min_gain",
    ]
    assert f["annotated_tasks"] == 4 and f["labels"] == 1 and f["folds"] == 2 and f["val_tasks"] == 4
    assert f["episodes"] == 1 and f["val_pairs"] == 4 and f["min_gain"] == 1.0
    assert 0 <= f["val_miou_before"] <= 1 and f["val_miou_after"] == max(f["choices"].values())
    assert set(f["choices"]) == {"0 steps", "2 steps"} and f["chosen_steps"] in f["choices"]
    assert [set(row) for row in f["per_fold"]] == [{"val_tasks", "before", "0 steps", "2 steps"}] * 2
    # serving weights before each fold's scoring and before each fine-tune run
    assert rec.events == [
        "fold 1/2: scoring the serving model",
        "reset",
        "fold 1/2: fine-tuning (0 steps)",
        "reset",
        "fold 1/2: fine-tuning (2 steps)",
        "reset",
        "fold 2/2: scoring the serving model",
        "reset",
        "fold 2/2: fine-tuning (0 steps)",
        "reset",
        "fold 2/2: fine-tuning (2 steps)",
        "reset",
    ]
    assert changed == ["reset"] * 4  # once per fine-tune run, after its reset
    done = [(r["done"], r["total"]) for r in rec.reports if "done" in r]
    assert done == [(0, 5), (1, 5), (2, 5), (3, 5), (4, 5)]  # the run on everything was not needed
    steps = [r["figures"] for r in rec.reports if r.get("figures") and "step" in r["figures"]]
    assert steps and all(s["run"] in (2, 4) and s["parent_version"] == "base" for s in steps)  # 2-step runs
    assert rec.cancels > 0


def test_a_better_score_is_promoted_with_the_final_runs_state(engine, serving, discs):
    rec = Recorder(engine, serving)
    scored = []

    def score(eng, config, train, val, k, check_cancel):
        scored.append(bool(eng.trained))
        return [0.7] if eng.trained else [0.5]

    res = _run(engine, serving, discs, rec, step_choices=[2], score=score)
    f = res.figures
    assert res.promote and res.chosen_steps == 2 and scored == [False, True] * 2
    assert f["val_miou_before"] == 0.5 and f["val_miou_after"] == 0.7 and f["chosen_steps"] == "2 steps"
    assert f["per_fold"] == [{"val_tasks": 2, "before": 0.5, "2 steps": 0.7}] * 2
    assert f["train"]["steps"] == 2 and all(not isinstance(v, (dict, list)) for v in f["train"].values())
    assert rec.events[-2:] == ["fine-tuning on every accepted annotation", "reset"]
    assert [(r["done"], r["total"]) for r in rec.reports if "done" in r][-1] == (3, 3)
    # the state after the run on everything, which survives the engine going back to its serving weights
    assert res.candidate_state is not None and "disc" in res.candidate_state["memory"]
    assert not engine.trained
    engine.load_trainable_state_dict(res.candidate_state)
    assert engine.trained
    engine.load_trainable_state_dict(serving)


def test_the_engines_step_choices_are_compared_and_ties_keep_the_first(engine, serving, discs, monkeypatch):
    rec = Recorder(engine, serving)
    monkeypatch.setattr(engine, "finetune_step_choices", lambda: [0, 1])
    res = _run(engine, serving, discs, rec, step_choices=None, score=lambda *a: [0.2] if a[0].trained else [0.1])
    assert res.promote and res.figures["choices"] == {"0 steps": 0.2, "1 steps": 0.2}
    assert res.chosen_steps == 0 and res.figures["chosen_steps"] == "0 steps"


def test_validation_ious_score_each_held_out_pair(engine, serving, discs):
    engine.load_trainable_state_dict(serving)
    train, val = discs[:2], discs[2:] + [LabelledTask(99, "other", *_scene(99), "")]
    ious = validation_ious(engine, CONFIG, train, val, 2)
    assert len(ious) == 2 and all(0 <= x <= 1 for x in ious)  # "other" has no training example: no pair
    assert np.mean(ious) > 0.5  # the same disc, somewhere else


def test_refusals(engine, serving, discs, monkeypatch):
    rec = Recorder(engine, serving)
    with pytest.raises(NotEnoughData, match="at least 3 annotated tasks") as info:
        _run(engine, serving, discs[:2], rec)
    assert info.value.figures["annotated_tasks"] == 2 and isinstance(info.value, DcsamError)
    with pytest.raises(NoValidationPair, match="^no validation pair: every validation label lacks training"):
        _run(engine, serving, discs, rec, step_choices=[0], score=lambda *a: [])
    monkeypatch.setattr(engine, "finetune", lambda *a, **k: (_ for _ in ()).throw(InputError("bad masks")))
    with pytest.raises(FinetuneRefused, match="^fine-tuning refused: bad masks$"):
        _run(engine, serving, discs, rec, score=lambda *a: [0.5])
    monkeypatch.setattr(engine, "finetune", lambda *a, **k: (_ for _ in ()).throw(NotImplementedError("no head")))
    with pytest.raises(CrossValError, match="^no head: this engine has no trainable part to fine-tune$"):
        _run(engine, serving, discs, rec, score=lambda *a: [0.5])
    monkeypatch.setattr(engine, "finetune", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("out of memory")))
    with pytest.raises(RuntimeError, match="out of memory"):  # anything else passes through
        _run(engine, serving, discs, rec, score=lambda *a: [0.5])


def test_cancelling_stops_the_run(engine, serving, discs):
    class Cancelled(Exception):
        pass

    rec = Recorder(engine, serving)

    def cancel():
        if any(e.startswith("fold 2/2") for e in rec.events):
            raise Cancelled

    with pytest.raises(Cancelled):
        cross_validate(
            engine,
            CONFIG,
            discs,
            seed=3,
            folds=2,
            k=2,
            step_choices=[0],
            reset_weights=rec.reset,
            report=rec.report,
            check_cancel=cancel,
        )
    engine.load_trainable_state_dict(serving)
    assert not any("every accepted annotation" in e for e in rec.events)


def test_a_frame_sequence_project_fine_tunes_on_tubes(engine, serving, monkeypatch):
    seen = spy_on_tube_finetuning(monkeypatch)
    frames = [
        LabelledTask(10 * v + f, "disc", *_scene(10 * v + f), "", (f"video{v}", f)) for v in (1, 2) for f in range(2)
    ]
    rec = Recorder(engine, serving)
    res = _run(engine, serving, frames, rec, step_choices=[0], score=lambda *a: [0.9] if a[0].trained else [0.1])
    assert res.figures["tubes"] == 2 and res.promote
    assert seen[0] == [("disc", 1), ("disc", 1)]  # a fold: one frame of each video held out
    assert len(seen) == 3 and seen[-1] == [("disc", 2), ("disc", 2)]  # the last run: every frame, per video
