"""``dcsam bench``: pre-annotation throughput on this device, as JSON (see :mod:`dcsam.bench`)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

from .model_args import add_model_args


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give WIDTHxHEIGHT, e.g. 1280x960") from None
    if w < 16 or h < 16:
        raise argparse.ArgumentTypeError(f"{text!r}: at least 16x16")
    return w, h


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be >= 1")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be >= 0")
    return value


def _at_least_two(text: str) -> int:
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"{text!r}: must be >= 2 (a conditioning frame and one to propagate to)")
    return value


def _counts(text: str) -> tuple[int, ...]:
    try:
        values = tuple(dict.fromkeys(int(v) for v in text.split(",")))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give object counts separated by commas, e.g. 1,3") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: object counts must be >= 1")
    return values


BENCH_DOC = (
    "Measure end-to-end pre-annotation throughput (encoded image in, a platform's regions out, e.g. Label Studio "
    "brush RLE), a per-stage breakdown, and SAM's raw image encoder at the same batch size and precision. Prints "
    "JSON. The engine is DC-SAM."
)


def add_parsers(sub) -> None:
    from ..bench import output_names

    p = sub.add_parser("bench", help="measure pre-annotation throughput on this device (JSON)", description=BENCH_DOC)
    add_model_args(p, engine=False)
    p.add_argument(
        "--decoder",
        choices=["auto", "coldstart", "trained"],
        default="auto",
        help="auto: the trained path with --prompt-generator, else the cold start; 'trained' without a "
        "checkpoint times the trained path with untrained generator weights",
    )
    names = output_names()
    p.add_argument(
        "--output",
        choices=names,
        default=None,
        help=f"the platform edges of the end-to-end path (default {names[0]}: an installed platform's "
        "when there is one, else png)",
    )
    p.add_argument("--batch-size", type=_positive, default=8, help="images per model call (default 8)")
    p.add_argument(
        "--image-size",
        type=_positive,
        default=None,
        help="SAM input size (SAM 2 only; default 1024); the prior backbone runs at the same size and "
        "DC-SAM's grid at half of it",
    )
    p.add_argument(
        "--input-size",
        type=_size,
        default=(1280, 960),
        metavar="WxH",
        help="size of the synthetic query JPEGs (default 1280x960)",
    )
    p.add_argument("--jpeg-quality", type=int, default=90)
    p.add_argument("--iterations", type=_positive, default=10, help="timed batches per measurement (default 10)")
    p.add_argument("--warmup", type=_non_negative, default=2, help="untimed batches first (default 2)")
    p.add_argument("--compile", action="store_true", help="torch.compile SAM's image encoder")
    p.add_argument("--seed", type=int, default=0)
    v = p.add_argument_group("video", "our SAM 2 propagation against upstream SAM2VideoPredictor (SAM 2 models)")
    v.add_argument("--no-video", action="store_true", help="skip the video measurement")
    v.add_argument("--video-frames", type=_at_least_two, default=64, help="frames of the synthetic clip (default 64)")
    v.add_argument("--video-size", type=_size, default=(854, 480), metavar="WxH", help="frame size (default 854x480)")
    v.add_argument(
        "--video-objects", type=_counts, default=(1, 3), metavar="N,...", help="objects per run (default 1,3)"
    )
    v.add_argument(
        "--video-warmup-frames",
        type=_positive,
        default=16,
        help="frames of the untimed warm-up clip per object count and side (default 16)",
    )
    p.add_argument("--out", help="also write the JSON to this file")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    from ..bench import BenchOptions, run_bench
    from ..io import atomic_write_bytes

    with contextlib.redirect_stdout(sys.stderr):  # nothing but the JSON on stdout
        result = run_bench(BenchOptions.from_args(args))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        atomic_write_bytes(args.out, (text + "\n").encode())
    return 0
