"""Episode files, metrics and the evaluation loop (with a stub engine and with the lite engine)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dcsam.api import InContextSegmenter
from dcsam.config import SegmenterConfig
from dcsam.engines.base import Engine, Episode, SegmentResult
from dcsam.episode_evaluation import evaluate_episodes, format_report, load_episodes
from dcsam.errors import InputError
from tests.support.data import DATA


class StubEngine(Engine):
    """Predicts 'red channel > 127' as the mask; records fine-tuning calls."""

    name = "stub"

    def __init__(self):
        self.finetuned: list[Episode] = []

    def encode_example(self, example):
        return example.mask.sum()

    def predict(self, images, examples):
        return [{lab: SegmentResult(mask=img[..., 0] > 127, score=1.0) for lab in examples} for img in images]

    def finetune(self, episodes, *, steps=None, progress=None):
        self.finetuned.extend(episodes)
        return {"loss_first": 1.0, "loss_last": 0.5, "steps": steps or 1}

    @property
    def version(self):
        return f"stub-{len(self.finetuned)}"


def _pair(folder: Path, name: str, pred_rect, gt_rect, size=(20, 20)) -> dict:
    """An image whose red box is what the stub predicts, and a mask with the ground truth."""
    img = np.zeros((*size, 3), np.uint8)
    y0, y1, x0, x1 = pred_rect
    img[y0:y1, x0:x1, 0] = 255
    gt = np.zeros(size, np.uint8)
    y0, y1, x0, x1 = gt_rect
    gt[y0:y1, x0:x1] = 255
    Image.fromarray(img).save(folder / f"{name}.png")
    Image.fromarray(gt).save(folder / f"{name}_m.png")
    return {"image": f"{name}.png", "mask": f"{name}_m.png"}


@pytest.fixture
def episode_file(tmp_path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    sup = _pair(d, "s", (0, 10, 0, 10), (0, 10, 0, 10))
    episodes = [
        {
            "label": "a",
            "support": [sup],
            "query": [
                _pair(d, "a1", (0, 10, 0, 10), (0, 10, 0, 10)),  # IoU 1
                _pair(d, "a2", (0, 10, 0, 10), (0, 10, 0, 20)),
            ],
        },  # IoU 100/200
        {"label": "b", "support": [sup], "query": [_pair(d, "b1", (0, 10, 0, 10), (10, 20, 10, 20))]},  # IoU 0
        {"label": "a", "support": [sup], "query": [_pair(d, "a3", (0, 20, 0, 20), (0, 20, 0, 20))]},  # IoU 1
    ]
    path = tmp_path / "episodes.json"
    path.write_text(
        json.dumps(
            [
                {
                    **e,
                    "support": [{k: f"data/{v}" for k, v in s.items()} for s in e["support"]],
                    "query": [{k: f"data/{v}" for k, v in q.items()} for q in e["query"]],
                }
                for e in episodes
            ]
        )
    )
    return path


def test_load_episodes_resolves_relative_paths(episode_file):
    eps = load_episodes(episode_file)
    assert [e["label"] for e in eps] == ["a", "b", "a"]
    assert Path(eps[0]["query"][1]["mask"]).is_absolute()
    assert Path(eps[0]["query"][1]["mask"]).is_file()


@pytest.mark.parametrize(
    "content, message",
    [
        ("not json", "not a valid JSON"),
        ("{}", "non-empty JSON list"),
        ("[]", "non-empty JSON list"),
        ('[{"support": [], "query": []}]', "'support' must be a non-empty list"),
        ('[{"support": [{"image": "x.png"}], "query": [{"image": "x.png", "mask": "x.png"}]}]', "'image' and 'mask'"),
        (
            '[{"support": [{"image": "nope.png", "mask": "nope.png"}], "query": [{"image": "a", "mask": "b"}]}]',
            "not found",
        ),
        ('[{"support": [], "query": [], "extra": 1}]', "unknown field"),
        ('[{"label": 3, "support": [], "query": []}]', "label"),
    ],
)
def test_load_episodes_errors(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        load_episodes(path)


def test_load_episodes_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such episode file"):
        load_episodes(tmp_path / "missing.json")


def test_metrics_with_a_stub_engine(episode_file):
    made = []

    def factory():
        made.append(InContextSegmenter(StubEngine()))
        return made[-1]

    report = evaluate_episodes(factory, load_episodes(episode_file), progress=False)
    assert len(made) == 3  # a fresh segmenter per episode
    assert report["num_queries"] == 4
    assert [e["ious"] for e in report["episodes"]] == [[1.0, 0.5], [0.0], [1.0]]
    assert report["mean_iou"] == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    # class a accumulates: intersections 100 + 100 + 400, unions 100 + 200 + 400
    assert report["per_class_iou"]["a"] == pytest.approx(600 / 700)
    assert report["per_class_iou"]["b"] == 0.0
    assert report["class_miou"] == pytest.approx((600 / 700 + 0) / 2)
    fg = 600 / (700 + 200)
    bg_inter = 300 + 200 + 200 + 0  # pixels outside both masks
    bg_union = 300 + 300 + 400 + 0  # pixels outside at least one
    assert report["fb_iou"] == pytest.approx((fg + bg_inter / bg_union) / 2)
    assert report["seconds_per_query"] >= 0
    json.dumps(report)  # JSON-serialisable
    text = format_report(report)
    assert "mean IoU" in text and "FB-IoU" in text and "b " in text


def test_finetune_on_first_queries(episode_file):
    engines = []

    def factory():
        engines.append(StubEngine())
        return InContextSegmenter(engines[-1])

    report = evaluate_episodes(factory, episode_file, finetune_on=1, progress=False)
    # episode a: fine-tune on a1, score a2; episodes b and a(3): nothing left to score, skipped
    assert report["num_queries"] == 1 and report["num_episodes"] == 1
    [scored] = report["episodes"]
    assert scored["ious"] == [0.5]
    assert report["skipped_episodes"] == [{"label": "b", "queries": 1}, {"label": "a", "queries": 1}]
    assert len(engines) == 1  # no model built, nothing fine-tuned for the skipped episodes
    [ep] = engines[0].finetuned
    assert ep.label == "a" and len(ep.support) == 1 and len(ep.query) == 1
    assert ep.query[0].mask.dtype == bool and ep.query[0].image.shape == (20, 20, 3)
    assert report["episodes"][0]["finetune"]["loss_last"] == 0.5
    assert report["episodes"][0]["model_version"] == "stub-1"
    text = format_report(report)
    assert "fine-tuned" in text and "skipped: its 1 queries are all fine-tuning images" in text


def test_finetune_on_every_query_skips_all_episodes(episode_file):
    report = evaluate_episodes(lambda: InContextSegmenter(StubEngine()), episode_file, finetune_on=5, progress=False)
    assert report["num_queries"] == 0 and report["episodes"] == [] and len(report["skipped_episodes"]) == 3
    assert report["mean_iou"] is None and report["baseline_mean_iou"] is None and "improvement" not in report
    json.dumps(report)  # no NaN: None where there is nothing to average
    assert "mean IoU           -" in format_report(report)


def test_finetune_report_compares_with_the_model_before_fine_tuning(episode_file):
    report = evaluate_episodes(lambda: InContextSegmenter(StubEngine()), episode_file, finetune_on=1, progress=False)
    # the stub predicts the same before and after fine-tuning: same figures, zero change
    assert report["episodes"][0]["baseline_ious"] == [0.5] and report["episodes"][0]["baseline_version"] == "stub-0"
    assert report["baseline_mean_iou"] == report["mean_iou"] == 0.5
    assert report["baseline_fb_iou"] == report["fb_iou"] and report["baseline_class_miou"] == report["class_miou"]
    assert report["improvement"] == 0.0
    text = format_report(report)
    assert "before fine-tuning 0.5000" in text and "change +0.0 points" in text
    json.dumps(report)
    off = evaluate_episodes(
        lambda: InContextSegmenter(StubEngine()), episode_file, finetune_on=1, progress=False, baseline=False
    )
    assert "baseline_mean_iou" not in off and "baseline_ious" not in off["episodes"][0]
    plain = evaluate_episodes(lambda: InContextSegmenter(StubEngine()), episode_file, progress=False)
    assert "baseline_mean_iou" not in plain  # nothing to compare without fine-tuning


@pytest.mark.skipif(not (DATA / "perseg-mini").is_dir(), reason=f"fixture data not found at {DATA}")
def test_lite_engine_on_one_perseg_episode(tmp_path):
    root = (DATA / "perseg-mini").resolve()
    path = tmp_path / "one.json"
    path.write_text(
        json.dumps(
            [
                {
                    "label": "duck_toy",
                    "support": [{"image": str(root / "duck_toy_00.jpg"), "mask": str(root / "duck_toy_00.png")}],
                    "query": [
                        {"image": str(root / f"duck_toy_0{i}.jpg"), "mask": str(root / f"duck_toy_0{i}.png")}
                        for i in (1, 2)
                    ],
                }
            ]
        )
    )
    cfg = SegmenterConfig(engine="lite", device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = evaluate_episodes(lambda: InContextSegmenter.from_config(cfg), load_episodes(path), progress=False)
    assert report["num_queries"] == 2
    assert report["mean_iou"] > 0.85, report
    assert report["model_versions"] == ["lite-effl0-base"]
    assert "duck_toy" in format_report(report)
