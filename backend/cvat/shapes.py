"""CVAT's shape encodings, mask <-> shape, in absolute pixels.

* ``mask``: cvat-sdk's own ``encode_mask`` / ``decode_mask`` (run lengths over the inclusive bounding box,
  starting with background, then ``[x1, y1, x2, y2]``), what the SDK's driver and agents upload.
* ``polygon``: ``[x1, y1, x2, y2, ...]``; one polygon per connected part of a mask (CVAT has no holes in
  polygons, so a part's holes are filled).
* Nuclio detectors answer a mask as the flat 0/1 bitmap of its inclusive bounding box followed by that box;
  CVAT's server turns it into its RLE (``lambda_manager``), and takes ``points`` (a polygon) instead when the
  user asked for polygons.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from dcsam.errors import InputError

POLYGON_TOLERANCE_PX = 1.0  # Douglas-Peucker tolerance: a pixel, as the Label Studio polygons
MIN_POLYGON_AREA_PX = 4.0  # parts smaller than this are noise, not objects


def mask_points(mask: np.ndarray) -> list[float]:
    """CVAT ``mask`` shape points of a non-empty bool mask (the SDK's encoder)."""
    from cvat_sdk.masks import encode_mask

    mask = np.asarray(mask, dtype=bool)
    x1, y1, x2, y2 = box(mask)
    # The box is given: cvat-sdk 2.23's encoder requires it (exclusive end), later ones accept it.
    return [float(v) for v in encode_mask(mask, [x1, y1, x2 + 1, y2 + 1])]


def polygons(mask: np.ndarray) -> list[list[float]]:
    """One flat ``[x1, y1, ...]`` polygon per connected part of ``mask`` (largest first)."""
    contours, _ = cv2.findContours(np.asarray(mask, dtype=np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    out: list[tuple[float, list[float]]] = []
    for contour in contours:
        area = float(cv2.contourArea(contour))
        if area < MIN_POLYGON_AREA_PX:
            continue
        approx = cv2.approxPolyDP(contour, POLYGON_TOLERANCE_PX, True).reshape(-1, 2)
        if len(approx) >= 3:
            out.append((area, [float(v) for v in approx.ravel()]))
    return [points for _, points in sorted(out, key=lambda item: -item[0])]


def box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """The inclusive bounding box ``(x1, y1, x2, y2)`` of a non-empty mask."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])


def nuclio_mask(mask: np.ndarray) -> list[int]:
    """A Nuclio detector's ``mask``: the 0/1 bitmap of the inclusive box, row by row, then the box."""
    x1, y1, x2, y2 = box(mask)
    bits = np.asarray(mask[y1 : y2 + 1, x1 : x2 + 1], dtype=np.uint8).ravel().tolist()
    return bits + [x1, y1, x2, y2]


def shape_mask(shape_type: str, points: Sequence[float], width: int, height: int) -> np.ndarray:
    """The bool (height, width) mask a CVAT ``mask`` or ``polygon`` shape covers."""
    if shape_type == "mask":
        from cvat_sdk.masks import decode_mask

        try:
            return np.asarray(decode_mask(list(points), image_width=width, image_height=height), dtype=bool)
        except ValueError as exc:
            raise InputError(f"mask shape cannot be decoded: {exc}") from exc
    if shape_type == "polygon":
        pts = np.asarray(points, dtype=np.float64)
        if pts.size < 6 or pts.size % 2:
            raise InputError(f"polygon shape with {pts.size} coordinates (needs pairs, at least 3 points)")
        canvas = np.zeros((height, width), dtype=np.uint8)
        cv2.fillPoly(canvas, [np.round(pts.reshape(-1, 2)).astype(np.int32)], 1)
        return canvas > 0
    raise InputError(f"a {shape_type!r} shape has no mask: use a mask or a polygon")
