"""Label Studio regions and tasks for tests: brush RLE in and out, polygons, annotated tasks."""

from __future__ import annotations

import base64

import cv2
import numpy as np

from .fakes import image_bytes


def brush_region(mask: np.ndarray, label: str, from_name: str = "tag") -> dict:
    from label_studio_sdk.converter.brush import mask2rle

    h, w = mask.shape
    return {
        "id": "r1",
        "from_name": from_name,
        "to_name": "image",
        "type": "brushlabels",
        "original_width": w,
        "original_height": h,
        "image_rotation": 0,
        "value": {"format": "rle", "rle": mask2rle(mask.astype(np.uint8) * 255), "brushlabels": [label]},
    }


def brush_result(mask: np.ndarray, label: str) -> list:
    """An annotation result with one brush region (no region id: Label Studio assigns one)."""
    region = brush_region(mask, label)
    del region["id"]
    return [region]


def annotated_task(
    task_id: int,
    project: int,
    image_ref: str,
    result: list,
    *,
    key: str = "image",
    annotation_id: int | None = None,
    updated_at: str = "2026-11-01T10:00:00Z",
    cancelled: bool = False,
) -> dict:
    return {
        "id": task_id,
        "project": project,
        "data": {key: image_ref},
        "annotations": [
            {
                "id": annotation_id or task_id * 10,
                "result": result,
                "was_cancelled": cancelled,
                "updated_at": updated_at,
                "task": task_id,
                "project": project,
            }
        ],
    }


def decode_brush(region: dict) -> np.ndarray:
    from label_studio_sdk.converter.brush import decode_rle

    h, w = region["original_height"], region["original_width"]
    return np.asarray(decode_rle(region["value"]["rle"])).reshape(h, w, 4)[:, :, 3] > 0


def data_url_png(mask: np.ndarray) -> str:
    rgba = np.zeros((*mask.shape, 4), np.uint8)
    rgba[..., 3] = mask.astype(np.uint8) * 255
    return "data:image/png;base64," + base64.b64encode(image_bytes(rgba, "PNG")).decode()


def polygon_mask(points_pct, width: int, height: int) -> np.ndarray:
    pts = np.asarray(points_pct, dtype=np.float64).reshape(-1, 2) * [width / 100.0, height / 100.0]
    out = np.zeros((height, width), np.uint8)
    cv2.fillPoly(out, [np.round(pts).astype(np.int32)], 1)
    return out > 0
