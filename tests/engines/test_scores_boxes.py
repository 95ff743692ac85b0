"""Region scores that estimate a mask's quality, and box prompts that segment what the box holds (lite)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dcsam.api import InContextSegmenter
from dcsam.config import SegmenterConfig
from dcsam.engines.base import Prompts
from dcsam.engines.lite import LiteEngine
from dcsam.lite.quality import MaskSignals, calibrated_score, mask_signals
from dcsam.masks import iou


def _scene(seed: int, discs: list[tuple[int, int, int]], size: tuple[int, int] = (160, 200)):
    """Textured background with orange striped discs ``(cy, cx, r)``; returns (uint8 image, mask of each)."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    img = np.stack(
        [90 + 40 * np.sin(xx / 7.0 + seed), 130 + 30 * np.cos(yy / 5.0), 160 + 20 * np.sin((xx + yy) / 11.0)], -1
    )
    img = img + rng.normal(0, 8, img.shape)
    masks = []
    for cy, cx, r in discs:
        m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        stripes = np.stack([230 + 0 * xx, 120 + 50 * ((xx // 6) % 2), 30 + 0 * xx], -1)
        img[m] = stripes[m] + rng.normal(0, 8, (int(m.sum()), 3))
        masks.append(m)
    return np.clip(img, 0, 255).astype(np.uint8), masks


@pytest.fixture(scope="module")
def segmenter() -> InContextSegmenter:
    torch.manual_seed(0)
    seg = InContextSegmenter(LiteEngine(SegmenterConfig(engine="lite", device="cpu")), SegmenterConfig(engine="lite"))
    img, [mask] = _scene(1, [(80, 100, 34)])
    seg.add_examples([img], [mask], label="disc")
    return seg


# -- the score model ------------------------------------------------------------------------------
def test_calibrated_score_rises_with_every_signal_and_is_zero_for_nothing():
    base = MaskSignals(confidence=0.8, stability=0.5, largest_share=1.0)
    s = calibrated_score(base)
    assert 0.0 < s < 1.0
    assert calibrated_score(MaskSignals(0.95, 0.5, 1.0)) > s
    assert calibrated_score(MaskSignals(0.8, 0.9, 1.0)) > s
    assert calibrated_score(MaskSignals(0.8, 0.5, 0.5)) < s
    assert calibrated_score(MaskSignals(0.0, 0.0, 0.0)) == 0.0


def test_mask_signals_read_confidence_stability_and_components():
    prob = np.full((40, 60), 0.05, np.float32)
    prob[10:30, 5:25] = 0.95  # a sure blob
    mask = prob > 0.5
    sure = mask_signals(mask, prob, single_object=True)
    assert sure.confidence == pytest.approx(0.95) and sure.stability == 1.0 and sure.largest_share == 1.0
    soft = prob.copy()
    soft[10:30, 5:25] = 0.6  # the same mask, barely above the threshold: an unstable outline
    assert mask_signals(mask, soft).stability == 0.0
    two = mask.copy()
    two[10:30, 40:50] = True  # a second blob half the size
    prob2 = np.where(two, 0.95, 0.05).astype(np.float32)
    assert mask_signals(two, prob2, single_object=True).largest_share == pytest.approx(400 / 600)
    assert mask_signals(two, prob2, single_object=False).largest_share == 1.0  # several objects are fine then
    assert mask_signals(np.zeros_like(mask), prob) == MaskSignals(0.0, 0.0, 0.0)


# -- scores of predictions and of any mask --------------------------------------------------------
def test_the_score_of_a_worse_mask_is_lower(segmenter):
    img, [gt] = _scene(2, [(90, 80, 30)])
    [pred] = segmenter.predict([img])
    good = pred.masks["disc"]
    assert iou(good, gt) > 0.8
    ex = segmenter.encoded_examples("disc")
    s_good = segmenter.engine.score_mask(img, good, Prompts(examples=ex))
    assert s_good == pytest.approx(pred.scores["disc"], abs=0.02)  # the same signals as the prediction's
    leak = good.copy()
    leak[10:60, 130:190] = True  # plus a patch of background
    half = good.copy()
    half[90:] = False  # half of the object
    for worse in (leak, half):
        assert iou(worse, gt) < iou(good, gt)
        assert segmenter.engine.score_mask(img, worse, Prompts(examples=ex)) < s_good


def test_a_second_lookalike_lowers_the_score(segmenter):
    # the car-roundabout case: a one-object example, and a prediction that took a second look-alike
    one, [gt_one] = _scene(3, [(80, 60, 28)])
    two, [gt_a, gt_b] = _scene(3, [(80, 60, 28), (80, 150, 28)])
    s_one = segmenter.predict([one])[0].scores["disc"]
    pred_two = segmenter.predict([two])[0]
    assert pred_two.masks["disc"][gt_b].mean() > 0.5  # the look-alike is in the mask
    assert pred_two.scores["disc"] < s_one


def test_a_refinement_that_changes_the_mask_changes_its_score(segmenter):
    img, [gt] = _scene(4, [(80, 100, 32)])
    [pred] = segmenter.predict([img])
    start, start_score = pred.masks["disc"], pred.scores["disc"]
    # a click inside the mask changes nothing: the same mask and the same score
    same, s_same = segmenter.refine(img, start, points=[(100.0, 80.0, True)], label="disc", mask_score=start_score)
    np.testing.assert_array_equal(same, start)
    assert s_same == pytest.approx(start_score, abs=0.02)
    # a negative click that cuts the object changes the mask, and the score follows it
    cut, s_cut = segmenter.refine(img, start, points=[(100.0, 80.0, False)], label="disc", mask_score=start_score)
    assert (cut != start).any() and not cut[80, 100]
    assert s_cut < start_score  # the object lost a piece: a worse mask
    assert s_cut == pytest.approx(
        segmenter.engine.score_mask(
            img, cut, Prompts([(100.0, 80.0, False)], examples=segmenter.encoded_examples("disc"))
        ),
        abs=1e-6,
    )


# -- boxes ----------------------------------------------------------------------------------------
def test_a_box_grows_a_mask_that_stops_short_of_the_object(segmenter):
    # the sneaker case: the starting mask misses the bottom of the object; a tight box around the
    # whole object must give a mask inside the box that covers it (not the unchanged start)
    img, [gt] = _scene(5, [(80, 100, 36)])
    start = gt.copy()
    start[98:] = False  # the bottom quarter is missing
    ys, xs = np.nonzero(gt)
    box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
    for label in (None, "disc"):  # prompts alone, and with the label's example
        mask, score = segmenter.refine(img, start, box=box, label=label)
        assert not mask[: int(box[1])].any() and not mask[int(box[3]) :].any()
        assert not mask[:, : int(box[0])].any() and not mask[:, int(box[2]) :].any()
        assert mask[98:][gt[98:]].mean() > 0.8  # the missed part is now in the mask
        assert iou(mask, gt) > 0.85 > iou(start, gt)
        assert 0.0 < score <= 1.0


def test_box_refinement_with_examples_is_scored_by_the_engine(segmenter):
    img, [gt] = _scene(7, [(80, 100, 32)])
    ys, xs = np.nonzero(gt)
    box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
    mask, score = segmenter.refine(img, None, box=box, label="disc")
    ex = segmenter.encoded_examples("disc")
    assert score == pytest.approx(segmenter.engine.score_mask(img, mask, Prompts(box=box, examples=ex)), abs=1e-6)
    # a box somewhere else holds none of the object: what it returns scores lower
    far, s_far = segmenter.refine(img, None, box=(2.0, 2.0, 40.0, 40.0), label="disc")
    assert not far.any() or s_far < score - 0.2


def test_a_positive_click_on_a_missed_part_adds_it_and_keeps_the_rest():
    # refining a mask that found one of two parts: a click on the other adds it; the found part stays
    from dcsam.prompting import refine_mask

    img, [part_a, part_b] = _scene(8, [(70, 55, 26), (90, 150, 28)])
    mask, _ = refine_mask(None, img, [(150.0, 90.0, True)], None, None, mask=part_a)
    assert mask[part_a].mean() > 0.9 and mask[part_b].mean() > 0.8
    assert iou(mask, part_a | part_b) > 0.8
