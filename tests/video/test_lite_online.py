"""Online fine-tuning on the conditioning frame (dcsam.video.lite_online): the augmented views, and a
fine-tuned twin that tracks while the served engine stays as it was."""

import numpy as np
import pytest

from dcsam import InContextSegmenter
from dcsam.masks import iou
from dcsam.video.lite import LitePropagator
from dcsam.video.lite_online import augmented_view, augmented_views
from tests.video.test_lite_memory import _background, _frame, _leave_and_return_clip, _object


@pytest.fixture(scope="module")
def small_engine():
    return InContextSegmenter.from_config(engine="lite", options={"size": 256}).engine


def test_augmented_views_move_and_rescale_the_object_and_keep_it():
    img, mask = _frame(_background(160, 256), _object(40), 100, 50)
    views = [augmented_view(img, mask, np.random.default_rng(seed)) for seed in range(12)]
    kept = [v for v in views if v is not None]
    assert len(kept) >= 10
    for v in kept:
        assert v.image.shape == img.shape and v.image.dtype == np.uint8 and v.mask.shape == mask.shape
        assert v.mask.sum() >= 0.25 * mask.sum()
    # the object is somewhere else or at another size in most views, and the sizes vary both ways
    assert sum(iou(v.mask, mask) < 0.8 for v in kept) >= len(kept) // 2
    areas = [v.mask.sum() / mask.sum() for v in kept]
    assert min(areas) < 0.9 and max(areas) > 1.1, areas
    assert augmented_view(img, np.zeros_like(mask), np.random.default_rng(0)) is None


def test_online_finetune_tracks_with_a_twin_and_leaves_the_served_engine(small_engine):
    frames, masks = _leave_and_return_clip()
    version = small_engine.version
    prop = LitePropagator(small_engine, {"online": True, "online_steps": 10, "views": 2})
    prop.start(frames[0], {"obj": masks[0]})
    twin = prop.engine
    assert twin is not small_engine and twin.trained and twin.head is not small_engine.head
    assert not small_engine.trained and small_engine.version == version
    ious = [iou(prop.step(frames[i])["obj"].mask, masks[i]) for i in range(1, 6)]
    assert min(ious) > 0.7, ious
    prop.start(frames[0], {"obj": masks[0]})  # the next video: a fresh twin of the served engine
    assert prop.engine is not twin and prop.served is small_engine
    off = LitePropagator(small_engine)
    off.start(frames[0], {"obj": masks[0]})
    assert off.engine is small_engine


def test_views_join_the_examples_the_same_every_time(small_engine):
    frames, masks = _leave_and_return_clip()
    prop = LitePropagator(small_engine, {"views": 3, "colour": 0.5})
    prop.start(frames[0], {"obj": masks[0]})
    assert len(prop.tracks["obj"].examples) == 3 and prop.engine is small_engine
    first = [b.fg.clone() for b in prop.tracks["obj"].examples]
    ious = [iou(prop.step(frames[i])["obj"].mask, masks[i]) for i in range(1, 6)]
    assert min(ious) > 0.7, ious
    prop.start(frames[0], {"obj": masks[0]})
    assert all(a.equal(b.fg) for a, b in zip(first, prop.tracks["obj"].examples, strict=True))
    assert len(augmented_views(frames[0], masks[0], 5, np.random.default_rng(1))) == 5
    with pytest.raises(ValueError):
        LitePropagator(small_engine, {"colour": "bright"})


def test_frames_and_views_are_encoded_at_the_video_working_size(small_engine):
    """``size`` sets the frames' working long side apart from the engine's (its images keep theirs), up
    to the frames' own long side, or the engine's size when that is larger."""
    frames, masks = _leave_and_return_clip()  # 256 x 160
    cells = {}
    for size in ("auto", 128, 200, 512):
        prop = LitePropagator(small_engine, {"size": size, "views": 1})
        prop.start(frames[0], {"obj": masks[0]})
        cond, view = prop.tracks["obj"].cond, prop.tracks["obj"].examples[0]
        assert cond is not None and view.fg.shape[1] == cond.bank.fg.shape[1]
        assert view.bg.shape[0] <= prop.opts["memory_bg"]
        cells[size] = cond.bank.fg.shape[0] + cond.bank.bg.shape[0]
        # the view at the frames' working size: its foreground cells are the frame's, give or take the
        # augmentation's scale (+-25 %, so +-56 % in area)
        assert 0.4 < view.fg.shape[0] / cond.bank.fg.shape[0] < 1.7
        res = prop.step(frames[1])["obj"]
        assert res.mask.shape == masks[1].shape and iou(res.mask, masks[1]) > 0.7
    # stride-8 grids of 256 x 160 (the engine's 256; 512 is capped at the frame's 256), 128 x 64 and
    # 192 x 128 (multiples of 32)
    assert cells == {"auto": 32 * 20, 128: 16 * 8, 200: 24 * 16, 512: 32 * 20}
    big = LitePropagator(small_engine, {"size": 512})
    big.start(np.repeat(np.repeat(frames[0], 3, 0), 3, 1), {"obj": np.repeat(np.repeat(masks[0], 3, 0), 3, 1)})
    assert big.tracks["obj"].cond.bank.fg.shape[0] + big.tracks["obj"].cond.bank.bg.shape[0] == 64 * 40
    assert small_engine.opts["size"] == 256
    for bad in ("huge", 16):
        with pytest.raises(ValueError, match="size"):
            LitePropagator(small_engine, {"size": bad})
