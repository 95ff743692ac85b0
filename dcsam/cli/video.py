"""``dcsam eval-video``: J, F and J&F of video segmentation, DAVIS-style (see :mod:`dcsam.video.vos_evaluation`)."""

from __future__ import annotations

import argparse
import json
import logging

from ..errors import DcsamError
from .model_args import add_model_args, model_config

log = logging.getLogger("dcsam")


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "eval-video",
        help="score video segmentation (J, F, J&F per sequence and the mean)",
        description="DAVIS protocol (--davis-root: the first frame's mask is given), in-context protocol "
        "(--support-image/--support-mask: an example from another image prompts the first frame), "
        "or the IC-VOS layout (--icvos-root). Scored frames: DAVIS rule (all but the first and the "
        "last) when the first frame is given, every frame otherwise.",
    )
    add_model_args(p)
    p.add_argument(
        "--davis-root",
        help="DAVIS folder: flat (JPEGImages/<seq>/, Annotations/<seq>/) or as the official download unpacks "
        "(JPEGImages/480p/<seq>/, Annotations/480p/<seq>/)",
    )
    p.add_argument(
        "--resolution", default="480p", help="official DAVIS layout: which resolution folder to read (default 480p)"
    )
    p.add_argument("--sequences", help="comma-separated sequence names (default: all)")
    p.add_argument(
        "--icvos-root", metavar="DIR", help="IC-VOS folder: <video>/JPEGImages/, <video>/Annotations/<class_id>/"
    )
    p.add_argument("--videos", help="IC-VOS: comma-separated video ids (default: all)")
    p.add_argument("--classes", help="IC-VOS: comma-separated class ids (default: all)")
    p.add_argument("--support-dir", metavar="DIR", help="IC-VOS: per-class supports <class_id>.jpg + <class_id>.png")
    p.add_argument(
        "--support-image", metavar="FILE", help="in-context protocol: example image (from another image or video)"
    )
    p.add_argument("--support-mask", metavar="FILE", help="mask of --support-image")
    p.add_argument(
        "--propagation",
        choices=["auto", "sam2", "lite"],
        default="auto",
        help="auto: SAM 2 memory with a DC-SAM SAM 2 engine, else the lite engine's propagation",
    )
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="engine option (e.g. lite 'size=640')")
    p.add_argument(
        "--video-option",
        action="append",
        metavar="KEY=VALUE",
        help="propagation option (lite: memory_frames, prior_weight, flow ...; sam2: fill_hole_area)",
    )
    p.add_argument("--sam-image-size", type=int, help="SAM 2 input size (default 1024; smaller for CPU smoke runs)")
    p.add_argument("--max-frames", type=int, help="only the first N frames of each video (IC-VOS default 512)")
    p.add_argument(
        "--score-frames",
        choices=["davis", "all", "skip-first"],
        help="which frames count (default: davis when the first frame is given, else all)",
    )
    p.add_argument("--eval-size", type=int, help="score at SxS (IC-VOS default 512; DAVIS default: native size)")
    p.add_argument(
        "--save-masks",
        metavar="DIR",
        help="write every predicted frame as a DAVIS palette PNG: DIR/<sequence>/<frame>.png",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help='JSON lines: {"sequence": row} as each sequence is scored, then the whole report on the last line',
    )
    p.set_defaults(func=cmd_eval_video)


def cmd_eval_video(args: argparse.Namespace) -> int:
    from ..api import InContextSegmenter
    from ..video.api import VideoSegmenter
    from ..video.vos_evaluation import (
        DavisMaskWriter,
        davis_samples,
        evaluate_videos,
        format_video_footer,
        format_video_header,
        format_video_rows,
        icvos_samples,
        object_names,
        parse_sequences,
        table_width,
    )

    if bool(args.davis_root) == bool(args.icvos_root):
        raise DcsamError("give either --davis-root DIR or --icvos-root DIR")
    if bool(args.support_image) != bool(args.support_mask):
        raise DcsamError("give --support-image and --support-mask together")
    support = (args.support_image, args.support_mask) if args.support_image else None
    extra = {"options": _key_values(args.option, "--option")}
    if args.sam_image_size:
        extra["sam_image_size"] = args.sam_image_size
    cfg = model_config(args, **extra)
    video_options = _key_values(args.video_option, "--video-option")
    eval_size = args.eval_size
    if args.davis_root:
        samples = davis_samples(
            args.davis_root,
            parse_sequences(args.sequences),
            in_context=support is not None,
            support=support,
            max_frames=args.max_frames,
            resolution=args.resolution,
        )
        protocol = "in-context" if support else "davis"
    else:
        samples = icvos_samples(
            args.icvos_root,
            parse_sequences(args.videos),
            support_dir=args.support_dir,
            support=support,
            classes=parse_sequences(args.classes),
            max_frames=args.max_frames or 512,
        )
        protocol = "icvos"
        eval_size = 512 if eval_size is None else eval_size

    base = InContextSegmenter.from_config(cfg)  # one model for every sample; examples are reset per sample
    shared = VideoSegmenter(base, propagation=args.propagation, video_options=video_options)

    def factory() -> VideoSegmenter:
        base.clear_examples()
        return shared

    log.info("eval-video: %s protocol, %d samples, %s", protocol, len(samples), shared.version)
    writer = DavisMaskWriter(args.save_masks) if args.save_masks else None
    width = table_width([n for s in samples for n in object_names(s)])

    # each sequence's result as soon as it is scored: a table row, or a JSON line
    def on_sequence(row: dict) -> None:
        if args.json:
            print(json.dumps({"sequence": row}), flush=True)
        else:
            print("\n".join(format_video_rows(row, width)), flush=True)

    if not args.json:
        print("\n".join(format_video_header(width)), flush=True)
    report = evaluate_videos(
        factory,
        samples,
        frame_rule=args.score_frames,
        eval_size=eval_size,
        progress=not args.json,
        on_sequence=on_sequence,
        on_frame=writer,
    )
    report = {"protocol": protocol, "engine": cfg.engine, "propagation": shared.propagation, **report}
    if writer is not None:
        report["saved_masks"] = {"folder": str(writer.root), "frames": writer.written}
    if args.json:
        print(json.dumps(report), flush=True)
    else:
        print("\n".join(format_video_footer(report, width)))
        if writer is not None:
            print(f"masks              {writer.written} frames in {writer.root}/<sequence>/")
    return 0


def _key_values(items: list[str] | None, what: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise DcsamError(f"{what} {item!r}: expected KEY=VALUE")
        out[key.strip()] = value.strip()
    return out
