"""Where a CVAT function's in-context examples come from: a folder of image + mask files, or a CVAT task.

Folder layouts (one label per sub-folder; the label is the sub-folder's name):

* ``DIR/<label>/<name>.<jpg|png|...>`` with its mask ``DIR/<label>/<name>.png`` (an image that is itself a
  PNG takes ``<name>_mask.png``), or ``<name>_mask.png`` next to any image;
* ``DIR/images/<label>/<name>.*`` with ``DIR/masks/<label>/<name>.png`` (the FSS-1000 layout).

A CVAT task or job: the ``mask`` and ``polygon`` shapes of the chosen frames (every annotated frame by default),
united per label and frame. The function opens its own client from the environment (see :func:`cvat_client`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dcsam.errors import InputError
from dcsam.io import read_image

from .shapes import shape_mask

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MASK_SHAPES = ("mask", "polygon")


@dataclass
class Example:
    label: str
    image: Any  # a path or an RGB array
    mask: Any  # a path or a bool array
    frame_name: str | None = None  # set for examples taken from a CVAT task


def _is_mask_file(path: Path) -> bool:
    return path.stem.endswith(("_mask", ".mask"))


def _mask_for(image: Path) -> Path | None:
    for candidate in (image.with_name(image.stem + "_mask.png"), image.with_name(image.stem + ".mask.png")):
        if candidate.is_file():
            return candidate
    if image.suffix.lower() != ".png" and image.with_suffix(".png").is_file():
        return image.with_suffix(".png")
    return None


def _pairs(images_dir: Path, masks_dir: Path | None) -> list[tuple[Path, Path]]:
    files = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    mask_files = {p for p in files if _is_mask_file(p)}
    pairs = []
    for image in files:
        if image in mask_files:
            continue
        if masks_dir is not None:
            mask = masks_dir / (image.stem + ".png")
            mask = mask if mask.is_file() else None
        else:
            mask = _mask_for(image)
        if mask is None:
            if masks_dir is not None or image.suffix.lower() != ".png" or not _has_image_twin(image, files):
                log.warning("example %s has no mask file; skipped", image)
            continue
        pairs.append((image, mask))
    return pairs


def _has_image_twin(png: Path, files: Sequence[Path]) -> bool:
    """A ``.png`` that is another image's mask (``cat.jpg`` + ``cat.png``)."""
    return any(f.stem == png.stem and f.suffix.lower() != ".png" for f in files)


def folder_examples(root: str | os.PathLike) -> list[Example]:
    """Every labelled example in ``root``; an error names the folder when it holds no image + mask pair."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise InputError(f"examples folder {root} does not exist")
    if (root / "images").is_dir() and (root / "masks").is_dir():
        labels = sorted(p for p in (root / "images").iterdir() if p.is_dir())
        found = {lab.name: _pairs(lab, root / "masks" / lab.name) for lab in labels}
    else:
        found = {lab.name: _pairs(lab, None) for lab in sorted(p for p in root.iterdir() if p.is_dir())}
    examples = [Example(label, str(img), str(msk)) for label, pairs in found.items() for img, msk in pairs]
    empty = [label for label, pairs in found.items() if not pairs]
    if empty:
        log.warning("examples folder %s: no image + mask pair for label(s) %s; skipped", root, empty)
    if not examples:
        raise InputError(
            f"examples folder {root} holds no image with a mask: expected <label>/<name>.jpg with "
            f"<label>/<name>.png (or <name>_mask.png), or images/<label>/ with masks/<label>/"
        )
    return examples


def cvat_client(host: str | None = None) -> Any:
    """An SDK client from the standard settings: ``CVAT_HOST`` (or ``CVAT_BASE_URL``) and either
    ``CVAT_ACCESS_TOKEN`` (a Personal Access Token, cvat-sdk >= 2.3x) or ``CVAT_USER`` + ``CVAT_PASSWORD``
    (``PASS``, as cvat-cli reads it)."""
    from cvat_sdk import make_client

    host = host or os.environ.get("CVAT_HOST") or os.environ.get("CVAT_BASE_URL")
    if not host:
        raise InputError("example_task needs the CVAT server: set CVAT_HOST (or pass -p cvat_host=str:URL)")
    token = os.environ.get("CVAT_ACCESS_TOKEN")
    user = os.environ.get("CVAT_USER")
    password = os.environ.get("CVAT_PASSWORD") or os.environ.get("PASS")
    if user and password:
        return make_client(host, credentials=(user, password))
    if token:
        try:
            return make_client(host, access_token=token)
        except TypeError as exc:  # SDKs before Personal Access Tokens
            raise InputError("this cvat-sdk has no access tokens: set CVAT_USER and CVAT_PASSWORD") from exc
    raise InputError("example_task needs credentials: CVAT_ACCESS_TOKEN, or CVAT_USER and CVAT_PASSWORD")


def parse_frames(text: str | None) -> list[int] | None:
    """``"0,12"`` -> ``[0, 12]``; empty -> None (every annotated frame)."""
    if text is None or not str(text).strip():
        return None
    try:
        return sorted({int(part) for part in str(text).replace(";", ",").split(",") if part.strip()})
    except ValueError as exc:
        raise InputError(f"example_frames={text!r}: give frame numbers like 0,12") from exc


def task_examples(
    client: Any, task_id: int | None, frames: Iterable[int] | None = None, job_id: int | None = None
) -> list[Example]:
    """Examples from the ``mask`` / ``polygon`` shapes of a CVAT task's frames, or of one of its jobs (frame
    numbers are the task's in both), united per label and frame."""
    job = client.jobs.retrieve(job_id) if job_id is not None else None
    if job is not None:
        task_id = job.task_id
    if task_id is None:
        raise InputError("give example_task or example_job")
    task = client.tasks.retrieve(task_id)
    names = {label.id: label.name for label in task.get_labels()}
    meta = task.get_meta()
    annotations = (job or task).get_annotations()
    wanted = set(frames) if frames is not None else None
    by_frame: dict[int, list[Any]] = {}
    for shape in annotations.shapes:
        kind = str(getattr(shape.type, "value", shape.type))
        if kind in MASK_SHAPES and (wanted is None or shape.frame in wanted):
            by_frame.setdefault(int(shape.frame), []).append((kind, shape))
    missing = sorted(wanted - set(by_frame)) if wanted is not None else []
    if missing:
        log.warning("task %d: frame(s) %s have no mask or polygon shape; not examples", task_id, missing)
    examples = []
    for frame, shapes in sorted(by_frame.items()):
        info = meta.frames[frame] if len(meta.frames) > frame else meta.frames[0]
        try:
            image = read_image(task.get_frame(frame, quality="original").read())
        except InputError as exc:
            log.error("task %d frame %d: %s; not an example", task_id, frame, exc)
            continue
        height, width = image.shape[:2]
        masks: dict[str, np.ndarray] = {}
        for kind, shape in shapes:
            label = names.get(shape.label_id)
            if label is None:
                continue
            m = shape_mask(kind, shape.points, width, height)
            masks[label] = masks[label] | m if label in masks else m
        examples += [Example(lab, image, m, frame_name=info.name) for lab, m in masks.items() if m.any()]
    if not examples:
        where = f"job {job_id}" if job_id is not None else f"task {task_id}"
        raise InputError(f"{where} has no frame with a mask or polygon shape to learn from")
    return examples
