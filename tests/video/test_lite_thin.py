"""Thin parts: lines a pixel or two wide that hang from the object are recovered per pixel, and only
when the labelled frame shows them."""

import cv2
import numpy as np
import pytest

from dcsam.video.lite_thin import ThinParts, line_evidence

SIZE = (240, 320)  # (h, w)
SIDE = 320  # detect at the frames' own size: the lines stay a pixel wide


def _scene(
    rng: np.random.Generator, shift: tuple[int, int], lines: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, object mask, its lines' mask): a disc on a noisy green background with three dark lines
    a pixel wide fanning up from it, and a fourth line of the same colour apart from the object."""
    dx, dy = shift
    image = np.clip(rng.normal((90, 140, 80), 18, (*SIZE, 3)), 0, 255).astype(np.uint8)
    body = np.zeros(SIZE, np.uint8)
    centre = (160 + dx, 170 + dy)
    cv2.circle(body, centre, 28, 1, -1)
    thin = np.zeros(SIZE, np.uint8)
    if lines:
        for end in ((60 + dx, 20 + dy), (160 + dx, 10 + dy), (260 + dx, 25 + dy)):
            cv2.line(thin, centre, end, 1, 1)
    thin &= 1 - body
    image[body > 0] = (200, 60, 50)
    image[thin > 0] = (30, 30, 40)
    apart = np.zeros(SIZE, np.uint8)
    cv2.line(apart, (20 + dx, 230), (120 + dx, 200), 1, 1)
    image[apart > 0] = (30, 30, 40)
    return image, (body | thin) > 0, thin > 0


def _near(a: np.ndarray, b: np.ndarray, radius: int = 2) -> np.ndarray:
    """Pixels of ``a`` within ``radius`` of ``b``."""
    grown = cv2.dilate(b.astype(np.uint8), np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)) > 0
    return a & grown


def test_lines_hanging_from_the_object_are_recovered():
    rng = np.random.default_rng(0)
    image0, mask0, _ = _scene(rng, (0, 0))
    model = ThinParts.fit(image0, mask0, SIDE)
    assert model is not None and model.gain >= 0.02
    image, mask, lines = _scene(rng, (6, 4))
    coarse = mask & ~lines  # what a stride-8 matching gives: the body without its lines
    out = model.recover(image, coarse)
    assert (out & coarse).sum() == coarse.sum()  # nothing of the given mask is dropped
    added = out & ~coarse
    found = _near(lines, added).sum() / lines.sum()
    precise = _near(added, lines).sum() / max(1, added.sum())
    assert found >= 0.7 and precise >= 0.8, (found, precise)
    assert not added[190:, :].any()  # the line of the same colour that does not touch the object


def test_no_thin_parts_nothing_to_recover():
    rng = np.random.default_rng(1)
    image0, mask0, _ = _scene(rng, (0, 0), lines=False)
    assert ThinParts.fit(image0, mask0, SIDE) is None
    # thin parts in the mask that the image does not show as lines are not recovered either
    image1, body, _ = _scene(rng, (0, 0), lines=False)
    drawn = body.copy()
    cv2.line(drawn.view(np.uint8), (160, 170), (160, 20), 1, 1)
    assert ThinParts.fit(image1, drawn, SIDE) is None


def test_an_empty_mask_stays_empty():
    rng = np.random.default_rng(2)
    image0, mask0, _ = _scene(rng, (0, 0))
    model = ThinParts.fit(image0, mask0, SIDE)
    assert model is not None
    empty = np.zeros(SIZE, bool)
    assert not model.recover(image0, empty).any()


@pytest.mark.parametrize("angle", [0.0, 30.0, 45.0, 100.0, 135.0])
def test_line_evidence_adds_up_along_a_line_in_any_direction(angle):
    score = np.random.default_rng(3).normal(0, 1, (120, 160)).astype(np.float32)
    line = np.zeros((120, 160), np.uint8)
    t = np.deg2rad(angle)
    c = np.array([80, 60])
    d = 45 * np.array([np.cos(t), -np.sin(t)])
    cv2.line(line, tuple(int(v) for v in c - d), tuple(int(v) for v in c + d), 1, 1)
    score[line > 0] += 2.0  # a faint line: pixel by pixel below the noise's top percent (2.33)
    evidence = line_evidence(score, 15)
    on = evidence[line > 0].mean()
    off = np.quantile(evidence[cv2.dilate(line, np.ones((9, 9), np.uint8)) == 0], 0.99)
    assert on > off, (on, off)
