"""dcsam.prompting: clicks and boxes answered by refinement (the lite engine's interactive path)."""

from __future__ import annotations

import numpy as np
import pytest

from dcsam.api import InContextSegmenter
from dcsam.io import read_image, read_mask
from dcsam.masks import iou
from dcsam.prompting import refine_mask, released_by_negative_click
from tests.support.clicks import corrective_click


@pytest.fixture(scope="module")
def lite() -> InContextSegmenter:
    return InContextSegmenter.from_config(engine="lite")


@pytest.mark.parametrize("video, frame", [("car-shadow", 20), ("car-roundabout", 20)])
def test_a_negative_click_only_takes_away(lite, data_dir, video, frame):
    """A negative click on a false part of a prediction removes, it never adds: GrabCut refits its colour
    models to the new background seed and, unconstrained, flooded the road (IoU 0.91 -> 0.48 here)."""
    root = data_dir / "davis16-dev"
    lite.clear_examples()
    lite.add_examples([root / "JPEGImages" / video / "00000.jpg"], [root / "Annotations" / video / "00000.png"], video)
    img = read_image(root / "JPEGImages" / video / f"{frame:05d}.jpg")
    gt = read_mask(root / "Annotations" / video / f"{frame:05d}.png")
    [pred] = lite.predict([img], labels=[video])
    start = pred.masks[video]
    click = corrective_click(start, gt)
    assert click is not None and not click[2]  # the larger error is a false part: the click is negative
    out, score = refine_mask(lite, img, [click], label=video, mask=start, mask_score=pred.scores[video])
    x, y = round(click[0]), round(click[1])
    assert not out[y, x] and not (out & ~start).any()
    assert iou(out, gt) > 0.85 and out.sum() > 0.8 * start.sum()  # measured 0.902 / 0.944: the body stays
    assert 0.0 <= score <= 1.0


def test_a_click_near_an_edge_releases_that_side_and_one_in_the_core_the_whole_part():

    start = np.zeros((60, 100), bool)
    start[10:50, 10:50] = True  # a square body ...
    start[25:35, 50:90] = True  # ... with a bar sticking out to the right
    side = released_by_negative_click(start, 80, 30)
    assert side[30, 85] and not side[30, 20] and side.sum() < start.sum() / 2
    assert (released_by_negative_click(start, 30, 30) == start).all()  # its core: a look-alike, all of it
    assert not released_by_negative_click(start, 95, 5).any()  # outside the mask: nothing


def test_a_click_just_inside_a_large_part_releases_a_strip_not_the_part():
    """A click a few pixels inside the edge lies within the part's inscribed circle, yet it is not on its
    core: it rejects a strip along the edge on its side (a shadow under a car), not the whole car."""
    yy, xx = np.mgrid[:120, :120]
    start = (yy - 60) ** 2 + (xx - 60) ** 2 <= 40**2
    strip = released_by_negative_click(start, 60, 97)  # 3 pixels inside the bottom edge
    assert strip[99, 60] and strip[94, 60] and not strip[60, 60]
    assert not strip[:79].any() and strip.sum() < 0.1 * start.sum()  # the side below the bisector, shallow
    assert (released_by_negative_click(start, 60, 65) == start).all()  # near its centre: all of it


def test_a_click_changes_the_mask_only_near_itself(monkeypatch):
    """A positive click on a missed part adds that part; a look-alike region joined to it far from the
    click (a road as grey as the car) stays out, though GrabCut's colour models take all of it."""
    import dcsam.prompting as prompting

    rng = np.random.default_rng(0)
    img = np.zeros((160, 320, 3), np.float64)
    img[:] = (40, 60, 200)
    img[30:100, 40:110] = 128  # the object: grey
    img[100:118, 60:90] = 128  # its part the start missed
    img[118:130, :] = 128  # a grey road touching it, across the whole image
    img = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
    start = np.zeros((160, 320), bool)
    start[30:100, 40:110] = True
    click = (75.0, 109.0, True)
    out = prompting.grabcut_prompts(img, start, [click], sure_core=prompting.SURE_CORE)
    assert out[30:100, 40:110].all() and out[102:116, 64:86].all()  # the body stays, the part is added
    assert not out[118:130, 200:].any()  # the road far from the click stays out
    monkeypatch.setattr(prompting, "CLICK_REACH", 10.0)  # unbounded: the road floods in
    flooded = prompting.grabcut_prompts(img, start, [click], sure_core=prompting.SURE_CORE)
    assert flooded[118:130, 200:].mean() > 0.5
