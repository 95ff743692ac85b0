import numpy as np
import pytest

from dcsam.masks import iou, resize_mask


def test_resize_mask_is_nearest_and_binary():
    m = np.zeros((4, 4), bool)
    m[:2, :2] = True
    big = resize_mask(m, 8, 6)
    assert big.shape == (8, 6) and big.dtype == bool
    assert big[:4, :3].all() and not big[4:].any() and not big[:, 3:].any()
    same = resize_mask(m, 4, 4)
    assert same is not m and (same == m).all()


def test_iou_convention_and_values():
    a = np.zeros((3, 3), bool)
    assert iou(a, a) == 1.0  # both empty: perfect agreement
    b = a.copy()
    b[0, 0] = True
    assert iou(a, b) == 0.0
    c = b.copy()
    c[0, 1] = True
    assert iou(b, c) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        iou(a, np.zeros((2, 2), bool))
