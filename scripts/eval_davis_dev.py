#!/usr/bin/env python3
"""The fixed evaluation of an engine on the whole davis16-dev set: every video, every protocol.

    python scripts/eval_davis_dev.py [--protocol video|image|cross|all|ceiling] [--data DIR]
                                     [--engine lite] [--backbone NAME] [--option KEY=VALUE ...]
                                     [--video-option KEY=VALUE ...] [--json]

Protocols (all scored by the library's own evaluation: ``dcsam.video.vos_evaluation`` for J and
F, ``dcsam.episode_evaluation`` for IoU; nothing is re-implemented here):

* ``video``: the DAVIS protocol. Frame 0's mask is given, the rest is propagated; J, F and J&F per
  video over all frames but the first and the last (the DAVIS toolkits' rule).
* ``image``: image one-shot. Frame 0 of each video (with its mask) is the example, every 10th frame
  from frame 10 on is a query, each segmented on its own; IoU per query, mean per video.
* ``cross``: across videos, the in-context protocol. The example is frame 0 of another video of
  the same class (dog -> libby, libby -> dog, car-roundabout -> car-shadow, car-shadow ->
  car-roundabout), no frame of the video itself is given, every frame is scored.
* ``ceiling`` (only when asked for): what the lite engine's decoding allows. Every frame's ground
  truth is made a perfect grid classification (each stride-8 cell of the frame at the video working
  side foreground when at least half of it is; ``--ceiling-stride 4``: a finer grid) and decoded as
  a propagated frame is (the engine's refinement and component filter); J, F and J&F over the frames
  the video protocol scores. The distance from the video protocol's figures to these is what better
  matching could still win; the rest needs a finer decoder (thin parts narrower than a cell).

Each protocol prints its per-video table and the means over the easy videos (blackswan,
car-roundabout, car-shadow, dog: large, slow objects), the hard ones (the rest) and all of them.
A script rather than a ``dcsam`` subcommand: the split into easy and hard and the cross-video
pairs belong to this development set, not to the library's command line.

``--data`` defaults to ``$DCSAM_TEST_DATA/davis16-dev``, else ``../shared/data/davis16-dev``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
from tests.support.data import DATA  # noqa: E402  (DCSAM_TEST_DATA, else ../shared/data)

EASY = ("blackswan", "car-roundabout", "car-shadow", "dog")
CROSS_PAIRS = (("dog", "libby"), ("libby", "dog"), ("car-roundabout", "car-shadow"), ("car-shadow", "car-roundabout"))
IMAGE_EVERY = 10
PROTOCOLS = ("video", "image", "cross")  # "all"; "ceiling" only when asked for


def _load() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def _key_values(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--option {item!r}: expected KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def sequences(root: Path) -> list[str]:
    jpeg = root / "JPEGImages"
    if not jpeg.is_dir() or not (root / "Annotations").is_dir():
        raise SystemExit(f"{root}: not a DAVIS folder (needs JPEGImages/<seq>/ and Annotations/<seq>/); give --data")
    return sorted(p.name for p in jpeg.iterdir() if p.is_dir())


def _frames(root: Path, seq: str) -> list[Path]:
    from dcsam.video.frames import IMAGE_EXTENSIONS, natural_key

    files = [p for p in (root / "JPEGImages" / seq).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(files, key=lambda p: natural_key(p.name))


def image_episodes(root: Path, seqs: Sequence[str], every: int = IMAGE_EVERY) -> list[dict]:
    """One episode per video: frame 0 is the example, every ``every``-th frame after it a query."""
    episodes = []
    for seq in seqs:
        frames = _frames(root, seq)

        def item(p: Path, seq: str = seq) -> dict[str, str]:
            return {"image": str(p), "mask": str(root / "Annotations" / seq / f"{p.stem}.png")}

        queries = [item(p) for i, p in enumerate(frames) if i > 0 and i % every == 0]
        if queries:
            episodes.append({"label": seq, "support": [item(frames[0])], "query": queries})
    return episodes


def _group_means(values: dict[str, float | None], seqs: Sequence[str]) -> dict[str, float | None]:
    """Mean of the per-video figures over the easy videos, the hard ones and all of them."""
    groups = {"easy": [s for s in seqs if s in EASY], "hard": [s for s in seqs if s not in EASY], "all": list(seqs)}
    out: dict[str, float | None] = {}
    for name, members in groups.items():
        vals = [values[s] for s in members if values.get(s) is not None]
        out[name] = sum(vals) / len(vals) if vals else None  # type: ignore[arg-type]
    return out


def run_image(root: Path, seqs: Sequence[str], cfg: Any) -> dict[str, Any]:
    from dcsam.api import InContextSegmenter
    from dcsam.episode_evaluation import evaluate_episodes

    base = InContextSegmenter.from_config(cfg)

    def factory() -> InContextSegmenter:  # one model, examples reset per episode (no fine-tuning here)
        base.clear_examples()
        return base

    report = evaluate_episodes(factory, image_episodes(root, seqs), progress=False)
    rows = [
        {"name": e["label"], "iou": e["mean_iou"], "queries": len(e["ious"]), "min_iou": min(e["ious"])}
        for e in report["episodes"]
    ]
    per = {r["name"]: r["iou"] for r in rows}
    return {
        "protocol": "image",
        "rows": rows,
        "means": {"iou": _group_means(per, [r["name"] for r in rows])},
        "mean_iou_per_query": report["mean_iou"],
        "num_queries": report["num_queries"],
        "seconds_per_query": report["seconds_per_query"],
        "model_versions": report["model_versions"],
    }


def run_video(
    root: Path, seqs: Sequence[str], cfg: Any, cross: bool, echo: bool, video_options: dict[str, str] | None = None
) -> dict[str, Any]:
    from dcsam.api import InContextSegmenter
    from dcsam.video.api import VideoSegmenter
    from dcsam.video.vos_evaluation import davis_samples, evaluate_videos

    if cross:
        samples = []
        for support, target in CROSS_PAIRS:
            if support not in seqs or target not in seqs:
                print(f"cross: {support} -> {target} skipped (not in {root})", file=sys.stderr)
                continue
            first = _frames(root, support)[0]
            sup = (str(first), str(root / "Annotations" / support / f"{first.stem}.png"))
            [sample] = davis_samples(root, [target], in_context=True, support=sup)
            sample.name = f"{support}->{target}"
            samples.append(sample)
    else:
        samples = davis_samples(root, seqs)
    base = InContextSegmenter.from_config(cfg)
    shared = VideoSegmenter(base, propagation="auto", video_options=video_options)

    def factory() -> VideoSegmenter:
        base.clear_examples()
        return shared

    def on_sequence(row: dict[str, Any]) -> None:
        if echo:
            print(
                f"  {row['name']}: J {row['J']:.3f} F {row['F']:.3f} J&F {row['J&F']:.3f} "
                f"({row['seconds_per_frame']:.2f} s/frame)",
                file=sys.stderr,
                flush=True,
            )

    report = evaluate_videos(factory, samples, progress=False, on_sequence=on_sequence)
    rows = [{k: r[k] for k in ("name", "J", "F", "J&F", "frames", "seconds_per_frame")} for r in report["sequences"]]
    means: dict[str, Any] = {}
    for metric in ("J", "F", "J&F"):
        per = {r["name"].split("->")[-1]: r[metric] for r in rows}
        means[metric] = _group_means(per, list(per))
    return {
        "protocol": "cross" if cross else "video",
        "rows": rows,
        "means": means,
        "min_J&F": min((r["J&F"] for r in rows), default=None),
        "seconds_per_frame": report["seconds_per_frame"],
        "model_versions": report["model_versions"],
    }


def run_ceiling(
    root: Path, seqs: Sequence[str], cfg: Any, video_options: dict[str, str] | None = None, stride: int = 8
) -> dict[str, Any]:
    import torch

    from dcsam.engines import create_engine
    from dcsam.engines.lite import LiteEngine
    from dcsam.io import read_image, read_mask
    from dcsam.lite.matching import mask_fraction
    from dcsam.video.lite import LitePropagator
    from dcsam.video.metrics import SequenceScores, scored_frames

    if cfg.engine != "lite":  # checked first: another engine may need weights it would fetch
        raise SystemExit("--protocol ceiling measures the lite engine's decoding: use --engine lite")
    engine = create_engine(cfg)
    assert isinstance(engine, LiteEngine)
    propagator = LitePropagator(engine, video_options)  # for the working side of its frames
    certain = 10.0  # the logit of a sure cell: its probability saturates, as a perfect classifier's would
    rows = []
    for seq in seqs:
        frames = _frames(root, seq)
        scores = SequenceScores(seq)
        t0 = time.perf_counter()
        for i in scored_frames(len(frames)):
            image = read_image(str(frames[i]))
            truth = read_mask(str(root / "Annotations" / seq / f"{frames[i].stem}.png"))
            q = engine.encode_query(image, long_side=propagator.working_side(truth.shape), low_precision=True)
            wh, ww = q.work_image.shape[:2]
            cells = torch.from_numpy(mask_fraction(truth, (wh // stride, ww // stride)) >= 0.5)
            logit = torch.where(cells, certain, -certain)
            decoded = engine.decode_logit(q, logit, None, calibrated=True)
            scores.add(i, decoded.mask, truth)
        row = scores.summary()
        rows.append(
            {
                "name": seq,
                **{k: row[k] for k in ("J", "F", "J&F")},
                "frames": row["frames_scored"],
                "seconds_per_frame": (time.perf_counter() - t0) / max(1, row["frames_scored"]),
            }
        )
    means = {m: _group_means({r["name"]: r[m] for r in rows}, [r["name"] for r in rows]) for m in ("J", "F", "J&F")}
    return {"protocol": "ceiling", "stride": stride, "rows": rows, "means": means}


def format_result(res: dict[str, Any]) -> str:
    fmt = lambda v: "     -" if v is None else f"{v:6.3f}"  # noqa: E731
    metrics = ["iou"] if res["protocol"] == "image" else ["J", "F", "J&F"]
    width = max([len("video")] + [len(r["name"]) for r in res["rows"]])
    title = {
        "image": f"image one-shot (frame 0 -> every {IMAGE_EVERY}th frame), IoU",
        "video": "video, DAVIS protocol (frame 0 given; first and last frame not scored)",
        "cross": "across videos, in-context protocol (example: frame 0 of the other video; every frame scored)",
        "ceiling": "the decoding's ceiling (each frame's ground truth as a perfect grid classification, decoded)",
    }[res["protocol"]]
    head = f"{'video':<{width}}  " + "  ".join(f"{'IoU' if m == 'iou' else m:>6}" for m in metrics)
    head += "  queries" if res["protocol"] == "image" else "  frames  s/frame"
    lines = [title, head, "-" * len(head)]
    for r in res["rows"]:
        tag = " " if r["name"].split("->")[-1] in EASY else "*"
        vals = "  ".join(fmt(r[m]) for m in metrics)
        extra = (
            f"  {r['queries']:>7}"
            if res["protocol"] == "image"
            else f"  {r['frames']:>6}  {r['seconds_per_frame']:7.2f}"
        )
        lines.append(f"{r['name']:<{width}}  {vals}{extra}  {tag}")
    lines.append("-" * len(head))
    for group in ("easy", "hard", "all"):
        vals = "  ".join(fmt(res["means"][m][group]) for m in metrics)
        lines.append(f"{'mean ' + group:<{width}}  {vals}")
    lines.append("(* = hard video)")
    if res["protocol"] == "image":
        lines.append(f"seconds / query {res['seconds_per_query']:.3f}")
    elif res["protocol"] != "ceiling":
        lines.append(f"seconds / frame {res['seconds_per_frame']:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--protocol", choices=[*PROTOCOLS, "all", "ceiling"], default="all")
    p.add_argument("--data", type=Path, default=None, help="the davis16-dev folder (default: see above)")
    p.add_argument("--engine", default="lite")
    p.add_argument("--device", default="cpu")
    p.add_argument("--backbone", help="the lite engine's backbone, e.g. efficientnet_lite1 (default: the engine's)")
    p.add_argument("--sequences", help="comma-separated subset (for iterating; report on all of them)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="engine option")
    p.add_argument(
        "--video-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="lite propagation option (video, cross)",
    )
    p.add_argument("--ceiling-stride", type=int, default=8, help="the grid of --protocol ceiling (working pixels)")
    p.add_argument("--json", action="store_true", help="one JSON object with every figure")
    args = p.parse_args(argv)

    from dcsam.config import SegmenterConfig

    root = (args.data or DATA / "davis16-dev").resolve()
    seqs = sequences(root)
    if args.sequences:
        wanted = [s.strip() for s in args.sequences.split(",") if s.strip()]
        missing = sorted(set(wanted) - set(seqs))
        if missing:
            raise SystemExit(f"{root}: no sequence(s) {missing}")
        seqs = wanted
    options = _key_values(args.option)
    video_options = _key_values(args.video_option)
    backbone = {"backbone": args.backbone} if args.backbone else {}
    cfg = SegmenterConfig(engine=args.engine, device=args.device, options=options, **backbone)
    protocols = PROTOCOLS if args.protocol == "all" else (args.protocol,)
    out: dict[str, Any] = {
        "data": str(root),
        "engine": args.engine,
        "options": options,
        "video_options": video_options,
        "sequences": list(seqs),
        "load_average_start": _load(),
    }
    t0 = time.perf_counter()
    for proto in protocols:
        if proto == "image":
            res = run_image(root, seqs, cfg)
        elif proto == "ceiling":
            res = run_ceiling(root, seqs, cfg, video_options, args.ceiling_stride)
        else:
            res = run_video(root, seqs, cfg, cross=proto == "cross", echo=True, video_options=video_options)
        out[proto] = res
        if not args.json:
            print(format_result(res) + "\n", flush=True)
    out["load_average_end"] = _load()
    out["seconds"] = round(time.perf_counter() - t0, 1)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"load average {out['load_average_start']} -> {out['load_average_end']}; {out['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
