"""Evaluation of any engine on episode files (support images + query images with masks).

An episode file is a JSON list of episodes::

    [{"label": "cat",                                    # optional
      "support": [{"image": "cat_00.jpg", "mask": "cat_00.png"}],
      "query":   [{"image": "cat_01.jpg", "mask": "cat_01.png"}, ...]}, ...]

Relative paths are resolved against the file's folder. ``scripts/make_episodes.py`` writes such
files for the fixtures in ``../shared/data``.

>>> from dcsam.api import InContextSegmenter
>>> report = evaluate_episodes(lambda: InContextSegmenter.from_config(engine="lite"),
...                            load_episodes("episodes/perseg-mini.json"))
>>> print(format_report(report))
"""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .engines.base import Episode
from .errors import InputError
from .io import read_mask
from .masks import iou, resize_mask
from .metrics import DatasetIoU

log = logging.getLogger(__name__)


# -- episode files -------------------------------------------------------------------------------
def _parse_item(item: Any, where: str, base: Path) -> dict[str, str]:
    if not isinstance(item, dict) or not isinstance(item.get("image"), str) or not isinstance(item.get("mask"), str):
        raise InputError(f"{where}: expected an object with string fields 'image' and 'mask', got {item!r:.120}")
    out = {}
    for key in ("image", "mask"):
        p = Path(item[key]).expanduser()
        p = p if p.is_absolute() else base / p
        if not p.is_file():
            raise InputError(f"{where}.{key}: {p} not found")
        out[key] = str(p)
    return out


def load_episodes(path: str | Path) -> list[dict]:
    """Read and check an episode file; returns episodes with absolute paths and a label each."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such episode file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a valid JSON file ({exc})") from exc
    if not isinstance(data, list) or not data:
        raise InputError(f"{path}: expected a non-empty JSON list of episodes")
    base = path.resolve().parent
    episodes = []
    for i, ep in enumerate(data):
        where = f"{path}: episode {i}"
        if not isinstance(ep, dict):
            raise InputError(f"{where}: expected an object with 'support' and 'query' lists")
        unknown = sorted(set(ep) - {"support", "query", "label"})
        if unknown:
            raise InputError(f"{where}: unknown field(s) {unknown}")
        label = ep.get("label", f"episode{i}")
        if not isinstance(label, str) or not label:
            raise InputError(f"{where}: 'label' must be a non-empty string")
        parsed: dict[str, Any] = {"label": label}
        for part in ("support", "query"):
            items = ep.get(part)
            if not isinstance(items, list) or not items:
                raise InputError(f"{where}: '{part}' must be a non-empty list of {{image, mask}} objects")
            parsed[part] = [_parse_item(it, f"{where} {part}[{j}]", base) for j, it in enumerate(items)]
        episodes.append(parsed)
    return episodes


# -- metrics -------------------------------------------------------------------------------------
def _gt_mask(path: str, shape: tuple[int, int]) -> np.ndarray:
    gt = read_mask(path)
    if gt.shape != shape:
        warnings.warn(
            f"{path}: mask is {gt.shape[1]}x{gt.shape[0]} but its image is {shape[1]}x{shape[0]}; "
            "resizing the mask (nearest neighbour)",
            stacklevel=3,
        )
        gt = resize_mask(gt, *shape)
    return gt


# -- evaluation ----------------------------------------------------------------------------------
def evaluate_episodes(
    segmenter_factory: Callable[[], Any],
    episodes: Sequence[dict] | str | Path,
    finetune_on: int = 0,
    progress: bool = True,
    finetune_steps: int | None = None,
    baseline: bool | None = None,
) -> dict[str, Any]:
    """Score a segmenter on episodes; returns a JSON-serialisable report.

    ``segmenter_factory()`` must return a fresh :class:`dcsam.api.InContextSegmenter` (one per
    episode, so fine-tuning never leaks across episodes). With ``finetune_on=K`` the first K
    queries of every episode are used, with the supports, to fine-tune; the rest are scored.
    ``seconds_per_query`` counts prediction only (no example encoding, no fine-tuning).

    An episode with no more than K queries has none left to score: it is skipped (no fine-tuning,
    no row) and listed in ``skipped_episodes``.

    ``baseline`` (default: on whenever ``finetune_on > 0``) also scores the same remaining queries
    with the model *before* fine-tuning (the training-free / as-loaded model), so one report holds
    both: ``baseline_mean_iou``, ``baseline_class_miou``, ``baseline_fb_iou`` and ``improvement``
    (fine-tuned minus baseline mean IoU), plus ``baseline_ious`` per episode.
    """
    from .api import load_example  # late import: api pulls in the engines registry

    if isinstance(episodes, (str, Path)):
        episodes = load_episodes(episodes)
    if finetune_on < 0:
        raise InputError(f"finetune_on must be >= 0, got {finetune_on}")
    baseline = bool(finetune_on) if baseline is None else bool(baseline and finetune_on)
    n_total = sum(max(0, len(ep["query"]) - finetune_on) for ep in episodes) * (2 if baseline else 1)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n_total, desc="eval", unit="query", file=sys.stderr, dynamic_ncols=True)

    per_episode: list[dict[str, Any]] = []
    totals = DatasetIoU()
    all_ious: list[float] = []
    predict_seconds = 0.0
    finetune_seconds = 0.0
    versions: set[str] = set()
    base = _Scores() if baseline else None
    skipped: list[dict[str, Any]] = []
    try:
        for ei, ep in enumerate(episodes):
            label = ep.get("label") or f"episode{ei}"
            if finetune_on and len(ep["query"]) <= finetune_on:
                log.warning(
                    "episode %d (%s): skipped, its %d queries are all used for fine-tuning (--finetune-on %d)",
                    ei,
                    label,
                    len(ep["query"]),
                    finetune_on,
                )
                skipped.append({"label": label, "queries": len(ep["query"])})
                continue
            seg = segmenter_factory()
            seg.add_examples([s["image"] for s in ep["support"]], [s["mask"] for s in ep["support"]], label=label)
            record: dict[str, Any] = {"label": label}
            queries = ep["query"]
            if finetune_on:
                train_q, queries = queries[:finetune_on], queries[finetune_on:]
                if base is not None:  # the same queries, before fine-tuning
                    b_ious = []
                    for q in queries:
                        [pred] = seg.predict([q["image"]], labels=[label])
                        if pred.error:
                            raise InputError(f"episode {ei} ({label}): query {q['image']}: {pred.error}")
                        mask = pred.masks[label]
                        b_ious.append(round(base.add(label, mask, _gt_mask(q["mask"], mask.shape)), 6))
                        if bar is not None:
                            bar.update(1)
                    record["baseline_version"] = seg.version
                    record["baseline_ious"] = b_ious
                    record["baseline_mean_iou"] = float(np.mean(b_ious)) if b_ious else None
                episode = Episode(
                    support=[load_example(s["image"], s["mask"]) for s in ep["support"]],
                    query=[load_example(q["image"], q["mask"]) for q in train_q],
                    label=label,
                )
                t0 = time.perf_counter()
                figures = seg.finetune([episode], steps=finetune_steps)
                finetune_seconds += time.perf_counter() - t0
                record["finetune"] = _jsonable(figures)
            record["model_version"] = seg.version
            versions.add(seg.version)
            ious, scores, names = [], [], []
            for q in queries:
                t0 = time.perf_counter()
                [pred] = seg.predict([q["image"]], labels=[label])
                predict_seconds += time.perf_counter() - t0
                if pred.error:
                    raise InputError(f"episode {ei} ({label}): query {q['image']}: {pred.error}")
                mask = pred.masks[label]
                gt = _gt_mask(q["mask"], mask.shape)
                totals.add(mask, gt, label)
                query_iou = iou(mask, gt)
                ious.append(round(query_iou, 6))
                scores.append(round(float(pred.scores[label]), 6))
                names.append(Path(q["image"]).name)
                all_ious.append(query_iou)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(miou=f"{np.mean(all_ious):.3f}")
            record.update(queries=names, ious=ious, scores=scores, mean_iou=float(np.mean(ious)) if ious else None)
            per_episode.append(record)
    finally:
        if bar is not None:
            bar.close()

    n = len(all_ious)
    summary = totals.summary()
    extra: dict[str, Any] = {}
    if base is not None:
        extra = base.summary()
        if n and extra["baseline_mean_iou"] is not None:
            extra["improvement"] = float(np.mean(all_ious)) - extra["baseline_mean_iou"]
    return {
        "episodes": per_episode,
        "per_class_iou": summary["class_iou"],
        "mean_iou": float(np.mean(all_ious)) if n else None,
        "class_miou": summary["miou"],
        "fb_iou": summary["fb_iou"],
        "fg_iou": summary["fg_iou"],
        "bg_iou": summary["bg_iou"],
        "num_episodes": len(per_episode),
        "skipped_episodes": skipped,
        "num_queries": n,
        "finetune_on": finetune_on,
        "seconds_per_query": predict_seconds / n if n else None,
        "finetune_seconds": finetune_seconds,
        "model_versions": sorted(versions),
        **extra,
    }


class _Scores:
    """Per-query and accumulated IoU of one model (used for the pre-fine-tuning baseline)."""

    def __init__(self) -> None:
        self.ious: list[float] = []
        self.totals = DatasetIoU()

    def add(self, label: str, pred: np.ndarray, gt: np.ndarray) -> float:
        self.totals.add(pred, gt, label)
        self.ious.append(iou(pred, gt))
        return self.ious[-1]

    def summary(self) -> dict[str, Any]:
        totals = self.totals.summary()
        return {
            "baseline_mean_iou": float(np.mean(self.ious)) if self.ious else None,
            "baseline_per_class_iou": totals["class_iou"],
            "baseline_class_miou": totals["miou"],
            "baseline_fb_iou": totals["fb_iou"],
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def format_report(report: dict[str, Any]) -> str:
    """A readable text table of :func:`evaluate_episodes`'s report."""
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    lines = []
    labels = [str(e["label"]) for e in report["episodes"]] + [
        str(s["label"]) for s in report.get("skipped_episodes") or []
    ]
    width = max([len("episode")] + [len(v) for v in labels])
    ft = report.get("finetune_on") or 0
    has_base = "baseline_mean_iou" in report
    head = f"{'episode':<{width}}  queries  mean IoU" + ("  baseline" if has_base else "") + "  ious"
    lines += [head, "-" * len(head)]
    for e in report["episodes"]:
        ious = " ".join(f"{v:.3f}" for v in e["ious"])
        extra = ""
        if "finetune" in e and isinstance(e["finetune"], dict):
            f = e["finetune"]
            if "loss_first" in f and "loss_last" in f:
                extra = f"  [fine-tuned: loss {f['loss_first']:.3f} -> {f['loss_last']:.3f}]"
        b = f"  {fmt(e.get('baseline_mean_iou')):>8}" if has_base else ""
        lines.append(f"{e['label']:<{width}}  {len(e['ious']):>7}  {fmt(e['mean_iou']):>8}{b}  {ious}{extra}")
    for sk in report.get("skipped_episodes") or []:
        lines.append(f"{sk['label']:<{width}}  skipped: its {sk['queries']} queries are all fine-tuning images")
    lines.append("")
    lines.append(f"{'class':<{width}}  IoU (accumulated)" + ("  baseline" if has_base else ""))
    for lab, v in report["per_class_iou"].items():
        b = f"  {fmt(report['baseline_per_class_iou'].get(lab)):>8}" if has_base else ""
        lines.append(f"{lab:<{width}}  {fmt(v):>17}{b}")
    lines.append("")
    spq = report.get("seconds_per_query")
    lines += [
        f"queries scored     {report['num_queries']}"
        + (f" (first {ft} per episode used for fine-tuning)" if ft else ""),
        f"mean IoU           {fmt(report['mean_iou'])}",
        f"class mIoU         {fmt(report['class_miou'])}",
        f"FB-IoU             {fmt(report['fb_iou'])}",
        f"seconds / query    {'-' if spq is None else f'{spq:.3f}'}",
    ]
    if has_base:
        imp = report.get("improvement")
        lines[-4:-1] = [
            f"mean IoU           {fmt(report['mean_iou'])}  (before fine-tuning {fmt(report['baseline_mean_iou'])}, "
            f"{'change -' if imp is None else f'change {imp * 100:+.1f} points'})",
            f"class mIoU         {fmt(report['class_miou'])}  "
            f"(before fine-tuning {fmt(report['baseline_class_miou'])})",
            f"FB-IoU             {fmt(report['fb_iou'])}  (before fine-tuning {fmt(report['baseline_fb_iou'])})",
        ]
    if ft:
        lines.append(f"fine-tune seconds  {report['finetune_seconds']:.1f}")
    if report.get("model_versions"):
        lines.append(f"model              {', '.join(report['model_versions'])}")
    return "\n".join(lines)
