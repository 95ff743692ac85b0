"""The zoom window of lite video propagation: where a shrunken object is matched again, how large."""

import numpy as np
import pytest

from dcsam.video.lite_zoom import MAX_ZOOM, MIN_ZOOM, zoom_window


def box_mask(h, w, top, left, bh, bw):
    m = np.zeros((h, w), bool)
    m[top : top + bh, left : left + bw] = True
    return m


def test_no_window_while_the_object_keeps_its_size():
    mask = box_mask(480, 854, 100, 300, 100, 100)
    labelled = float(mask.mean())
    assert zoom_window(mask, labelled, 0.9, 432 * 768) is None
    assert zoom_window(mask, labelled * MIN_ZOOM**2 * 0.95, 0.9, 432 * 768) is None  # just under the least zoom
    assert zoom_window(np.zeros_like(mask), labelled, 0.9, 432 * 768) is None


def test_the_window_restores_the_labelled_size_around_the_mask():
    mask = box_mask(480, 854, 200, 400, 40, 60)
    labelled = 4 * float(mask.mean())  # labelled twice as large, linearly
    win = zoom_window(mask, labelled, 0.9, 432 * 768)
    assert win is not None and win.zoom == pytest.approx(2.0)
    # the mask's box and half its size beyond each side (plus a few pixels)
    assert win.top <= 200 - 20 and win.bottom >= 240 + 20 and win.left <= 400 - 30 and win.right >= 460 + 30
    assert win.top >= 200 - 40 and win.bottom <= 240 + 40
    side = max(win.bottom - win.top, win.right - win.left)
    assert win.long_side == round(side * 0.9 * 2.0)
    crop = win.crop(np.arange(480 * 854).reshape(480, 854))
    assert crop.shape == (win.bottom - win.top, win.right - win.left)
    assert crop.flags["C_CONTIGUOUS"]


def test_zoom_is_capped_and_the_window_clipped_to_the_frame():
    mask = box_mask(480, 854, 0, 0, 10, 10)
    win = zoom_window(mask, 0.5, 0.9, 432 * 768)
    assert win is not None and win.zoom == pytest.approx(MAX_ZOOM)
    assert win.top == 0 and win.left == 0 and win.bottom <= 30 and win.right <= 30


def test_a_large_window_is_enlarged_less_or_not_at_all():
    frame_pixels = 432 * 768  # the frame's pass: 854x480 at 0.9
    mask = box_mask(480, 854, 200, 400, 60, 100)
    win = zoom_window(mask, 0.5, 0.9, frame_pixels)  # 5.8 times smaller: the cap (3) would apply
    assert win is not None and MIN_ZOOM < win.zoom < MAX_ZOOM  # but the window's cost cuts it further
    cost = (win.bottom - win.top) * (win.right - win.left) * (0.9 * win.zoom) ** 2
    assert cost == pytest.approx(0.5 * frame_pixels, rel=1e-6)
    # shrunk from a frame-filling object: its window is the frame, enlarging it would cost too much
    assert zoom_window(box_mask(480, 854, 60, 100, 300, 600), 0.95, 0.9, frame_pixels) is None


def test_paste_replaces_only_the_window():
    mask = box_mask(100, 100, 40, 40, 10, 10)
    win = zoom_window(mask, 0.04, 1.0, 100 * 100)
    assert win is not None
    other = box_mask(100, 100, 0, 90, 5, 5)  # a part outside the window stays
    out = win.paste(mask | other, np.zeros((win.bottom - win.top, win.right - win.left), bool))
    assert not out[win.top : win.bottom, win.left : win.right].any()
    assert (out == (other & ~box_mask(100, 100, win.top, win.left, win.bottom - win.top, win.right - win.left))).all()
