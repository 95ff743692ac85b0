"""Synthetic inputs for the benchmark (fixed seed): no data set needed, the same work on every device."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def synthetic_scene(width: int, height: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A textured ellipse on a noisy gradient: uint8 RGB (H, W, 3) and its bool mask."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(40, 200, size=3).astype(np.float32)
    slope = rng.uniform(-60, 60, size=(2, 3)).astype(np.float32)
    img = base + (xx / width)[..., None] * slope[0] + (yy / height)[..., None] * slope[1]
    cx, cy = rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height
    rx, ry = rng.uniform(0.12, 0.25) * width, rng.uniform(0.12, 0.25) * height
    mask = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
    stripes = (np.sin(xx / 7.0) * 0.5 + 0.5)[..., None] * np.array([180, 40, 30], np.float32)
    img = np.where(mask[..., None], stripes + 40.0, img)
    img += rng.normal(0, 6, size=img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8), mask


def synthetic_video(
    width: int, height: int, num_frames: int, num_objects: int, rng: np.random.Generator
) -> tuple[list[np.ndarray], np.ndarray]:
    """A clip of ``num_objects`` textured shapes (ellipse, square, diamond...) moving over a noisy
    gradient, one horizontal lane each (they never overlap nor leave the frame, so no mask is ever
    empty). Returns the uint8 RGB (H, W, 3) frames and the objects' bool masks on frame 0 (K, H, W)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(50, 190, size=3).astype(np.float32)
    slope = rng.uniform(-50, 50, size=(2, 3)).astype(np.float32)
    background = (
        base
        + (xx / width)[..., None] * slope[0]
        + (yy / height)[..., None] * slope[1]
        + rng.normal(0, 8, size=(height, width, 3)).astype(np.float32)
    )
    lane = height / num_objects
    objects = []
    for _ in range(num_objects):
        rx, ry = rng.uniform(0.06, 0.12) * width, rng.uniform(0.2, 0.3) * lane
        objects.append(
            {
                "rx": rx,
                "ry": ry,
                "x0": rng.uniform(rx, width - rx),
                "vx": rng.choice([-1.0, 1.0]) * rng.uniform(0.01, 0.03) * width,  # per frame
                "colour": rng.uniform(0, 255, size=3).astype(np.float32),
                "angle": rng.uniform(0, np.pi),
            }
        )
    frames: list[np.ndarray] = []
    first: list[np.ndarray] = []
    for t in range(num_frames):
        img = background + rng.normal(0, 4, size=background.shape).astype(np.float32)
        for k, o in enumerate(objects):
            span = width - 2 * o["rx"]  # the centre bounces between rx and width - rx
            pos = (o["x0"] - o["rx"] + o["vx"] * t) % (2 * span)
            cx = o["rx"] + (pos if pos <= span else 2 * span - pos)
            cy = (k + 0.5) * lane + 0.1 * lane * np.sin(t / 5.0 + k)
            dx, dy = np.abs(xx - cx) / o["rx"], np.abs(yy - cy) / o["ry"]
            inside = (dx**2 + dy**2 <= 1.0, np.maximum(dx, dy) <= 1.0, dx + dy <= 1.0)[k % 3]
            stripes = np.sin((xx * np.cos(o["angle"]) + yy * np.sin(o["angle"])) / 5.0) * 0.2 + 0.8
            img = np.where(inside[..., None], o["colour"] * stripes[..., None], img)
            if t == 0:
                first.append(inside)
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
    return frames, np.stack(first)


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
