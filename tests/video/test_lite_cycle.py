"""The cycle-consistent cut: the conditioning frame, predicted back from a candidate cut of a frame,
picks the bias that labels the frame's object and background as the conditioning frame does."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dcsam.video.lite_cycle import CycleAnchor, cycle_bias

GRID = (12, 12)
OBJECT = (slice(3, 8), slice(3, 8))  # a 5x5 block of cells


def _feats(kinds: np.ndarray, seed: int) -> torch.Tensor:
    """(C, h, w) unit features: each cell near the basis vector of its kind (0 object, 1 and 2
    two backgrounds), with a little noise."""
    g = torch.Generator().manual_seed(seed)
    base = torch.eye(8)[torch.from_numpy(kinds).long()]  # (h, w, 8)
    noisy = base + 0.05 * torch.randn(*base.shape, generator=g)
    return F.normalize(noisy, dim=-1).permute(2, 0, 1).contiguous()


def _scene() -> np.ndarray:
    kinds = np.ones(GRID, np.int64)
    kinds[:, 6:] = 2
    kinds[OBJECT] = 0
    return kinds


@pytest.fixture
def anchor() -> CycleAnchor:
    frac = np.zeros(GRID, np.float32)
    frac[OBJECT] = 1.0
    return CycleAnchor.from_grid(_feats(_scene(), seed=0), frac)


def _logit(inside: float, outside: float) -> torch.Tensor:
    z = torch.full(GRID, outside)
    z[OBJECT] = inside
    return z


def test_a_right_cut_is_kept(anchor):
    bias, iou = cycle_bias(anchor, _feats(_scene(), seed=1), _logit(3.0, -3.0), k=3)
    assert bias == 0.0
    assert iou == pytest.approx(1.0)


def test_the_cut_is_the_decoders_threshold(anchor):
    # a decoder that thresholds at logit 2: the same scene shifted by 2 is cut right as it is
    z = _logit(3.0, -4.0) + 2.0
    z[6:8, 3:8] = 1.3  # object cells just below that threshold
    bias, _ = cycle_bias(anchor, _feats(_scene(), seed=1), z, k=3, cut=2.0)
    assert bias == 1.0


def test_object_cells_just_below_the_cut_are_taken_back(anchor):
    z = _logit(3.0, -4.0)
    z[6:8, 3:8] = -0.7  # the lower part of the object scores just below the cut
    bias, iou = cycle_bias(anchor, _feats(_scene(), seed=1), z, k=3)
    assert bias == 1.0  # the smallest candidate that takes them (larger ones only cost the penalty)
    assert iou == pytest.approx(1.0)


def test_background_just_above_the_cut_is_dropped(anchor):
    z = _logit(3.0, -4.0)
    z[0:2, 0:12] = 0.8  # two rows of background claimed as object
    bias, _ = cycle_bias(anchor, _feats(_scene(), seed=1), z, k=3)
    assert bias == -1.0


def test_a_mostly_hidden_object_is_not_grown_into_its_surroundings(anchor):
    # two cells of the object are seen; look-alikes around them score a little below the cut and,
    # taken, would let the conditioning frame's object find "object": the growth limit forbids it
    kinds = _scene()
    kinds[OBJECT] = 1
    kinds[3, 3:5] = 0
    z = torch.full(GRID, -4.0)
    z[3, 3:5] = 3.0
    z[4:8, 3:8] = -1.2
    feats = _feats(kinds, seed=1)
    look_alike = F.normalize(torch.eye(8)[0] + 0.5 * torch.eye(8)[1], dim=0)
    feats[:, 4:8, 3:8] = look_alike[:, None, None]
    base_area = float((z > 0).float().mean())
    bias, _ = cycle_bias(anchor, feats, z, k=3, growth=2.0)
    assert float((z + bias > 0).float().mean()) <= 2.0 * base_area
    unlimited, _ = cycle_bias(anchor, feats, z, k=3, growth=100.0)
    assert unlimited >= 1.5  # without the limit the reconstruction would take them


def test_anchor_keeps_every_object_cell_and_weights_a_background_subsample():
    kinds = _scene()
    frac = (kinds == 0).astype(np.float32)
    a = CycleAnchor.from_grid(_feats(kinds, seed=0), frac, max_background=20)
    n_obj, n_bg = int(frac.sum()), frac.size - int(frac.sum())
    assert int(a.foreground.sum()) == n_obj
    assert a.foreground.numel() == n_obj + 20 <= a.rows.shape[0]  # (bfloat16 rows may be padded)
    assert float(a.weight.sum()) == pytest.approx(frac.size)  # the rows stand for the whole frame
    assert float(a.weight[~a.foreground].sum()) == pytest.approx(n_bg)
