"""Video fixtures for tests: DAVIS frames, frame-sequence projects, mp4 files, VideoRectangle tracks."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from backend.labelstudio.outputs import mask_box
from dcsam.io import read_image, read_mask
from dcsam.masks import resize_mask

from .fakes import image_bytes
from .regions import annotated_task, brush_region


def davis_frames(data_dir: Path, video: str, n: int, long_side: int = 240):
    out = []
    for jpg in sorted((data_dir / "davis16-dev" / "JPEGImages" / video).glob("*.jpg"))[:n]:
        img = read_image(jpg)
        mask = read_mask(data_dir / "davis16-dev" / "Annotations" / video / f"{jpg.stem}.png")
        scale = long_side / max(img.shape[:2])
        size = (round(img.shape[1] * scale), round(img.shape[0] * scale))
        out.append((cv2.resize(img, size, interpolation=cv2.INTER_AREA), resize_mask(mask, size[1], size[0])))
    return out


def sequence_project(
    fake_ls,
    frames,
    video: str,
    first_id: int,
    project: int = 1,
    annotate: tuple[int, ...] = (0,),
    key: str = "video",
    frame_key: str = "frame",
) -> list[dict]:
    tasks = []
    for i, (img, mask) in enumerate(frames):
        ref = f"/data/upload/{project}/{video}_{i:05d}.jpg"
        fake_ls.files[ref] = image_bytes(img)
        task = {"id": first_id + i, "project": project, "data": {"image": ref, key: video, frame_key: i * 5}}
        if i in annotate:
            task = {**annotated_task(first_id + i, project, ref, [brush_region(mask, "car")]), "data": task["data"]}
        fake_ls.tasks.append(task)
        tasks.append({k: v for k, v in task.items() if k != "annotations"})
    return tasks


def mp4_bytes(path: Path, frames) -> bytes:
    h, w = frames[0][0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (w, h))
    for img, _ in frames:
        writer.write(cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    writer.release()
    return path.read_bytes()


def keyframe_region(mask: np.ndarray, frame: int, label: str = "car") -> dict:
    x, y, w, hgt = mask_box(mask)
    return {
        "id": "t1",
        "from_name": "box",
        "to_name": "video",
        "type": "videorectangle",
        "value": {
            "framesCount": 10,
            "duration": 0.4,
            "labels": [label],
            "sequence": [
                {
                    "frame": frame,
                    "enabled": True,
                    "rotation": 0,
                    "x": x,
                    "y": y,
                    "width": w,
                    "height": hgt,
                    "time": frame / 25,
                }
            ],
        },
    }


def track_boxes(region: dict, n: int) -> list:
    """Label Studio's view of a track: the box on every frame (linear interpolation), None outside it."""
    seq = region["value"]["sequence"]
    out = []
    for f in range(1, n + 1):
        prev = [kf for kf in seq if kf["frame"] <= f]
        if not prev or (not prev[-1]["enabled"] and prev[-1]["frame"] != f):
            out.append(None)
            continue
        a = prev[-1]
        nxt = [kf for kf in seq if kf["frame"] > f]
        if a["frame"] == f or not nxt or not a["enabled"]:
            out.append(tuple(a[p] for p in ("x", "y", "width", "height")))
            continue
        b = nxt[0]
        t = (f - a["frame"]) / (b["frame"] - a["frame"])
        out.append(tuple(a[p] + t * (b[p] - a[p]) for p in ("x", "y", "width", "height")))
    return out


def box_iou(a, b) -> float:
    ax1, ay1, bx1, by1 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw, ih = max(0.0, min(ax1, bx1) - max(a[0], b[0])), max(0.0, min(ay1, by1) - max(a[1], b[1]))
    inter = iw * ih
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)
