#!/usr/bin/env python3
"""Do region scores rank masks by quality, and does a box prompt segment what is inside it?

    python scripts/measure_scores_boxes.py [--data ../shared/data] [--engine lite] [--every 5] [--json OUT]

Three measurements on the shared dev fixtures (read by path, never copied), each printed as a table:

1. **In-context scores.** One-shot protocol of ``scripts/make_episodes.py``: PerSeg ``_00`` ->
   ``_01``/``_02``, FSS ``1`` -> ``2..10``, DAVIS frame 0 -> every ``--every``-th frame. Per dev set:
   n, mean IoU, mean score, the Spearman rank correlation between score and IoU, and the mean
   absolute gap |score - IoU| (a calibrated score is close to the IoU it estimates).
2. **Click refinements.** On the same queries, one corrective click (the standard simulated user:
   positive at the innermost point of the larger missed region, negative at the innermost point of
   the larger false region), then ``InContextSegmenter.refine`` from the prediction: the Spearman
   correlation of the refined score with the refined IoU, and how often the score moved with the mask.
3. **Box prompts.** A box = the tight bounding box of the ground-truth mask, on every PerSeg image and
   every DAVIS first frame without examples ("box only": what a keyframe box of an unknown label
   gets), and on the PerSeg queries / DAVIS frame 20 with the in-context example ("box + example").
   Mask IoU per image and the mean.

Run it on two commits to compare (e.g. in a ``git worktree`` of the older one). The figures depend on
the CPU's floating point only; no timing is measured.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from dcsam.api import InContextSegmenter  # noqa: E402
from dcsam.bench.ranking import spearman  # noqa: E402
from dcsam.io import read_image, read_mask  # noqa: E402
from dcsam.masks import iou  # noqa: E402
from tests.support.clicks import corrective_click  # noqa: E402
from tests.support.data import DATA as DEFAULT_DATA  # noqa: E402  (DCSAM_TEST_DATA, else ../shared/data)

Item = tuple[Path, Path]  # image, mask


def episodes(data: Path, every: int) -> Iterator[tuple[str, str, Item, list[Item]]]:
    """(dev set, label, support, queries) for the one-shot protocol of ``scripts/make_episodes.py``."""
    ps = data / "perseg-mini"
    for obj in sorted(p.stem[:-3] for p in ps.glob("*_00.jpg")):
        yield (
            "perseg-mini",
            obj,
            (ps / f"{obj}_00.jpg", ps / f"{obj}_00.png"),
            [(ps / f"{obj}_{i:02d}.jpg", ps / f"{obj}_{i:02d}.png") for i in (1, 2)],
        )
    fss = data / "fss-mini"
    for cls in sorted(p.name for p in (fss / "images").iterdir() if p.is_dir()):

        def f(i: int, cls: str = cls) -> Item:
            return fss / "images" / cls / f"{i}.jpg", fss / "masks" / cls / f"{i}.png"

        yield "fss-mini", cls, f(1), [f(i) for i in range(2, 11)]
    for seq, frames in _davis(data):
        yield "davis16-dev", seq, frames[0], [it for k, it in enumerate(frames) if k >= every and k % every == 0]


def _davis(data: Path) -> Iterator[tuple[str, list[Item]]]:
    root = data / "davis16-dev"
    for seq_dir in sorted(p for p in (root / "JPEGImages").iterdir() if p.is_dir()):
        names = sorted(p.stem for p in seq_dir.glob("*.jpg"))
        yield seq_dir.name, [(seq_dir / f"{n}.jpg", root / "Annotations" / seq_dir.name / f"{n}.png") for n in names]


def tight_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """The tight bounding box (x0, y0, x1, y1), pixel edges, of a non-empty mask."""
    ys, xs = np.nonzero(mask)
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def _segmenter(engine: str, device: str) -> InContextSegmenter:
    return InContextSegmenter.from_config(engine=engine, device=device)


def measure(data: Path, engine: str, every: int, device: str, clicks: bool) -> dict:
    seg = _segmenter(engine, device)
    scores: list[dict] = []
    refined: list[dict] = []
    for ds, label, (sup_img, sup_mask), queries in episodes(data, every):
        seg.clear_examples()
        seg.add_examples([str(sup_img)], [str(sup_mask)], label=label)
        for q_img, q_mask in queries:
            img, gt = read_image(str(q_img)), read_mask(str(q_mask))
            [pred] = seg.predict([img], labels=[label])
            mask, score = pred.masks[label], float(pred.scores[label])
            scores.append({"set": ds, "query": str(q_img.relative_to(data)), "iou": iou(mask, gt), "score": score})
            click = corrective_click(mask, gt) if clicks else None
            if click is not None:
                r_mask, r_score = seg.refine(img, mask, points=[click], label=label)
                refined.append(
                    {
                        "set": ds,
                        "query": str(q_img.relative_to(data)),
                        "iou": iou(r_mask, gt),
                        "score": float(r_score),
                        "iou_before": iou(mask, gt),
                        "score_before": score,
                        "mask_changed": bool((r_mask != mask).any()),
                    }
                )
    boxes: list[dict] = []
    ps = data / "perseg-mini"
    box_only = [("perseg-mini", p, p.with_suffix(".png")) for p in sorted(ps.glob("*.jpg"))]
    box_only += [("davis16-dev", frames[0][0], frames[0][1]) for _, frames in _davis(data)]
    seg.clear_examples()
    for ds, img_path, mask_path in box_only:
        img, gt = read_image(str(img_path)), read_mask(str(mask_path))
        mask, score = seg.refine(img, None, box=tight_box(gt))
        boxes.append(_box_row("box only", ds, img_path, data, mask, gt, score))
    with_example: list[tuple[str, str, Item, Item]] = []
    for obj in sorted(p.stem[:-3] for p in ps.glob("*_00.jpg")):
        sup = (ps / f"{obj}_00.jpg", ps / f"{obj}_00.png")
        with_example += [
            ("perseg-mini", obj, sup, (ps / f"{obj}_{i:02d}.jpg", ps / f"{obj}_{i:02d}.png")) for i in (1, 2)
        ]
    with_example += [("davis16-dev", seq, frames[0], frames[min(20, len(frames) - 1)]) for seq, frames in _davis(data)]
    for ds, label, sup, (q_img, q_mask) in with_example:
        seg.clear_examples()
        seg.add_examples([str(sup[0])], [str(sup[1])], label=label)
        img, gt = read_image(str(q_img)), read_mask(str(q_mask))
        [pred] = seg.predict([img], labels=[label])
        mask, score = seg.refine(img, None, box=tight_box(gt), label=label)
        row = _box_row("box + example", ds, q_img, data, mask, gt, score)
        row["iou_in_context"] = iou(pred.masks[label], gt)
        boxes.append(row)
    return {"engine": engine, "scores": scores, "refined": refined, "boxes": boxes}


def _box_row(mode: str, ds: str, img: Path, data: Path, mask: np.ndarray, gt: np.ndarray, score: float) -> dict:
    return {"mode": mode, "set": ds, "image": str(img.relative_to(data)), "iou": iou(mask, gt), "score": float(score)}


def report(result: dict) -> str:
    lines = [f"engine: {result['engine']}", "", "1. in-context scores (score vs IoU)"]
    lines.append(f"{'set':<14}{'n':>5}{'mean IoU':>10}{'mean score':>12}{'Spearman':>10}{'|score-IoU|':>13}")
    for ds in ("perseg-mini", "fss-mini", "davis16-dev", None):
        rows = [r for r in result["scores"] if ds is None or r["set"] == ds]
        if not rows:
            continue
        i, s = [r["iou"] for r in rows], [r["score"] for r in rows]
        gap = float(np.mean(np.abs(np.asarray(s) - np.asarray(i))))
        lines.append(
            f"{ds or 'all':<14}{len(rows):>5}{np.mean(i):>10.3f}{np.mean(s):>12.3f}{spearman(s, i):>10.2f}{gap:>13.3f}"
        )
    if result["refined"]:
        lines += ["", "2. one corrective click (refined score vs refined IoU)"]
        lines.append(f"{'set':<14}{'n':>5}{'IoU before':>11}{'IoU after':>10}{'Spearman':>10}{'score moved':>13}")
        for ds in ("perseg-mini", "fss-mini", "davis16-dev", None):
            rows = [r for r in result["refined"] if ds is None or r["set"] == ds]
            if not rows:
                continue
            changed = [r for r in rows if r["mask_changed"]]
            moved = sum(abs(r["score"] - r["score_before"]) > 1e-6 for r in changed)
            lines.append(
                f"{ds or 'all':<14}{len(rows):>5}{np.mean([r['iou_before'] for r in rows]):>11.3f}"
                f"{np.mean([r['iou'] for r in rows]):>10.3f}"
                f"{spearman([r['score'] for r in rows], [r['iou'] for r in rows]):>10.2f}"
                f"{f'{moved}/{len(changed)}':>13}"
            )
    lines += ["", "3. box prompts (box = tight box of the ground truth)"]
    for mode in ("box only", "box + example"):
        rows = [r for r in result["boxes"] if r["mode"] == mode]
        lines.append(f"-- {mode}")
        for r in rows:
            extra = f"  (in-context {r['iou_in_context']:.3f})" if "iou_in_context" in r else ""
            lines.append(f"   {r['image']:<46} IoU {r['iou']:.3f}  score {r['score']:.3f}{extra}")
        for ds in ("perseg-mini", "davis16-dev"):
            sel = [r["iou"] for r in rows if r["set"] == ds]
            if sel:
                lines.append(f"   mean {ds:<12} n={len(sel):<3} IoU {np.mean(sel):.3f}")
        lines.append(f"   mean all          n={len(rows):<3} IoU {np.mean([r['iou'] for r in rows]):.3f}")
        sp = spearman([r["score"] for r in rows], [r["iou"] for r in rows])
        lines.append(f"   Spearman(score, IoU) {sp:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA), help="folder holding perseg-mini/, fss-mini/, davis16-dev/")
    p.add_argument("--engine", default="lite", help="lite (default) or dcsam")
    p.add_argument("--device", default="cpu")
    p.add_argument("--every", type=int, default=5, help="DAVIS: every N-th frame is a query (default 5)")
    p.add_argument("--no-clicks", action="store_true", help="skip the click refinements")
    p.add_argument("--json", help="also write every row to this JSON file")
    args = p.parse_args(argv)
    result = measure(Path(args.data), args.engine, args.every, args.device, not args.no_clicks)
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
