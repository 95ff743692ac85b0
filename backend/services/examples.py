"""In-context examples per project: the latest accepted annotations of each label of each mask control.

An accepted annotation is a submitted one: not cancelled (drafts are not annotations in Label Studio).
Their features are computed once and cached per project, in memory, by the project's segmenter. The
cache is re-checked against Label Studio when a webhook bumped the project's revision (annotation
created / updated / deleted) and, as a safety net for lost webhooks, at most every
``DCSAM_EXAMPLES_RECHECK_S`` seconds by comparing the annotations' ids and ``updated_at``. At most
``DCSAM_MAX_PROJECTS_IN_MEMORY`` projects are held; the least recently used one is dropped first (its
examples are encoded again when it is next used).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from dcsam.api import InContextSegmenter
from dcsam.errors import DcsamError

from ..labelstudio.annotations import accepted_annotations, control_labels
from ..labelstudio.labelconfig import TRACK_CONTROL_TYPES, ControlTag, LabelConfig
from ..labelstudio.media import LabelStudioAccess, LabelStudioError, MediaError, decode_image
from ..labelstudio.outputs import RegionError, annotation_mask
from ..store import ExampleStore, ProjectStore
from .runtime import ModelRuntime
from .tracks import box_to_mask, track_frame

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExampleRef:
    control: str
    label: str
    annotation_id: int
    task_id: int
    updated_at: str
    image_ref: str
    result: tuple = field(compare=False, hash=False, repr=False)


def example_key(control: str, label: str) -> str:
    """The segmenter's label key for (control, label)."""
    return f"{control}\x1f{label}"


THUMB_SIDE = 160  # px, the long side of an example's thumbnail (the status page shows them small)
THUMB_TINT = np.array([255, 96, 0], dtype=np.float32)  # the mask's colour on a thumbnail


def thumbnail_jpeg(image: np.ndarray, mask: np.ndarray) -> bytes:
    """A small JPEG of an example: the image with its mask tinted (a few KB)."""
    h, w = image.shape[:2]
    scale = min(1.0, THUMB_SIDE / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = np.asarray(Image.fromarray(np.ascontiguousarray(image[..., :3])).resize(size, Image.BILINEAR), np.float32)
    m = np.asarray(Image.fromarray(np.asarray(mask, bool).astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 0
    small[m] = 0.45 * small[m] + 0.55 * THUMB_TINT
    buf = io.BytesIO()
    Image.fromarray(small.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=80)
    return buf.getvalue()


def _thumb_name(annotation_id: int, key: str) -> str:
    # ints and a hash only: labels are untrusted text and never become part of a path
    return f"{int(annotation_id)}-{hashlib.sha1(key.encode('utf-8', 'surrogatepass')).hexdigest()[:16]}.jpg"


@dataclass
class ProjectExamples:
    segmenter: InContextSegmenter | None = None
    fingerprints: dict[str, tuple] = field(default_factory=dict)  # key -> ((annotation_id, updated_at), ...) tried
    encoded: set[str] = field(default_factory=set)  # keys with at least one usable example
    rev_seen: int = -1
    checked_at: float = float("-inf")
    synced: bool = False
    error: str | None = None  # why the latest listing from Label Studio failed (None: it worked)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def keys(self) -> list[str]:
        return sorted(self.encoded)


def select_examples(tasks, cfg: LabelConfig, k: int) -> dict[str, list[ExampleRef]]:
    """The latest ``k`` accepted annotations per (control, label), newest ``updated_at`` first."""
    found: dict[str, list[ExampleRef]] = {}
    for task in tasks:
        for ann in accepted_annotations(task):
            result = ann.get("result") or []
            for control in cfg.label_controls:
                media = cfg.images.get(control.to_name) or cfg.videos[control.to_name]
                ref = (task.get("data") or {}).get(media.value_key)
                for label in control_labels(result, control):
                    found.setdefault(example_key(control.name, label), []).append(
                        ExampleRef(
                            control.name,
                            label,
                            int(ann["id"]),
                            int(task["id"]),
                            str(ann.get("updated_at") or ""),
                            ref,
                            tuple(result),
                        )
                    )
    for refs in found.values():
        refs.sort(key=lambda r: (r.updated_at, r.annotation_id), reverse=True)
        del refs[k:]
    return found


class ExampleManager:
    def __init__(
        self,
        projects: ProjectStore,
        rows: ExampleStore,
        model: ModelRuntime,
        *,
        k: int,
        recheck_s: float,
        max_pixels: int,
        max_projects: int = 64,
        thumbs_dir: Path | None = None,
    ):
        self.projects = projects
        self.thumbs_dir = Path(thumbs_dir) if thumbs_dir is not None else None
        self.rows = rows
        self.model = model
        self.k = k
        self.recheck_s = recheck_s
        self.max_pixels = max_pixels
        self.max_projects = max_projects
        self._projects: OrderedDict[int, ProjectExamples] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()

    def project(self, project_id: int) -> ProjectExamples:
        with self._lock:
            pe = self._projects.get(project_id)
            if pe is None:
                pe = self._projects[project_id] = ProjectExamples()
            self._projects.move_to_end(project_id)
            while len(self._projects) > self.max_projects:
                evicted, _ = self._projects.popitem(last=False)  # a caller still holding it finishes with it
                log.info("project %s: examples dropped from memory (DCSAM_MAX_PROJECTS_IN_MEMORY)", evicted)
            return pe

    def forget(self, project_id: int) -> None:
        """Drop the project's examples, in memory and in the database (the project is gone)."""
        self.rows.delete_project(project_id)
        with self._lock:
            self._projects.pop(project_id, None)
        folder = self._thumb_folder(project_id)
        if folder is not None and folder.is_dir():
            for path in folder.glob("*.jpg"):
                path.unlink(missing_ok=True)

    # -- thumbnails (for the status page) --------------------------------------------------------------
    def _thumb_folder(self, project_id: int) -> Path | None:
        return None if self.thumbs_dir is None else self.thumbs_dir / str(int(project_id))

    def thumbnail(self, project_id: int, annotation_id: int, control: str, label: str) -> bytes | None:
        """The stored thumbnail of an example (JPEG bytes), if one was written when it was encoded."""
        folder = self._thumb_folder(project_id)
        if folder is None:
            return None
        try:
            return (folder / _thumb_name(annotation_id, example_key(control, label))).read_bytes()
        except OSError:
            return None

    def _save_thumbnail(self, project_id: int, ref: ExampleRef, image: np.ndarray, mask: np.ndarray) -> None:
        """Write the thumbnail atomically (a temporary file renamed into place); a failure is only logged."""
        folder = self._thumb_folder(project_id)
        if folder is None:
            return
        try:
            data = thumbnail_jpeg(image, mask)
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                os.replace(tmp, folder / _thumb_name(ref.annotation_id, example_key(ref.control, ref.label)))
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except (OSError, ValueError) as exc:
            log.warning("project %s: no thumbnail for annotation %s: %s", project_id, ref.annotation_id, exc)

    def ensure(
        self, project_id: int, cfg: LabelConfig, access: LabelStudioAccess | None, *, force: bool = False
    ) -> ProjectExamples:
        """Bring the project's examples up to date when needed; errors keep the previous examples.

        A Label Studio error is kept in ``error`` for the callers to report; with ``force`` (a re-sync was
        asked for) it is raised too.
        """
        pe = self.project(project_id)
        with pe.lock:
            rev = self.projects.examples_rev(project_id)
            due = force or not pe.synced or rev != pe.rev_seen or time.monotonic() - pe.checked_at >= self.recheck_s
            if not due:
                return pe
            if access is None:
                pe.error = (
                    "no Label Studio URL/token to read its annotations (set LABEL_STUDIO_URL and "
                    "LABEL_STUDIO_API_KEY, or connect the model from Label Studio so /setup passes one)"
                )
                log.error("project %s: %s", project_id, pe.error)
                return pe
            try:
                selected = select_examples(access.annotated_tasks(project_id), cfg, self.k)
            except LabelStudioError as exc:
                pe.error = f"listing its annotations in Label Studio failed: {exc}"
                log.error("project %s: %s; keeping the previous examples", project_id, pe.error)
                if force:
                    raise
                return pe
            pe.error = None
            if pe.segmenter is None:
                pe.segmenter = self.model.new_segmenter()
            wanted_keys = {example_key(c.name, lab) for c in cfg.label_controls for lab in c.labels}
            for key in list(pe.fingerprints):
                if key not in selected or key not in wanted_keys:
                    pe.segmenter.clear_examples(key)
                    del pe.fingerprints[key]
                    pe.encoded.discard(key)
            controls = {c.name: c for c in cfg.label_controls}
            for key, refs in selected.items():
                fingerprint = tuple((r.annotation_id, r.updated_at) for r in refs)
                if pe.fingerprints.get(key) == fingerprint:
                    continue
                self._encode(project_id, pe, key, controls[refs[0].control], refs, access)
            pe.rev_seen, pe.checked_at, pe.synced = rev, time.monotonic(), True
            self.rows.replace(
                project_id,
                [
                    (r.control, r.label, r.annotation_id, r.task_id, r.updated_at)
                    for key, refs in selected.items()
                    if key in pe.encoded
                    for r in refs
                ],
            )
            n = {key.split("\x1f", 1)[1]: len(refs) for key, refs in selected.items()}
            log.info(
                "project %s: examples per label %s (latest %d accepted annotations each)", project_id, n or "{}", self.k
            )
            return pe

    def _encode(
        self,
        project_id: int,
        pe: ProjectExamples,
        key: str,
        control: ControlTag,
        refs: list[ExampleRef],
        access: LabelStudioAccess,
    ) -> None:
        images, masks, used = [], [], []  # a mask, or a keyframe box (percent) turned into one under the lock below
        for ref in refs:
            try:
                if control.type in TRACK_CONTROL_TYPES:
                    image, mask = track_frame(control, list(ref.result), ref.label, ref.image_ref, ref.task_id, access)
                else:
                    mask = annotation_mask(control, list(ref.result), ref.label)
                    if mask is None or not mask.any():
                        raise RegionError("empty mask")
                    image = decode_image(
                        access.fetch(ref.image_ref, ref.task_id), self.max_pixels, f"task {ref.task_id}"
                    )
            except (MediaError, RegionError, LabelStudioError) as exc:
                log.error(
                    "project %s: annotation %s of task %s cannot be an example for %r: %s",
                    project_id,
                    ref.annotation_id,
                    ref.task_id,
                    ref.label,
                    exc,
                )
                continue
            images.append(image)
            masks.append(mask)
            used.append(ref)
        with self.model.inference_lock:
            if control.type in TRACK_CONTROL_TYPES:
                triples = [
                    (r, img, box_to_mask(pe.segmenter, img, box, None)) for r, img, box in zip(used, images, masks)
                ]
                triples = [(r, img, m) for r, img, m in triples if m.any()]
                used, images, masks = [r for r, _, _ in triples], [t[1] for t in triples], [t[2] for t in triples]
            pe.segmenter.clear_examples(key)
            if images:
                try:
                    pe.segmenter.add_examples(images, [np.asarray(m) for m in masks], label=key)
                except DcsamError as exc:
                    log.error("project %s: examples for %r refused by the model: %s", project_id, refs[0].label, exc)
                    images = []
        # Remember what was tried, so a broken example is not refetched on every request.
        pe.fingerprints[key] = tuple((r.annotation_id, r.updated_at) for r in refs)
        if images:
            pe.encoded.add(key)
            for ref, image, mask in zip(used, images, masks):
                self._save_thumbnail(project_id, ref, image, np.asarray(mask))
        else:
            pe.encoded.discard(key)
