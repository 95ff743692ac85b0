"""Video evaluation: DAVIS J, F and J&F of a :class:`VideoSegmenter` on annotated videos.

Protocols (``dcsam eval-video``):

* ``davis`` (semi-supervised VOS): the first frame's ground-truth mask of each object is given;
  the rest is propagated. DAVIS layout ``<root>/JPEGImages/<seq>/*.jpg`` and
  ``<root>/Annotations/<seq>/*.png`` (DAVIS 2016: greyscale 0/255, one object; DAVIS 2017:
  palette indices, one object per index, all tracked in one pass). Scored frames: the DAVIS
  toolkits' rule, every frame but the first (given) and the last.
* ``in-context``: no frame of the video is given; the examples (``--support-image`` /
  ``--support-mask``, from another image or video) prompt the first frame in context, then it is
  propagated. The ground truth is the union of the annotated objects. Every frame is scored
  (IC-VOS rule).
* ``icvos``: the IC-VOS layout: ``<root>/<video>/JPEGImages/<frame>.jpg`` and
  ``<root>/<video>/Annotations/<class_id>/<frame>.png``; one sample per (video, class); frames in
  numeric order, the first ``max_frames`` (512) kept; scored at 512x512 (nearest-neighbour resize
  of the masks), every frame. Supports: ``--support-dir`` holding ``<class_id>.jpg`` and
  ``<class_id>.png`` per class (the paper draws one COCO val image per class, seed 0, which is
  not distributed with IC-VOS), or one ``--support-image`` for every sample, or, without any,
  the first frame's mask (the semi-supervised upper-bound setting).

Per-object rows are averaged into the benchmark row as the DAVIS toolkit does.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import InputError
from ..io import read_mask
from ..masks import resize_mask
from .frames import IMAGE_EXTENSIONS, ImageFolderSource, ImageSequenceSource, natural_key
from .metrics import ALL_FRAMES, DAVIS_FRAMES, FRAME_RULES, SequenceScores, benchmark_means, scored_frames

log = logging.getLogger(__name__)


@dataclass
class VideoSample:
    """One evaluation sample: a frame source, ground truth per frame and object, what is given."""

    name: str
    frames: Any  # a FrameSource
    gt: Callable[[int], dict[str, np.ndarray] | None]  # frame index -> {object label: mask}, None if unannotated
    labels: list[str]
    given_first: bool  # the DAVIS protocol: frame 0's masks are given
    support: tuple[str, str] | None = None  # (image, mask) of the in-context example, if any


# -- reading annotations -------------------------------------------------------------------------
def read_object_masks(path: str | Path, union: bool = False) -> dict[str, np.ndarray]:
    """Objects of a DAVIS-style annotation: greyscale 0/255 = one object; palette / small integer
    values = one object per value; RGB = one object (channel 0 > 127). ``union``: one 'object'."""
    img = Image.open(path)
    if img.mode in ("RGB", "RGBA") or union:
        return {"object": read_mask(str(path))}
    arr = np.asarray(img)
    if arr.ndim == 3:
        arr = arr[..., 0]
    ids = [int(v) for v in np.unique(arr) if v != 0]
    if set(ids) <= {255}:
        return {"object": arr > 0}
    return {f"obj{v}": arr == v for v in ids}


def _annotation_files(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in folder.iterdir() if p.suffix.lower() == ".png"} if folder.is_dir() else {}


def davis_folders(root: str | Path, resolution: str = "480p") -> tuple[Path, Path]:
    """(frames folder, annotations folder) of a DAVIS root: the official download's layout
    ``JPEGImages/<resolution>/<seq>/`` when it is there, else the flat ``JPEGImages/<seq>/``."""
    root = Path(root)
    jpeg, ann = root / "JPEGImages", root / "Annotations"
    if not jpeg.is_dir() or not ann.is_dir():
        raise InputError(f"{root}: not a DAVIS folder (needs JPEGImages/ and Annotations/)")
    if (jpeg / resolution).is_dir() and (ann / resolution).is_dir():
        return jpeg / resolution, ann / resolution
    official = [p.name for p in jpeg.iterdir() if p.is_dir() and p.name in ("480p", "1080p", "Full-Resolution")]
    if official:  # the official layout, but not at the resolution asked for
        raise InputError(f"{root}: no {resolution} frames and annotations (found {', '.join(sorted(official))})")
    return jpeg, ann


def davis_samples(
    root: str | Path,
    sequences: Sequence[str] | None,
    *,
    in_context: bool = False,
    support: tuple[str, str] | None = None,
    max_frames: int | None = None,
    resolution: str = "480p",
) -> list[VideoSample]:
    """Samples of a DAVIS folder, flat (``JPEGImages/<seq>/``, ``Annotations/<seq>/``) or as the
    official download unpacks (``JPEGImages/<resolution>/<seq>/``, ``Annotations/<resolution>/<seq>/``)."""
    jpeg, ann = davis_folders(root, resolution)
    names = list(sequences) if sequences else sorted(p.name for p in jpeg.iterdir() if p.is_dir())
    if not names:
        raise InputError(f"{jpeg}: no sequences")
    out = []
    for seq in names:
        if not (jpeg / seq).is_dir():
            raise InputError(f"{jpeg / seq}: no such sequence")
        src: ImageSequenceSource = ImageFolderSource(jpeg / seq)
        if max_frames:
            src = ImageSequenceSource(
                src.items[:max_frames], [src.frame_name(i) for i in range(min(max_frames, len(src)))], name=seq
            )
        files = _annotation_files(ann / seq)
        first = files.get(src.frame_name(0))
        if first is None:
            raise InputError(f"{ann / seq}: no annotation for the first frame {src.frame_name(0)}")
        labels = list(read_object_masks(first, union=in_context))

        def gt(i: int, src=src, files=files) -> dict[str, np.ndarray] | None:
            f = files.get(src.frame_name(i))
            return None if f is None else read_object_masks(f, union=in_context)

        out.append(VideoSample(seq, src, gt, labels, given_first=not in_context, support=support))
    return out


def icvos_samples(
    root: str | Path,
    videos: Sequence[str] | None = None,
    *,
    support_dir: str | Path | None = None,
    support: tuple[str, str] | None = None,
    classes: Sequence[str] | None = None,
    max_frames: int = 512,
) -> list[VideoSample]:
    """Samples of the IC-VOS layout: one per (video, class folder)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: no such IC-VOS folder")
    vids = list(videos) if videos else sorted(p.name for p in root.iterdir() if (p / "JPEGImages").is_dir())
    if not vids:
        raise InputError(f"{root}: no <video>/JPEGImages folders (IC-VOS layout)")
    out = []
    for vid in vids:
        jpeg = root / vid / "JPEGImages"
        files = sorted(
            (p for p in jpeg.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS), key=lambda p: natural_key(p.name)
        )
        files = files[:max_frames]
        if not files:
            raise InputError(f"{jpeg}: no frames")
        src = ImageSequenceSource([str(p) for p in files], [p.stem for p in files], name=vid)
        for cdir in sorted(
            (p for p in (root / vid / "Annotations").iterdir() if p.is_dir()), key=lambda p: natural_key(p.name)
        ):
            cls = cdir.name
            if classes and cls not in classes:
                continue
            ann = _annotation_files(cdir)
            sup = support
            if support_dir is not None:
                sd = Path(support_dir)
                img = next(
                    (
                        sd / f"{cls}{e}"
                        for e in (".jpg", ".jpeg", ".png")
                        if (sd / f"{cls}{e}").is_file() and e != ".png"
                    ),
                    None,
                )
                msk = sd / f"{cls}.png"
                if img is None or not msk.is_file():
                    raise InputError(f"{sd}: no support <{cls}.jpg> and <{cls}.png> for class {cls}")
                sup = (str(img), str(msk))

            def gt(i: int, src=src, ann=ann) -> dict[str, np.ndarray] | None:
                f = ann.get(src.frame_name(i))
                return None if f is None else {"object": read_mask(str(f))}

            given_first = sup is None
            if given_first and src.frame_name(0) not in ann:
                log.warning("%s/%s: no annotation on the first frame and no support: skipped", vid, cls)
                continue
            out.append(VideoSample(f"{vid}/{cls}", src, gt, ["object"], given_first=given_first, support=sup))
    if not out:
        raise InputError(f"{root}: no (video, class) samples to evaluate")
    return out


# -- evaluation ----------------------------------------------------------------------------------
def _at_size(mask: np.ndarray, size: int | None) -> np.ndarray:
    return mask if size is None else resize_mask(mask, size, size)


def evaluate_videos(
    video_segmenter_factory: Callable[[], Any],
    samples: Sequence[VideoSample],
    *,
    frame_rule: str | None = None,
    eval_size: int | None = None,
    bound_th: float = 0.008,
    progress: bool = True,
    on_sequence: Callable[[dict[str, Any]], None] | None = None,
    on_frame: Callable[[VideoSample, int, dict[str, np.ndarray]], None] | None = None,
) -> dict[str, Any]:
    """Run and score every sample; returns a JSON-serialisable report.

    ``on_sequence(row)`` is called with each sequence's row as soon as it is scored (the rows of
    the report's ``sequences``); ``on_frame(sample, index, masks)`` with every predicted frame
    (e.g. a :class:`DavisMaskWriter`).

    ``video_segmenter_factory()`` returns a fresh :class:`dcsam.video.VideoSegmenter` (one per
    sample, so nothing leaks between videos). ``frame_rule``: which frames count (default:
    ``davis`` when the first frame is given, else ``all``). ``eval_size``: score at S x S (IC-VOS:
    512) instead of the native size.
    """
    if frame_rule is not None and frame_rule not in FRAME_RULES:
        raise InputError(f"unknown frame rule {frame_rule!r}; choose one of {FRAME_RULES}")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(
            total=sum(len(s.frames) for s in samples),
            desc="eval-video",
            unit="frame",
            file=sys.stderr,
            dynamic_ncols=True,
        )
    rows, seq_rows, versions, rules = [], [], set(), set()
    total_frames, total_seconds = 0, 0.0
    try:
        for sample in samples:
            vs = video_segmenter_factory()
            versions.add(vs.version)
            n = len(sample.frames)
            rule = frame_rule or (DAVIS_FRAMES if sample.given_first else ALL_FRAMES)
            rules.add(rule)
            keep = set(scored_frames(n, rule))
            masks = None
            if sample.given_first:
                first = sample.gt(0)
                if first is None:
                    raise InputError(f"{sample.name}: the first frame has no annotation to start from")
                masks = {lab: first[lab] for lab in sample.labels}
            else:
                if sample.support is None:
                    raise InputError(f"{sample.name}: the in-context protocol needs a support image and mask")
                vs.clear_examples()
                vs.add_examples([sample.support[0]], [sample.support[1]], label="object")
            scores = {
                lab: SequenceScores(sample.name if len(sample.labels) == 1 else f"{sample.name}/{lab}")
                for lab in sample.labels
            }
            t0 = time.perf_counter()
            frames_done = 0
            for res in vs.segment(sample.frames, masks=masks, labels=sample.labels, direction="forward"):
                frames_done += 1
                if on_frame is not None:
                    on_frame(sample, res.index, res.masks)
                if bar is not None:
                    bar.update(1)
                if res.index not in keep:
                    continue
                gt = sample.gt(res.index)
                if gt is None:
                    continue
                for lab in sample.labels:
                    g, p = gt.get(lab), res.masks.get(lab)
                    if g is None and p is None:
                        continue
                    g = np.zeros(p.shape, bool) if g is None else g  # the object left: empty truth
                    p = np.zeros(g.shape, bool) if p is None else p  # an undecodable frame: empty answer
                    scores[lab].add(res.index, _at_size(p, eval_size), _at_size(g, eval_size), bound_th)
            seconds = time.perf_counter() - t0
            total_frames += frames_done
            total_seconds += seconds
            obj_rows = [s.summary() for s in scores.values()]
            rows.extend(obj_rows)
            seq_rows.append(
                {
                    "name": sample.name,
                    "objects": obj_rows,
                    "frames": frames_done,
                    "frame_rule": rule,
                    "seconds_per_frame": seconds / max(frames_done, 1),
                    **{k: float(np.mean([r[k] for r in obj_rows])) for k in ("J", "F", "J&F")},
                }
            )
            if bar is not None:
                bar.set_postfix({"J&F": f"{benchmark_means(rows)['J&F']:.3f}"})
            if on_sequence is not None:
                on_sequence(seq_rows[-1])
    finally:
        if bar is not None:
            bar.close()
    return {
        "sequences": seq_rows,
        "objects": rows,
        "mean": benchmark_means(rows),
        "num_sequences": len(seq_rows),
        "num_objects": len(rows),
        "frames": total_frames,
        "seconds_per_frame": total_seconds / max(total_frames, 1),
        "frame_rule": ",".join(sorted(rules)),
        "eval_size": eval_size,
        "bound_th": bound_th,
        "model_versions": sorted(versions),
    }


def table_width(names: Sequence[str]) -> int:
    """Width of the name column of a table holding ``names``."""
    return max([len("sequence"), *(len(n) for n in names)])


def format_video_header(width: int) -> list[str]:
    head = f"{'sequence':<{width}}  {'J':>6}  {'F':>6}  {'J&F':>6}  {'frames':>6}"
    return [head, "-" * len(head)]


def format_video_rows(row: dict[str, Any], width: int) -> list[str]:
    """The table lines of one sequence row of the report (one per object)."""
    return [
        f"{r['name']:<{width}}  {r['J']:>6.4f}  {r['F']:>6.4f}  {r['J&F']:>6.4f}  {r['frames_scored']:>6}"
        for r in row.get("objects", [row])
    ]


def format_video_footer(report: dict[str, Any], width: int) -> list[str]:
    head_len = len(format_video_header(width)[0])
    lines = []
    m = report["mean"]
    if m:
        lines.append("-" * head_len)
        lines.append(f"{'mean':<{width}}  {m['J']:>6.4f}  {m['F']:>6.4f}  {m['J&F']:>6.4f}")
    lines.append("")
    rule = {
        "davis": "all but the first (given) and the last (DAVIS toolkit)",
        "all": "every frame (IC-VOS)",
        "skip-first": "all but the first",
    }.get(report["frame_rule"], report["frame_rule"])
    lines.append(
        f"frames scored: {rule}; boundary tolerance {report['bound_th']} x diagonal"
        + (f"; scored at {report['eval_size']}x{report['eval_size']}" if report.get("eval_size") else "")
    )
    lines.append(f"seconds / frame    {report['seconds_per_frame']:.3f}")
    if report.get("model_versions"):
        lines.append(f"model              {', '.join(report['model_versions'])}")
    return lines


def format_video_report(report: dict[str, Any]) -> str:
    """A DAVIS-style table: J, F and J&F per sequence (object) and their mean."""
    width = table_width([r["name"] for r in report["objects"]])
    lines = format_video_header(width)
    for row in report["sequences"]:
        lines += format_video_rows(row, width)
    return "\n".join(lines + format_video_footer(report, width))


def object_names(sample: VideoSample) -> list[str]:
    """The names a sample's rows get in the report (the sequence, or sequence/object)."""
    return [sample.name] if len(sample.labels) == 1 else [f"{sample.name}/{lab}" for lab in sample.labels]


# -- writing predicted masks ---------------------------------------------------------------------
def davis_palette() -> list[int]:
    """The 256-colour palette of DAVIS (and PASCAL VOC) annotations, flat [r, g, b, ...]: the bits
    of an index, three at a time, spread from the top bit of r, g and b down (1 = dark red)."""
    out = []
    for i in range(256):
        r = g = b = 0
        c = i
        for bit in range(8):
            r |= (c & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        out += [r, g, b]
    return out


def object_index(label: str, position: int) -> int:
    """The palette index of an object: ``objN`` -> N (its index in the annotations), else its
    1-based position among the sample's labels."""
    if label.startswith("obj") and label[3:].isdigit() and 0 < int(label[3:]) < 256:
        return int(label[3:])
    return position + 1


class DavisMaskWriter:
    """``on_frame`` for :func:`evaluate_videos`: writes each predicted frame as a DAVIS palette PNG,
    ``<root>/<sequence>/<frame name>.png`` (0 = background, object k = index k), the layout the
    DAVIS evaluation toolkits read."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.palette = davis_palette()
        self.written = 0

    def __call__(self, sample: VideoSample, index: int, masks: dict[str, np.ndarray]) -> None:
        shapes = [m.shape for m in masks.values() if m is not None]
        if not shapes:
            return  # an undecodable frame: nothing to write
        out = np.zeros(shapes[0], np.uint8)
        for pos, lab in enumerate(sample.labels):
            m = masks.get(lab)
            if m is not None:
                out[np.asarray(m, bool)] = object_index(lab, pos)
        folder = self.root / sample.name
        folder.mkdir(parents=True, exist_ok=True)
        img = Image.frombytes("P", (out.shape[1], out.shape[0]), out.tobytes())
        img.putpalette(self.palette)
        img.save(folder / f"{sample.frames.frame_name(index)}.png")
        self.written += 1


def parse_sequences(value: str | None) -> list[str] | None:
    if not value:
        return None
    return [s for s in (v.strip() for v in value.split(",")) if s]
