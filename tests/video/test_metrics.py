"""DAVIS J / F metrics on hand-built masks."""

import numpy as np
import pytest

from dcsam.masks import iou
from dcsam.video.metrics import (
    ALL_FRAMES,
    DAVIS_FRAMES,
    SKIP_FIRST,
    SequenceScores,
    benchmark_means,
    boundary_measure,
    boundary_pixels,
    disk,
    scored_frames,
    seg2bmap,
    statistics,
)


def square(shape=(100, 120), top=20, left=30, size=40):
    m = np.zeros(shape, bool)
    m[top : top + size, left : left + size] = True
    return m


def test_region_similarity_hand_values():
    a = square()
    assert iou(a, a) == 1.0
    assert iou(np.zeros_like(a), np.zeros_like(a)) == 1.0  # empty vs empty counts as 1
    assert iou(np.zeros_like(a), a) == 0.0
    b = square(left=50)  # 40x40 squares overlapping on 40x20
    assert iou(a, b) == pytest.approx(800 / (1600 + 1600 - 800))
    with pytest.raises(ValueError):
        iou(a, a[:50])


def test_seg2bmap_is_the_one_pixel_outline():
    b = seg2bmap(square(top=10, left=10, size=5))
    # the toolkit marks a pixel that differs from its east / south / south-east neighbour: the
    # ring runs just outside the top/left sides and on the bottom/right rows of the square
    ring = np.zeros_like(b)
    ring[9:15, 9:15] = True
    ring[10:14, 10:14] = False
    assert (b == ring).all() and b.sum() == 20
    assert not seg2bmap(np.zeros((8, 8), bool)).any()


def test_boundary_tolerance_is_davis_rounding():
    assert boundary_pixels((480, 854)) == 8  # ceil(0.008 * 979.6)
    assert boundary_pixels((512, 512)) == 6
    assert boundary_pixels((100, 100), 3) == 3  # >= 1: pixels
    assert disk(1).tolist() == [[0, 1, 0], [1, 1, 1], [0, 1, 0]]


def test_boundary_measure_hand_values():
    a = square()
    assert boundary_measure(a, a) == 1.0
    assert boundary_measure(np.zeros_like(a), np.zeros_like(a)) == 1.0
    assert boundary_measure(np.zeros_like(a), a) == 0.0  # precision 1, recall 0
    assert boundary_measure(a, np.zeros_like(a)) == 0.0
    # a 1-pixel shift stays within the tolerance (ceil(0.008 * 156) = 2 px): F = 1 while J < 1
    shifted = square(left=31)
    assert boundary_measure(shifted, a) == 1.0 and iou(shifted, a) < 1.0
    # far apart: no boundary pixel within tolerance
    assert boundary_measure(square(left=75, size=20), square(left=5, size=20)) == 0.0
    # shift by 4 px with a 2 px tolerance: the vertical sides (80 of 160 pixels) miss, the horizontal ones match
    f = boundary_measure(square(left=34), a)
    assert 0.3 < f < 0.8


def test_scored_frames_rules():
    assert scored_frames(5, DAVIS_FRAMES) == [1, 2, 3]  # first (given) and last excluded
    assert scored_frames(5, ALL_FRAMES) == [0, 1, 2, 3, 4]
    assert scored_frames(5, SKIP_FIRST) == [1, 2, 3, 4]
    assert scored_frames(5, DAVIS_FRAMES, given=2) == [0, 1, 3]
    with pytest.raises(ValueError):
        scored_frames(5, "bogus")


def test_statistics_and_means():
    st = statistics([1.0, 1.0, 0.4, 0.4, 0.2, 0.2, 0.2, 0.2])
    assert st["mean"] == pytest.approx(0.45)
    assert st["recall"] == pytest.approx(0.25)
    # the toolkit's 4 bins (edges round(linspace(1, n, 5)) - 1, inclusive) overlap: [1, 1, .4] vs [.2, .2, .2]
    assert st["decay"] == pytest.approx(0.8 - 0.2)
    s = SequenceScores("seq")
    a = square()
    s.add(1, a, a)
    s.add(2, np.zeros_like(a), a)
    row = s.summary()
    assert row["J"] == pytest.approx(0.5) and row["F"] == pytest.approx(0.5) and row["J&F"] == pytest.approx(0.5)
    means = benchmark_means([row, {**row, "J": 1.0, "F": 1.0, "J&F": 1.0}])
    assert means["J&F"] == pytest.approx(0.75)
