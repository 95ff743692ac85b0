"""Synthetic scenes for engine tests: an orange striped disc on a textured background."""

from __future__ import annotations

import numpy as np


def striped_disc_scene(
    seed: int, size: int, radius: int, centre: tuple[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 (size, size, 3) image, bool mask) of a disc of ``radius`` at ``centre`` (row, column), or at a
    place drawn from ``seed`` that keeps it 30 pixels inside the image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    bg = np.stack(
        [90 + 40 * np.sin(xx / 7.0 + seed), 130 + 30 * np.cos(yy / 5.0), 160 + 20 * np.sin((xx + yy) / 11.0)], -1
    )
    img = bg + rng.normal(0, 8, bg.shape)
    cy, cx = centre if centre is not None else rng.integers(30, size - 30, 2)
    mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    disc = np.stack([230 + 0 * xx, 120 + 50 * ((xx // 6) % 2), 30 + 0 * xx], -1)
    img[mask] = disc[mask] + rng.normal(0, 8, (int(mask.sum()), 3))
    return np.clip(img, 0, 255).astype(np.uint8), mask
