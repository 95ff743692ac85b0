"""One small class per mask control tag: mask -> Label Studio region, and region -> mask (for examples).

* ``BrushLabels``   -> ``value.rle``: Label Studio's brush RLE (label-studio-sdk's encoder / decoder).
* ``BitmaskLabels`` -> ``value.imageDataURL``: an image-sized PNG, black, alpha = mask.
* ``PolygonLabels`` -> ``value.points``: the outer contour of the largest component, in percent.

Every region carries the native ``original_width`` / ``original_height`` of the task's image.
"""

from __future__ import annotations

import base64
import io
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from typing import Any

import cv2
import numpy as np
from PIL import Image

from dcsam.masks import resize_mask

from .labelconfig import ControlTag


class RegionError(ValueError):
    """An annotation region that cannot be turned into a mask."""


def region_id() -> str:
    return uuid.uuid4().hex[:10]


def region_labels(region: dict, control_type: str) -> list[str]:
    value = region.get("value") or {}
    labels = value.get(control_type) or value.get("labels") or []
    return [lab for lab in labels if isinstance(lab, str)]


def _region_size(region: dict) -> tuple[int, int]:
    try:
        width, height = int(region["original_width"]), int(region["original_height"])
    except (KeyError, TypeError, ValueError) as exc:
        raise RegionError("region without original_width / original_height") from exc
    if width <= 0 or height <= 0:
        raise RegionError(f"region has an invalid size {width}x{height}")
    return width, height


class MaskOutput(ABC):
    """Writes predicted masks as regions of one control, and reads that control's annotations."""

    type: str = ""

    def __init__(self, control: ControlTag):
        self.control = control

    def region(self, mask: np.ndarray, label: str, score: float | None = None) -> dict | None:
        """One region for ``mask`` (bool HxW at the image's native size), or None when it is empty."""
        if mask.ndim != 2:
            raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
        if not mask.any():
            return None
        value = self.encode(mask.astype(bool))
        if value is None:
            return None
        value[self.type] = [label]
        height, width = mask.shape
        region: dict[str, Any] = {
            "id": region_id(),
            "from_name": self.control.name,
            "to_name": self.control.to_name,
            "type": self.type,
            "original_width": int(width),
            "original_height": int(height),
            "image_rotation": 0,
            "value": value,
            "readonly": False,
        }
        if score is not None:
            region["score"] = float(score)
        return region

    @abstractmethod
    def encode(self, mask: np.ndarray) -> dict | None:
        """The region's ``value`` without the label list (None when nothing can be drawn)."""

    @abstractmethod
    def decode(self, region: dict) -> np.ndarray:
        """The bool mask (original_height x original_width) drawn by an annotation region."""


class BrushOutput(MaskOutput):
    type = "brushlabels"

    def encode(self, mask: np.ndarray) -> dict:
        from label_studio_sdk.converter.brush import mask2rle

        return {"format": "rle", "rle": [int(b) for b in mask2rle(mask.astype(np.uint8) * 255)]}

    def decode(self, region: dict) -> np.ndarray:
        from label_studio_sdk.converter.brush import decode_rle

        width, height = _region_size(region)
        rle = (region.get("value") or {}).get("rle")
        if not isinstance(rle, list) or not rle:
            raise RegionError("brush region without an RLE")
        try:
            flat = np.asarray(decode_rle(rle), dtype=np.uint8)
        except Exception as exc:
            raise RegionError(f"brush RLE cannot be decoded ({type(exc).__name__}: {exc})") from exc
        if flat.size != width * height * 4:
            raise RegionError(f"brush RLE holds {flat.size} values, expected {width}x{height}x4")
        return flat.reshape(height, width, 4)[:, :, 3] > 0


class BitmaskOutput(MaskOutput):
    type = "bitmasklabels"

    def encode(self, mask: np.ndarray) -> dict:
        rgba = np.zeros((*mask.shape, 4), dtype=np.uint8)
        rgba[..., 3] = mask.astype(np.uint8) * 255
        buf = io.BytesIO()
        Image.fromarray(rgba, mode="RGBA").save(buf, format="PNG", optimize=False, compress_level=6)
        return {"imageDataURL": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")}

    def decode(self, region: dict) -> np.ndarray:
        width, height = _region_size(region)
        url = (region.get("value") or {}).get("imageDataURL")
        if not isinstance(url, str) or "," not in url or not url.startswith("data:image/"):
            raise RegionError("bitmask region without a data:image/... URL")
        try:
            img = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1], validate=False)))
            img.load()
        except Exception as exc:
            raise RegionError(f"bitmask PNG cannot be decoded ({exc})") from exc
        if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
            mask = np.asarray(img.convert("RGBA"))[..., 3] > 0
        else:
            mask = np.asarray(img.convert("L")) > 0
        if mask.shape != (height, width):
            mask = resize_mask(mask, height, width)
        return mask


class PolygonOutput(MaskOutput):
    type = "polygonlabels"
    tolerance_px = 1.0  # Douglas-Peucker tolerance

    def encode(self, mask: np.ndarray) -> dict | None:
        height, width = mask.shape
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        if not contours:
            return None
        largest = max(contours, key=cv2.contourArea)
        approx = cv2.approxPolyDP(largest, self.tolerance_px, True).reshape(-1, 2)
        if len(approx) < 3:
            return None
        points = [[round(float(x) / width * 100.0, 4), round(float(y) / height * 100.0, 4)] for x, y in approx]
        return {"points": points, "closed": True}

    def decode(self, region: dict) -> np.ndarray:
        width, height = _region_size(region)
        points = (region.get("value") or {}).get("points")
        try:
            pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        except (TypeError, ValueError) as exc:
            raise RegionError("polygon region with malformed points") from exc
        if len(pts) < 3:
            raise RegionError("polygon region with fewer than 3 points")
        px = np.stack([pts[:, 0] / 100.0 * width, pts[:, 1] / 100.0 * height], axis=1)
        mask = np.zeros((height, width), dtype=np.uint8)
        cv2.fillPoly(mask, [np.round(px).astype(np.int32)], 1)
        return mask > 0


OUTPUTS: dict[str, type[MaskOutput]] = {cls.type: cls for cls in (BrushOutput, BitmaskOutput, PolygonOutput)}


def output_for(control: ControlTag) -> MaskOutput:
    try:
        return OUTPUTS[control.type](control)
    except KeyError:
        raise ValueError(f"no output writer for <{control.type}>") from None


def mask_regions(
    masks: Mapping[str, np.ndarray],
    scores: Mapping[str, float],
    targets: Iterable[tuple[str, ControlTag, str]],
    min_score: float,
) -> list[dict]:
    """Regions for the predicted masks: one per (key, control, label) target whose mask exists and scores
    at least ``min_score``, in the control's output format (an empty mask gives no region)."""
    regions = []
    for key, control, label in targets:
        mask, score = masks.get(key), float(scores.get(key, 0.0))
        if mask is None or score < min_score:
            continue
        region = output_for(control).region(mask, label, score)
        if region is not None:
            regions.append(region)
    return regions


def annotation_mask(control: ControlTag, result: list, label: str) -> np.ndarray | None:
    """Union of ``control``'s regions labelled ``label`` in an annotation result (None if there are none).

    Regions of another size than the first one are resized to it (nearest neighbour).
    """
    out = output_for(control)
    mask: np.ndarray | None = None
    for region in result or []:
        if not isinstance(region, dict) or region.get("from_name") != control.name:
            continue
        if region.get("type", control.type).lower() != control.type or label not in region_labels(region, control.type):
            continue
        m = out.decode(region)
        if mask is None:
            mask = m
        else:
            if m.shape != mask.shape:
                m = resize_mask(m, mask.shape[0], mask.shape[1])
            mask |= m
    return mask


# -- video ----------------------------------------------------------------------------------------
PercentBox = tuple[float, float, float, float]  # x, y, width, height in percent of the frame


def mask_box(mask: np.ndarray) -> PercentBox | None:
    """The mask's bounding box in percent of its frame (None when the mask is empty)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    height, width = mask.shape
    x0, x1, y0, y1 = cols[0], cols[-1] + 1, rows[0], rows[-1] + 1
    return (x0 / width * 100.0, y0 / height * 100.0, (x1 - x0) / width * 100.0, (y1 - y0) / height * 100.0)


def _keep_keyframes(boxes: list[PercentBox], tolerance: float) -> list[int]:
    """Indices to keep so that linear interpolation between them stays within ``tolerance`` (percent)
    of every box: Douglas-Peucker on the 4-d signal; the first and last are always kept."""
    keep = {0, len(boxes) - 1}
    stack = [(0, len(boxes) - 1)]
    arr = np.asarray(boxes, dtype=np.float64)
    while stack:
        a, b = stack.pop()
        if b - a < 2:
            continue
        t = (np.arange(a + 1, b) - a) / (b - a)
        interp = arr[a] + t[:, None] * (arr[b] - arr[a])
        err = np.abs(arr[a + 1 : b] - interp).max(axis=1)
        worst = int(err.argmax())
        if err[worst] > tolerance:
            mid = a + 1 + worst
            keep.add(mid)
            stack += [(a, mid), (mid, b)]
    return sorted(keep)


class VideoRectangleOutput:
    """``<VideoRectangle>`` tracks: one region per label, boxes from the masks of every frame.

    Keyframes use Label Studio's conventions (its 1.23 editor's serialisation): 1-based ``frame``,
    ``time = frame / framerate``, percent coordinates; frames Label Studio can interpolate within
    ``tolerance`` percent are left out; the last keyframe of each visible stretch has
    ``enabled: false`` (the track ends there and starts again at the next keyframe).
    """

    type = "videorectangle"

    def __init__(self, control: ControlTag, tolerance: float = 0.5):
        self.control = control
        self.tolerance = tolerance

    def region(self, boxes: list[PercentBox | None], label: str, score: float, framerate: float) -> dict | None:
        """``boxes[i]``: the box of decoded frame ``i`` (0-based), None where the object is not seen."""
        sequence: list[dict] = []
        i, n = 0, len(boxes)
        while i < n:
            if boxes[i] is None:
                i += 1
                continue
            j = i
            while j + 1 < n and boxes[j + 1] is not None:
                j += 1
            run = boxes[i : j + 1]
            kept = _keep_keyframes(run, self.tolerance)
            for k in kept:
                x, y, w, h = run[k]
                frame = i + k + 1
                sequence.append(
                    {
                        "frame": frame,
                        "enabled": k != kept[-1],
                        "rotation": 0,
                        "x": round(x, 4),
                        "y": round(y, 4),
                        "width": round(w, 4),
                        "height": round(h, 4),
                        "time": round(frame / framerate, 6),
                    }
                )
            i = j + 1
        if not sequence:
            return None
        return {
            "id": region_id(),
            "from_name": self.control.name,
            "to_name": self.control.to_name,
            "type": self.type,
            "origin": "prediction",
            "value": {"framesCount": n, "duration": round(n / framerate, 6), "sequence": sequence, "labels": [label]},
            "score": float(score),
        }

    def first_box(self, result: list, label: str) -> tuple[int, PercentBox] | None:
        """(0-based frame, box in percent) of the first visible keyframe of ``label`` in an annotation
        result, or None when there is no such track."""
        best: tuple[int, PercentBox] | None = None
        for region in result or []:
            if not isinstance(region, dict) or region.get("from_name") != self.control.name:
                continue
            value = region.get("value") or {}
            if label not in [lab for lab in value.get("labels") or [] if isinstance(lab, str)]:
                continue
            for kf in value.get("sequence") or []:
                try:
                    frame = int(kf["frame"])
                    box = (float(kf["x"]), float(kf["y"]), float(kf["width"]), float(kf["height"]))
                except (KeyError, TypeError, ValueError):
                    continue
                if frame >= 1 and box[2] > 0 and box[3] > 0 and (best is None or frame - 1 < best[0]):
                    best = (frame - 1, box)
        return best
