#!/usr/bin/env python3
"""Peak memory of video propagation against video length: it must not grow with the length.

    python scripts/bench_video_memory.py [--lengths 100,300,1000] [--propagation sam2,lite]
                                         [--image-size 256] [--objects 2] [--data ../shared/data]

Frames are 480p (854x480) DAVIS frames from ``davis16-dev`` read by path and cycled lazily
(frame i = the (i mod 225)-th frame of the four sequences), so a 1000-frame video is never held
or written anywhere. The first frame's masks (``--objects`` labels: the ground truth of the first
sequence's frame 0, then other shapes) are given; every frame is segmented through
:class:`dcsam.video.VideoSegmenter` and its masks dropped.

Each (propagation, length) runs in a fresh subprocess, so its peak resident memory (VmHWM from
/proc/self/status) belongs to that run alone; RSS is also sampled every 50 frames. ``sam2`` uses
SAM 2.1 tiny with random weights (no checkpoint offline; memory and time do not depend on the
weights) at ``--image-size`` (SAM 2 input size; 1024 for the released models, smaller keeps a
CPU run short; the memory bank's size in frames is the same). ``lite`` is the lite engine.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
from tests.support.data import DATA as DEFAULT_DATA  # noqa: E402  (DCSAM_TEST_DATA, else ../shared/data)


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def run_one(args: argparse.Namespace) -> dict:
    """One measurement (in this process)."""
    import numpy as np
    import torch

    from dcsam import InContextSegmenter
    from dcsam.io import read_mask
    from dcsam.video import CallableSource, VideoSegmenter

    if args.threads:
        torch.set_num_threads(args.threads)
    davis = Path(args.data) / "davis16-dev"
    paths = sorted((davis / "JPEGImages").glob("*/*.jpg"))
    if not paths:
        raise SystemExit(f"no DAVIS frames under {davis}")
    frames = CallableSource(args.length, lambda i: str(paths[i % len(paths)]), name=f"cycled-{args.length}")
    first = read_mask(str(sorted((davis / "Annotations").glob("*/00000.png"))[0]))
    masks = {"object0": first}
    h, w = first.shape
    for k in range(1, args.objects):
        m = np.zeros_like(first)
        m[h // 4 : 3 * h // 4, (k - 1) * w // args.objects : k * w // args.objects] = True
        masks[f"object{k}"] = m
    torch.manual_seed(0)
    if args.propagation == "sam2":
        seg = InContextSegmenter.from_config(
            engine="dcsam", sam="sam2.1_hiera_t", random_sam_weights=True, sam_image_size=args.image_size, device="cpu"
        )
    else:
        seg = InContextSegmenter.from_config(engine="lite", device="cpu")
    vs = VideoSegmenter(seg, propagation=args.propagation)
    rss_after_load = _status_kb("VmRSS")
    samples = []
    t0 = time.perf_counter()
    n = 0
    for r in vs.segment(frames, masks=masks, direction="forward"):
        n += 1
        if r.error:
            raise SystemExit(f"frame {r.index}: {r.error}")
        if n % 50 == 0 or n == args.length:
            samples.append({"frame": n, "rss_mb": round(_status_kb("VmRSS") / 1024, 1)})
    seconds = time.perf_counter() - t0
    return {
        "propagation": args.propagation,
        "length": args.length,
        "frames_done": n,
        "objects": args.objects,
        "image_size": args.image_size if args.propagation == "sam2" else None,
        "peak_rss_mb": round(_status_kb("VmHWM") / 1024, 1),
        "rss_after_model_load_mb": round(rss_after_load / 1024, 1),
        "rss_samples": samples,
        "seconds_per_frame": round(seconds / max(n, 1), 3),
        "torch_threads": torch.get_num_threads(),
        "memory_bank_at_end": vs.memory_stats,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", default="100,300,1000")
    p.add_argument("--propagation", default="sam2,lite", help="comma-separated: sam2, lite")
    p.add_argument("--image-size", type=int, default=256, help="SAM 2 input size (default 256; released models: 1024)")
    p.add_argument("--objects", type=int, default=2, help="labels tracked together")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="folder holding davis16-dev/")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--length", type=int, help=argparse.SUPPRESS)  # child mode
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        args.propagation = args.propagation.split(",")[0]
        print(json.dumps(run_one(args)))
        return 0
    runs = []
    load_start = [round(v, 2) for v in os.getloadavg()]
    for prop in [x for x in args.propagation.split(",") if x]:
        for length in [int(x) for x in args.lengths.split(",") if x]:
            cmd = [
                sys.executable,
                __file__,
                "--child",
                "--propagation",
                prop,
                "--length",
                str(length),
                "--image-size",
                str(args.image_size),
                "--objects",
                str(args.objects),
                "--data",
                args.data,
            ]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"run {prop} x {length} failed")
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(json.dumps(runs[-1]), file=sys.stderr)
    summary = {}
    for prop in {r["propagation"] for r in runs}:
        peaks = [r["peak_rss_mb"] for r in runs if r["propagation"] == prop]
        summary[prop] = {
            "peak_rss_mb_min": min(peaks),
            "peak_rss_mb_max": max(peaks),
            "growth_mb_shortest_to_longest": round(peaks[-1] - peaks[0], 1),
        }
    print(
        json.dumps(
            {
                "runs": runs,
                "summary": summary,
                "frame_size": "854x480 (DAVIS 480p, cycled)",
                "load_average_start": load_start,
                "load_average_end": [round(v, 2) for v in os.getloadavg()],
                "cpu_count": os.cpu_count(),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
