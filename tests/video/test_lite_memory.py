"""Lite video propagation's mechanisms on synthetic clips: the space-time memory readout, re-detection
after the object leaves the frame and comes back, and state bounded over 1,000 frames."""

import numpy as np
import pytest
import torch

from dcsam import InContextSegmenter
from dcsam.masks import iou
from dcsam.video.lite import LitePropagator
from dcsam.video.lite_memory import MemoryFrame, SpaceTimeMemory


def _background(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A fixed, textured green-grey background (smoothed noise)."""
    rng = np.random.default_rng(seed)
    noise = rng.random((h // 8 + 1, w // 8 + 1, 3)).astype(np.float32)
    big = np.kron(noise, np.ones((8, 8, 1), np.float32))[:h, :w]
    base = np.array([70, 120, 80], np.float32)
    return np.clip(base + 60 * (big - 0.5), 0, 255).astype(np.uint8)


def _object(size: int) -> np.ndarray:
    """A red / yellow checkerboard square: nothing like the background."""
    yy, xx = np.mgrid[:size, :size]
    check = ((yy // 6 + xx // 6) % 2).astype(bool)
    obj = np.empty((size, size, 3), np.uint8)
    obj[check] = (220, 30, 30)
    obj[~check] = (240, 210, 40)
    return obj


def _frame(bg: np.ndarray, obj: np.ndarray, x: int, y: int) -> tuple[np.ndarray, np.ndarray]:
    """The object pasted with its top-left corner at (x, y), clipped by the frame; (image, mask)."""
    img, mask = bg.copy(), np.zeros(bg.shape[:2], bool)
    h, w = bg.shape[:2]
    s = obj.shape[0]
    x0, x1, y0, y1 = max(0, x), min(w, x + s), max(0, y), min(h, y + s)
    if x1 > x0 and y1 > y0:
        img[y0:y1, x0:x1] = obj[y0 - y : y1 - y, x0 - x : x1 - x]
        mask[y0:y1, x0:x1] = True
    return img, mask


def _leave_and_return_clip(h=160, w=256, size=40):
    """The object moves right and out of the frame, is gone for 6 frames, then comes back in from
    the left edge at another height and moves right again. Returns frames and masks."""
    bg, obj = _background(h, w), _object(size)
    xs = [120 + 16 * i for i in range(10)]  # 120 .. 264: out of the frame from x = 256
    ys = [30] * 10
    xs += [400] * 6  # gone
    ys += [30] * 6
    xs += [-size + 12 * i for i in range(1, 12)]  # back in from the left
    ys += [90] * 11
    pairs = [_frame(bg, obj, x, y) for x, y in zip(xs, ys)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


@pytest.fixture(scope="module")
def lite_engine():
    return InContextSegmenter.from_config(engine="lite").engine


def test_readout_reads_soft_labels_through_the_local_window():
    """Keys equal to a query cell's own features give its label back; the recent frames are only
    read within the radius, the anchor everywhere."""
    torch.manual_seed(0)
    c, h, w = 16, 6, 10
    feats = torch.nn.functional.normalize(torch.randn(c, h, w), dim=0)
    labels = (torch.rand(h, w) > 0.5).float()
    stm = SpaceTimeMemory(radius=2, topk=1, temperature=0.01, long_frames=0)
    stm.set_anchor(MemoryFrame.from_grid(feats, labels))
    assert torch.equal(stm.readout(feats), labels)
    # a recent frame whose features are those of the query shifted by 4 cells (beyond the radius):
    # the query can only find its twin in the anchor, so the labels stay the anchor's
    shifted = torch.roll(feats, 4, dims=2)
    stm.set_previous(MemoryFrame.from_grid(shifted, 1 - torch.roll(labels, 4, dims=1)))
    assert torch.equal(stm.readout(feats), labels)
    # the same recent frame without the anchor: only nearby cells are read, never the twins
    stm2 = SpaceTimeMemory(radius=2, topk=1, temperature=0.01, long_frames=0)
    stm2.set_previous(MemoryFrame.from_grid(shifted, torch.ones(h, w)))
    assert torch.equal(stm2.readout(feats), torch.ones(h, w))
    assert stm.frames() == 2 and stm2.frames() == 1
    stm.clear_recent()
    assert stm.frames() == 1 and torch.equal(stm.readout(feats, recent=False), labels)


@pytest.mark.parametrize("readout_weight", [0.0, 1.0])
def test_redetection_after_the_object_leaves_and_returns(lite_engine, readout_weight):
    """Lost (empty mask): the recent memory is dropped and the object is searched for everywhere,
    by the matcher against the conditioning frame and the anchor's global readout."""
    frames, masks = _leave_and_return_clip()
    prop = LitePropagator(lite_engine, {"readout_weight": readout_weight})
    prop.start(frames[0], {"obj": masks[0]})
    preds = [masks[0]] + [prop.step(f)["obj"].mask for f in frames[1:]]
    area = masks[0].size
    gone = [i for i, m in enumerate(masks) if not m.any()]
    back = [i for i, m in enumerate(masks) if i > gone[-1] and m.sum() == masks[0].sum()]
    assert len(gone) >= 5 and len(back) >= 5
    # tracked while it is there, nothing while it is gone, found again once it is back
    assert all(iou(preds[i], masks[i]) > 0.7 for i in range(1, 6)), [iou(preds[i], masks[i]) for i in range(1, 6)]
    assert all(preds[i].sum() < 0.01 * area for i in gone), [int(preds[i].sum()) for i in gone]
    ious = [iou(preds[i], masks[i]) for i in back]
    assert min(ious) > 0.7, ious


@pytest.mark.slow
def test_state_is_bounded_over_1000_frames():
    """1,000 small frames of a moving object: memory frames and held bytes stop growing."""
    seg = InContextSegmenter.from_config(engine="lite", options={"size": 128})
    h, w, size = 64, 96, 20
    bg, obj = _background(h, w), _object(size)
    path = [(int(38 + 30 * np.sin(i / 15)), int(22 + 14 * np.cos(i / 11))) for i in range(1000)]
    first, mask0 = _frame(bg, obj, *path[0])
    prop = LitePropagator(seg.engine, {"readout_weight": 1.0, "readout_long": 3, "memory_frames": 2, "memory_every": 2})
    prop.start(first, {"obj": mask0})
    sizes, frames_held = [], []
    for x, y in path[1:]:
        prop.step(_frame(bg, obj, x, y)[0])
        sizes.append(prop.state_nbytes())
        frames_held.append(prop.memory_size()["obj"])
    # anchor + previous + 3 sparse readout frames; conditioning frame + 2 matching-memory frames
    assert max(frames_held) <= 1 + 1 + 3 + 2
    assert frames_held[-1] == max(frames_held)  # the track was kept (the memory is full at the end)
    warm = max(sizes[20:200])
    assert max(sizes[200:]) <= 1.1 * warm, (warm, max(sizes[200:]))
