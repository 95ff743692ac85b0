"""The colour boundary: a mask's edge moved to where the image's own colours change."""

import numpy as np

from dcsam.lite.boundary import BAND, snap_to_colour
from dcsam.lite.postprocess import ColourModel
from dcsam.masks import iou

RNG = np.random.default_rng(0)
CELL = 8.0  # the band reaches round(BAND x 8) = 4 pixels beyond the edge


def scene(object_colour, background_colour, noise=12):
    """A 120x160 image: a 40x60 rectangle of one colour on another, with pixel noise; its mask."""
    img = np.empty((120, 160, 3), np.float64)
    img[:] = background_colour
    truth = np.zeros((120, 160), bool)
    truth[40:80, 50:110] = True
    img[truth] = object_colour
    img += RNG.normal(0, noise, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), truth


def shifted(mask, dy, dx):
    return np.roll(np.roll(mask, dy, 0), dx, 1)


def test_a_mask_short_of_its_object_grows_to_the_colour_change():
    img, truth = scene((200, 60, 40), (40, 120, 60))
    assert round(BAND * CELL) == 4
    for dy, dx in [(3, 0), (0, -3), (2, 3)]:  # a cell's edge a few pixels off: short on one side
        off = shifted(truth, dy, dx)
        snapped = snap_to_colour(img, off, CELL)
        # the part it fell short of joins (but for a few pixels at the corners, see below)
        assert (truth & ~snapped).sum() <= 16, (dy, dx)  # measured 9-10
        # beyond the object it only loses its outermost pixel: the inside is kept
        assert (off & ~truth).sum() - (snapped & ~truth).sum() <= 2 * 60 + 2 * 40
        assert not (snapped & ~off & ~truth).any()  # nothing of the background joins
    short = truth & shifted(truth, 3, 3) & shifted(truth, -3, -3)  # 3 pixels short all round
    assert iou(short, truth) < 0.82 and iou(snap_to_colour(img, short, CELL), truth) > 0.97  # measured 0.98


def test_a_mask_on_a_sharp_edge_keeps_its_outermost_pixels():
    """The evidence is smoothed by a median: an edge pixel's 5x5 neighbourhood is mostly its own side,
    so it stays; only a corner's few pixels, whose neighbourhood is mostly background, may go. (A blur
    mixed every edge pixel with the background beside it: 38 pixels lost, IoU 0.984.)"""
    img, truth = scene((200, 60, 40), (40, 120, 60))
    snapped = snap_to_colour(img, truth, CELL)
    assert not (snapped & ~truth).any()
    assert (truth & ~snapped).sum() <= 4 * 4  # measured 12
    assert iou(snapped, truth) > 0.99


def test_no_colour_difference_no_change_beyond_the_band():
    img, truth = scene((90, 90, 90), (90, 90, 90))  # the object looks like its surroundings
    off = shifted(truth, 3, 3)
    snapped = snap_to_colour(img, off, CELL)
    # nothing outside the band joins; inside it the colours cannot tell, so the edge may only move within it
    band = np.zeros_like(off)
    band[max(0, 40 + 3 - 5) : 80 + 3 + 5, 50 + 3 - 5 : 110 + 3 + 5] = True
    assert not (snapped & ~band).any()
    assert snapped[40 + 3 + 2 : 80 + 3 - 2, 50 + 3 + 2 : 110 + 3 - 2].all()  # the inside is kept


def test_only_what_connects_to_the_mask_joins():
    img, truth = scene((200, 60, 40), (40, 120, 60))
    img[10:14, 10:14] = (200, 60, 40)  # a patch of the object's colour far from the mask
    img[40:80, 114:116] = (200, 60, 40)  # and one in the band, but apart from the object (a gap)
    snapped = snap_to_colour(img, truth, CELL)
    assert not snapped[10:14, 10:14].any()
    assert not snapped[40:80, 114:116].any()


def test_empty_or_tiny_masks_are_returned_as_they_are():
    img, truth = scene((200, 60, 40), (40, 120, 60))
    empty = np.zeros_like(truth)
    assert not snap_to_colour(img, empty, CELL).any()
    tiny = np.zeros_like(truth)
    tiny[60:63, 80:83] = True  # too few pixels inside to know the object's colours
    assert (snap_to_colour(img, tiny, CELL) == tiny).all()


def test_colour_model_background_region_and_raw_histograms():
    img = np.zeros((4, 4, 3), np.uint8)
    img[:2] = (255, 0, 0)
    fg = np.zeros((4, 4), bool)
    fg[:2] = True
    bg = np.zeros((4, 4), bool)
    bg[3] = True  # row 2 (black too) is neither
    model = ColourModel(bins=4).add(img, fg, bg)
    assert model.fg.sum() == 8 and model.bg.sum() == 4
    raw, smoothed = model.log_ratio_table(smooth=False), model.log_ratio_table()
    red, black = 3 * 16, 0
    assert raw[red] > 0 > raw[black]
    # blurred across bins, each colour's evidence leaks to its neighbours: a neighbour of red
    # that no pixel has is neutral in the raw table and leans to object in the smoothed one
    neighbour = 2 * 16
    assert abs(raw[neighbour]) < 0.1 and smoothed[neighbour] > 0.5
