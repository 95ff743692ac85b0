"""``dcsam bench``: how fast pre-annotation runs on this device, and how close it is to the hardware.

One run measures, on whatever device it runs on, with the example's features cached once:

* **end_to_end**: the backend's own path, JPEG bytes in, Label Studio brush RLE regions out
  (``backend.media.decode_image`` -> ``InContextSegmenter.predict`` -> ``backend.outputs.BrushOutput``),
  images/s and per-batch latency. No synchronisation inside a batch, as in production.
* **stages**: the same work split into decode, preprocess (resize, pinned-memory transfer), prior
  backbone, SAM encoder, prompt generator + SAM decoder (the engine's own code, including the upsampling
  of the masks to the native size), and RLE; CUDA is synchronised around every stage timer.
* **sam_encoder_raw**: SAM's own image encoder alone at the same batch size and precision, on a
  ready-made input tensor: the ceiling the pipeline can reach, and the ratio of the two.
* **video** (issue 8): frames/s of our SAM 2 video propagation (``dcsam.video.VideoSegmenter`` with
  ``Sam2Propagator``: one pass for all objects, bounded memory) against upstream SAM 2's own
  ``SAM2VideoPredictor`` (the ``sam2`` package, same weights, same autocast) on the same synthetic
  clip (moving shapes, fixed seed), for each object count of ``--video-objects``, after an untimed
  warm-up clip. Both start from the objects' masks on frame 0 (upstream: ``add_new_mask`` per object,
  then ``propagate_in_video``) and get the same in-memory frames: upstream's ``init_state`` reads them
  through its own loader's slot (``load_video_frames``), resized and normalised as ours does, instead
  of JPEG files, so no JPEG decoding is timed on either side; its ``init_state`` (preprocessing of
  every frame, encoding of frame 0) is timed as part of its run and reported apart. A run ends with
  every frame's masks on the host as bool arrays, on both sides. Also: the mean IoU of our masks
  against upstream's (frames 1..N-1), i.e. whether the two did the same work.

Everything runs under ``torch.inference_mode``; bf16 autocast on CUDA is the engine's own
(``--precision``; the video part gives upstream the same autocast); ``--compile`` compiles SAM's image
encoder with ``torch.compile`` for the pipeline, the raw measurement and both video sides. The queries
are synthetic JPEGs and the clip synthetic frames (fixed seed), so no data set is needed.

    dcsam bench --sam sam2.1_hiera_b+ --batch-size 8 --precision bf16          # a GPU
    dcsam bench --sam sam2.1_hiera_t --random-weights --image-size 256 --offline  # CPU smoke run
    dcsam bench ... --video-frames 64 --video-size 854x480 --video-objects 1,3     # video (the defaults)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # numpy, cv2 and torch are imported where used: registering the subcommand stays light
    import numpy as np

BENCH_SCHEMA = 1
LABEL = "object"
VIDEO_TARGETS = {1: 1.0, 3: 2.0}  # issue 8: our frames/s over SAM2VideoPredictor's, per object count
STAGES = ("decode", "preprocess", "backbone", "sam_encoder", "prompt_decoder", "rle")


@dataclass
class BenchOptions:
    sam: str = "sam2.1_hiera_t"
    sam_checkpoint: str | None = None
    backbone: str = "efficientnet_lite0"
    backbone_weights: str | None = None
    prompt_generator: str | None = None
    decoder: str = "auto"  # auto | coldstart | trained
    random_weights: str | None = None  # None | sam | backbone | all
    offline: bool = False
    device: str = "auto"
    precision: str = "auto"  # auto | fp32 | bf16
    batch_size: int = 8
    image_size: int | None = None  # SAM input size (SAM 2 only; default 1024)
    input_size: tuple[int, int] = (1280, 960)  # synthetic query JPEGs, width x height
    jpeg_quality: int = 90
    iterations: int = 10
    warmup: int = 2
    compile: bool = False
    seed: int = 0
    video: bool = True
    video_frames: int = 64
    video_size: tuple[int, int] = (854, 480)  # synthetic clip, width x height
    video_objects: tuple[int, ...] = (1, 3)
    video_warmup_frames: int = 16  # covers the memory bank's growth (7 memory frames, 16 object pointers)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "BenchOptions":
        return cls(
            sam=args.sam, sam_checkpoint=args.sam_checkpoint, backbone=args.backbone,
            backbone_weights=args.backbone_weights, prompt_generator=args.prompt_generator, decoder=args.decoder,
            random_weights=args.random_weights, offline=args.offline, device=args.device, precision=args.precision,
            batch_size=args.batch_size, image_size=args.image_size, input_size=args.input_size,
            jpeg_quality=args.jpeg_quality, iterations=args.iterations, warmup=args.warmup, compile=args.compile,
            seed=args.seed, video=not args.no_video, video_frames=args.video_frames, video_size=args.video_size,
            video_objects=args.video_objects, video_warmup_frames=args.video_warmup_frames,
        )


# -- command line --------------------------------------------------------------------------------
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


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``dcsam bench`` on an argparse subparsers object; ``func(args)`` returns an exit code."""
    env = os.environ.get
    p = subparsers.add_parser(
        "bench", help="measure pre-annotation throughput on this device (JSON)",
        description="Measure end-to-end pre-annotation throughput (JPEG bytes in, brush RLE out), a per-stage "
                    "breakdown, and SAM's raw image encoder at the same batch size and precision. Prints JSON.")
    p.add_argument("--sam", default=env("DCSAM_SAM", "sam2.1_hiera_t"), help="base model (default $DCSAM_SAM or sam2.1_hiera_t)")
    p.add_argument("--sam-checkpoint", default=env("DCSAM_SAM_CHECKPOINT"))
    p.add_argument("--backbone", default=env("DCSAM_BACKBONE", "efficientnet_lite0"))
    p.add_argument("--backbone-weights", default=env("DCSAM_BACKBONE_WEIGHTS"))
    p.add_argument("--prompt-generator", default=env("DCSAM_PROMPT_GENERATOR"), help="trained prompt-generator checkpoint")
    p.add_argument("--decoder", choices=["auto", "coldstart", "trained"], default="auto",
                   help="auto: the trained path with --prompt-generator, else the cold start; 'trained' without a "
                        "checkpoint times the trained path with untrained generator weights")
    p.add_argument("--random-weights", nargs="?", const="sam", choices=["sam", "backbone", "all"],
                   help="random weights for these parts (alone: sam; the default backbone's weights are bundled); "
                        "timings only, for smoke runs")
    p.add_argument("--offline", action="store_true", help="never download weights")
    p.add_argument("--device", default=env("DCSAM_DEVICE", "auto"), help="auto | cpu | cuda | cuda:N")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="auto: bf16 autocast on CUDA, fp32 on CPU (the engine autocasts on CUDA only)")
    p.add_argument("--batch-size", type=_positive, default=8, help="images per model call (default 8)")
    p.add_argument("--image-size", type=_positive, default=None,
                   help="SAM input size (SAM 2 only; default 1024); the prior backbone runs at the same size and "
                        "DC-SAM's grid at half of it")
    p.add_argument("--input-size", type=_size, default=(1280, 960), metavar="WxH",
                   help="size of the synthetic query JPEGs (default 1280x960)")
    p.add_argument("--jpeg-quality", type=int, default=90)
    p.add_argument("--iterations", type=_positive, default=10, help="timed batches per measurement (default 10)")
    p.add_argument("--warmup", type=_non_negative, default=2, help="untimed batches first (default 2)")
    p.add_argument("--compile", action="store_true", help="torch.compile SAM's image encoder")
    p.add_argument("--seed", type=int, default=0)
    v = p.add_argument_group("video", "our SAM 2 propagation against upstream SAM2VideoPredictor (SAM 2 models)")
    v.add_argument("--no-video", action="store_true", help="skip the video measurement")
    v.add_argument("--video-frames", type=_at_least_two, default=64, help="frames of the synthetic clip (default 64)")
    v.add_argument("--video-size", type=_size, default=(854, 480), metavar="WxH",
                   help="size of the synthetic clip's frames (default 854x480, 480p)")
    v.add_argument("--video-objects", type=_counts, default=(1, 3), metavar="N[,N...]",
                   help="object counts to measure, one run each (default 1,3)")
    v.add_argument("--video-warmup-frames", type=_positive, default=16,
                   help="frames of the untimed warm-up clip per object count and side (default 16)")
    p.add_argument("--out", help="also write the JSON to this file")
    p.set_defaults(func=cmd_bench)
    return p


def cmd_bench(args: argparse.Namespace) -> int:
    with contextlib.redirect_stdout(sys.stderr):  # nothing but the JSON on stdout
        result = run_bench(BenchOptions.from_args(args))
    text = json.dumps(result, indent=2)
    print(text)
    if getattr(args, "out", None):
        from .io import atomic_write_bytes

        atomic_write_bytes(args.out, (text + "\n").encode())
    return 0


# -- synthetic data ----------------------------------------------------------------------------
def synthetic_scene(width: int, height: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A textured ellipse on a noisy gradient: uint8 RGB (H, W, 3) and its bool mask."""
    import numpy as np

    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(40, 200, size=3).astype(np.float32)
    slope = rng.uniform(-60, 60, size=(2, 3)).astype(np.float32)
    img = base + (xx / width)[..., None] * slope[0] + (yy / height)[..., None] * slope[1]
    cx, cy = rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height
    rx, ry = rng.uniform(0.12, 0.25) * width, rng.uniform(0.12, 0.25) * height
    mask = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
    stripes = (np.sin(xx / 7.0) * 0.5 + 0.5)[..., None] * np.array([180, 40, 30], np.float32)
    img = np.where(mask[..., None], stripes + 40.0, img)
    img += rng.normal(0, 6, size=img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8), mask


def synthetic_video(width: int, height: int, num_frames: int, num_objects: int,
                    rng: np.random.Generator) -> tuple[list[np.ndarray], np.ndarray]:
    """A clip of ``num_objects`` textured shapes (ellipse, square, diamond...) moving over a noisy
    gradient, one horizontal lane each (they never overlap nor leave the frame, so no mask is ever
    empty). Returns the uint8 RGB (H, W, 3) frames and the objects' bool masks on frame 0 (K, H, W)."""
    import numpy as np

    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(50, 190, size=3).astype(np.float32)
    slope = rng.uniform(-50, 50, size=(2, 3)).astype(np.float32)
    background = (base + (xx / width)[..., None] * slope[0] + (yy / height)[..., None] * slope[1]
                  + rng.normal(0, 8, size=(height, width, 3)).astype(np.float32))
    lane = height / num_objects
    objects = []
    for k in range(num_objects):
        rx, ry = rng.uniform(0.06, 0.12) * width, rng.uniform(0.2, 0.3) * lane
        objects.append({
            "rx": rx, "ry": ry, "x0": rng.uniform(rx, width - rx),
            "vx": rng.choice([-1.0, 1.0]) * rng.uniform(0.01, 0.03) * width,  # per frame
            "colour": rng.uniform(0, 255, size=3).astype(np.float32), "angle": rng.uniform(0, np.pi),
        })
    frames: list[np.ndarray] = []
    first: list[np.ndarray] = []
    for t in range(num_frames):
        img = background + rng.normal(0, 4, size=background.shape).astype(np.float32)
        for k, o in enumerate(objects):
            span = width - 2 * o["rx"]  # the centre bounces between rx and width - rx
            pos = (o["x0"] - o["rx"] + o["vx"] * t) % (2 * span)
            cx = o["rx"] + (pos if pos <= span else 2 * span - pos)
            cy = (k + 0.5) * lane + 0.1 * lane * np.sin(t / 5.0 + k)
            dx, dy = np.abs(xx - cx) / o["rx"], np.abs(yy - cy) / o["ry"]
            inside = (dx ** 2 + dy ** 2 <= 1.0, np.maximum(dx, dy) <= 1.0, dx + dy <= 1.0)[k % 3]
            stripes = np.sin((xx * np.cos(o["angle"]) + yy * np.sin(o["angle"])) / 5.0) * 0.2 + 0.8
            img = np.where(inside[..., None], o["colour"] * stripes[..., None], img)
            if t == 0:
                first.append(inside)
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
    return frames, np.stack(first)


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


# -- timing helpers ------------------------------------------------------------------------------
def _sync(device) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def _summary(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000.0 for s in seconds)
    p90 = ms[min(len(ms) - 1, int(round(0.9 * (len(ms) - 1))))]
    return {"mean": round(statistics.fmean(ms), 3), "p50": round(statistics.median(ms), 3), "p90": round(p90, 3),
            "min": round(ms[0], 3)}


def _positive_ms(seconds: float) -> float:
    # Rounded to microseconds but never 0: a stage that ran took time, however little.
    return max(round(seconds * 1000.0, 3), 0.001)


def _device_info(device) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"type": device.type, "torch": torch.__version__, "cuda": torch.version.cuda,
                            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                            "python": platform.python_version()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}", cudnn=torch.backends.cudnn.version())
    else:
        info["name"] = platform.processor() or platform.machine()
    return info


# -- the benchmark -------------------------------------------------------------------------------
def _segmenter_config(opts: BenchOptions):
    from .config import SegmenterConfig

    rnd = opts.random_weights or ""
    sizes: dict[str, Any] = {}
    if opts.image_size is not None:
        # SAM 2 at a smaller input; the prior backbone at the same size, DC-SAM's grid at half of it.
        sizes = {"sam_image_size": opts.image_size, "backbone_input_size": opts.image_size,
                 "image_size": max(64, opts.image_size // 2)}
    return SegmenterConfig(
        engine="dcsam", sam=opts.sam, sam_checkpoint=opts.sam_checkpoint, backbone=opts.backbone,
        backbone_weights=opts.backbone_weights, prompt_generator=opts.prompt_generator,
        random_sam_weights=rnd in ("sam", "all"), random_backbone_weights=rnd in ("backbone", "all"),
        allow_download=not opts.offline, device=opts.device, precision=opts.precision, batch_size=opts.batch_size,
        **sizes,
    )


def _batch_to_device(images: list[np.ndarray], size: int, device):
    """uint8 (H, W, 3) images -> float (B, 3, size, size) in [0, 1] on ``device``.

    The same resize as the engine's ``to_tensor`` (on the CPU, area when shrinking), but one pinned
    uint8 host buffer and one asynchronous copy per batch; the float conversion runs on the device.
    """
    import cv2
    import torch

    host = torch.empty((len(images), size, size, 3), dtype=torch.uint8, pin_memory=device.type == "cuda")
    for i, img in enumerate(images):
        interp = cv2.INTER_AREA if max(img.shape[:2]) > size else cv2.INTER_LINEAR
        host[i] = torch.from_numpy(cv2.resize(img, (size, size), interpolation=interp))
    return host.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)


def _raw_encoder(sam_adapter) -> tuple[Callable, str]:
    """SAM's own image encoding for a normalised (B, 3, S, S) input, without our adapter."""
    model = sam_adapter.model
    if sam_adapter.family == "sam2":
        return model.forward_image, f"{type(model).__name__}.forward_image (Hiera trunk + FPN neck)"
    return model.image_encoder, f"{type(model.image_encoder).__name__} (ViT)"


def run_bench(opts: BenchOptions) -> dict[str, Any]:
    import numpy as np
    import torch

    from backend.labelconfig import ControlTag
    from backend.media import decode_image
    from backend.outputs import BrushOutput

    from .api import InContextSegmenter
    from .engines.base import LabelledImage
    from .modeling import SupportFeatures

    rng = np.random.default_rng(opts.seed)
    torch.manual_seed(opts.seed)
    notes: list[str] = []
    cfg = _segmenter_config(opts)
    with torch.inference_mode():
        t0 = time.perf_counter()
        seg = InContextSegmenter.from_config(cfg)
        build_s = time.perf_counter() - t0
        engine = seg.engine
        device, dtype = engine.device, engine.dtype
        if device.type == "cuda":  # TF32 etc. left as the backend has them: the figures are the backend's
            torch.cuda.reset_peak_memory_stats(device)
        decoder = opts.decoder
        if decoder == "auto":
            decoder = "trained" if engine.trained else "coldstart"
        if decoder == "trained" and not engine.trained:
            # Times the trained path (the product's) with the generator's initial weights.
            engine.load_trainable_state_dict(engine.model.generator.state_dict())
            notes.append("decoder 'trained' without --prompt-generator: untrained generator weights (timing only)")
        elif decoder == "coldstart" and engine.trained:
            engine.trained = False
        effective = "bf16" if device.type == "cuda" and dtype == torch.bfloat16 else (
            "fp16" if device.type == "cuda" and dtype == torch.float16 else "fp32")
        if effective == "fp32" and opts.precision == "bf16":
            notes.append("bf16 asked for, but the engine autocasts on CUDA only: measured in fp32")
        adapter = engine.model.sam
        if opts.compile:
            adapter.model.image_encoder = torch.compile(adapter.model.image_encoder)
            notes.append("SAM image encoder compiled with torch.compile (warm-up batches include compilation)")

        # The example: features computed once and cached, as the backend does.
        ex_img, ex_mask = synthetic_scene(*opts.input_size, rng)
        ex_img = decode_image(encode_jpeg(ex_img, opts.jpeg_quality), 10**9, "example")
        t0 = time.perf_counter()
        seg.add_examples([ex_img], [ex_mask], label=LABEL)
        _sync(device)
        example_s = time.perf_counter() - t0
        support = SupportFeatures.cat([engine.encode_example(LabelledImage(ex_img, ex_mask))])

        pool = [encode_jpeg(synthetic_scene(*opts.input_size, rng)[0], opts.jpeg_quality)
                for _ in range(max(opts.batch_size, 4))]
        batches = [[pool[(b * opts.batch_size + i) % len(pool)] for i in range(opts.batch_size)]
                   for b in range(opts.warmup + opts.iterations)]
        writer = BrushOutput(ControlTag("tag", "brushlabels", "image", (LABEL,)))
        max_pixels = 10**9

        # 1. End to end: the backend's path, synchronised only per batch (masks come back to the host anyway).
        nonempty = 0
        e2e: list[float] = []
        for b, jpegs in enumerate(batches):
            t0 = time.perf_counter()
            images = [decode_image(j, max_pixels, "query") for j in jpegs]
            preds = seg.predict(images, labels=[LABEL])
            regions = [writer.region(p.masks[LABEL], LABEL, p.scores[LABEL]) for p in preds]
            _sync(device)
            if b >= opts.warmup:
                e2e.append(time.perf_counter() - t0)
                nonempty += sum(r is not None for r in regions)

        # 2. The same work in stages, synchronised around every timer.
        size = adapter.image_size
        stage_s: dict[str, list[float]] = {k: [] for k in STAGES}
        for b, jpegs in enumerate(batches):
            times: dict[str, float] = {}

            def timed(name: str, fn: Callable):
                t = time.perf_counter()
                out = fn()
                _sync(device)
                times[name] = time.perf_counter() - t
                return out

            images = timed("decode", lambda: [decode_image(j, max_pixels, "query") for j in jpegs])
            batch = timed("preprocess", lambda: _batch_to_device(images, size, device))
            with engine._autocast():
                feats = timed("sam_encoder", lambda: adapter.encode(batch))
                query = timed("backbone", lambda: engine.model.encode_query(batch, sam=feats))
                results: list[dict] = [{} for _ in images]
                # The engine's own decoding code (it repeats the example's features per query itself).
                step = engine._predict_trained if engine.trained else engine._predict_cold_start
                timed("prompt_decoder", lambda: step(images, query, support, LABEL, results))
            timed("rle", lambda: [writer.region(r[LABEL].mask, LABEL, r[LABEL].score) for r in results])
            if b >= opts.warmup:
                for k in STAGES:
                    stage_s[k].append(times[k])

        # 3. SAM's raw image encoder, same batch size and precision, input already on the device.
        encode, encoder_name = _raw_encoder(adapter)
        x = torch.randn(opts.batch_size, 3, size, size, device=device)
        raw: list[float] = []
        with engine._autocast():
            for b in range(opts.warmup + opts.iterations):
                _sync(device)
                t0 = time.perf_counter()
                encode(x)
                _sync(device)
                if b >= opts.warmup:
                    raw.append(time.perf_counter() - t0)
        peak_mib = _peak_mib(device)  # the image part's, before the video runs

        # 4. Video: our propagation against upstream SAM2VideoPredictor on the same clip.
        video = video_bench(opts, seg, effective) if opts.video else {"status": "skipped (--no-video)"}

    n_img = opts.batch_size * opts.iterations
    e2e_total = sum(e2e)
    e2e_ips = n_img / e2e_total
    stage_mean = {k: statistics.fmean(v) for k, v in stage_s.items()}
    stages_total = sum(stage_mean.values())
    raw_mean = statistics.fmean(raw)
    raw_ips = opts.batch_size / raw_mean
    jpeg_kib = statistics.fmean(len(j) for j in pool) / 1024
    if opts.random_weights:
        notes.append(f"random weights ({opts.random_weights}): timings only, the masks mean nothing")
    if opts.image_size is not None:
        notes.append(f"SAM input {opts.image_size} instead of the model's default: not comparable with 1024 runs")
    return {
        "schema": BENCH_SCHEMA,
        "device": _device_info(device),
        "config": {
            "engine": "dcsam", "model_version": seg.version, "sam": opts.sam, "backbone": opts.backbone,
            "decoder": decoder, "random_weights": opts.random_weights, "batch_size": opts.batch_size,
            "precision": {"requested": opts.precision, "effective": effective}, "compile": opts.compile,
            "sam_image_size": size, "backbone_input_size": engine.model.backbone.input_size,
            "dcsam_image_size": engine.model.image_size, "input_size": list(opts.input_size),
            "jpeg_kib_mean": round(jpeg_kib, 1), "iterations": opts.iterations, "warmup": opts.warmup,
            "model_build_s": round(build_s, 3),
        },
        "example": {"cached": True, "encode_ms": _positive_ms(example_s)},
        "end_to_end": {
            "path": "backend.media.decode_image -> InContextSegmenter.predict -> backend.outputs.BrushOutput (RLE)",
            "images": n_img, "images_per_s": round(e2e_ips, 4), "batch_ms": _summary(e2e),
            "masks_nonempty": nonempty,
        },
        "stages": {
            k: {"ms_per_batch": _positive_ms(v), "ms_per_image": _positive_ms(v / opts.batch_size),
                "share": round(v / stages_total, 4)}
            for k, v in stage_mean.items()
        },
        "stages_total": {"ms_per_batch": _positive_ms(stages_total), "images_per_s": round(opts.batch_size / stages_total, 4)},
        "sam_encoder_raw": {"callable": encoder_name, "ms_per_batch": _positive_ms(raw_mean),
                            "batch_ms": _summary(raw), "images_per_s": round(raw_ips, 4)},
        "ratios": {
            # 1.0 would mean pre-annotation runs as fast as SAM's encoder alone (the hardware-bound ceiling).
            "end_to_end_over_raw_encoder": round(e2e_ips / raw_ips, 4),
            # Our encoder stage (resize + normalise + SAM + feature reshaping) against SAM's own.
            "sam_encoder_stage_over_raw": round(stage_mean["sam_encoder"] / raw_mean, 4),
        },
        "peak_gpu_memory_mib": peak_mib,
        "video": video,
        "notes": notes,
    }


# -- video: our propagation against upstream SAM2VideoPredictor ------------------------------------
def _upstream_video_predictor(model, sam_name: str, device, fill_hole_area: int):
    """SAM 2's own ``SAM2VideoPredictor``, built by its own builder (video post-processing included),
    with ``model``'s weights (the same input size)."""
    from sam2.build_sam import build_sam2_video_predictor

    from .sam_models import get_spec

    predictor = build_sam2_video_predictor(get_spec(sam_name).arch, ckpt_path=None, device=device,
                                           hydra_overrides_extra=[f"++model.image_size={model.image_size}"])
    # the same weights (strict); a torch.compile'd encoder names its parameters "._orig_mod."
    predictor.load_state_dict({k.replace("._orig_mod", ""): v for k, v in model.state_dict().items()})
    predictor.fill_hole_area = fill_hole_area
    return predictor.eval()


def _peak_mib(device) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None


def _reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _mean_iou(ours: dict[int, list[np.ndarray]], theirs: dict[int, np.ndarray]) -> float:
    """Mean IoU over frames 1..N-1 and objects (two empty masks agree: 1)."""
    import numpy as np

    ious = []
    for i in sorted(ours):
        if i == 0:  # the conditioning frame: ours is the given mask, upstream's its decoding of it
            continue
        for a, b in zip(ours[i], theirs[i]):
            union = np.logical_or(a, b).sum()
            ious.append(1.0 if union == 0 else float(np.logical_and(a, b).sum() / union))
    return float(np.mean(ious))


def _nonempty_share(masks: dict[int, Any]) -> float:
    return round(float(sum(m.any() for ms in masks.values() for m in ms)
                       / max(1, sum(len(ms) for ms in masks.values()))), 4)


def video_bench(opts: BenchOptions, seg, effective: str) -> dict[str, Any]:
    """Our SAM 2 propagation against upstream ``SAM2VideoPredictor``, per object count (see the
    module's docstring). ``seg``: the bench's :class:`InContextSegmenter` (its SAM 2 model is used)."""
    import importlib.metadata
    from unittest import mock

    import numpy as np
    import sam2.sam2_video_predictor as upstream_module
    import torch

    from .video import VideoSegmenter
    from .video.sam2_propagation import Sam2Propagator, sam2_model_of

    model = sam2_model_of(seg.engine)
    if model is None:
        return {"status": f"skipped: the video propagation needs a SAM 2 model, {opts.sam} is not one"}
    try:  # upstream fills holes with its CUDA extension only (it warns and skips without it)
        from sam2 import _C  # noqa: F401

        fill_hole_area = 8  # SAM2VideoPredictor's and VideoSegmenter's default
    except ImportError:
        fill_hole_area = 0
    cfg = seg.config
    device = cfg.resolved_device()
    # Preprocessing and autocast exactly as our propagator's, for both sides.
    ref = Sam2Propagator(model, device=device, dtype=cfg.resolved_dtype())
    predictor = _upstream_video_predictor(model, opts.sam, device, fill_hole_area)
    notes: list[str] = []
    if opts.compile:
        predictor.image_encoder = torch.compile(predictor.image_encoder)
        notes.append("both image encoders compiled with torch.compile (the warm-up clips include compilation)")
    if fill_hole_area == 0:
        notes.append("hole filling off on both sides (fill_hole_area 0): upstream's needs its CUDA extension "
                     "(sam2._C), absent here; the product's default is 8")
    vs = VideoSegmenter(seg, propagation="sam2", video_options={"fill_hole_area": fill_hole_area})

    width, height = opts.video_size
    frames, masks0 = synthetic_video(width, height, opts.video_frames, max(opts.video_objects),
                                     np.random.default_rng(opts.seed))

    def ours(clip: list[np.ndarray], k: int) -> dict[int, list[np.ndarray]]:
        labels = [f"object{j + 1}" for j in range(k)]
        given = dict(zip(labels, masks0[:k]))
        return {r.index: [r.masks[lab] for lab in labels]
                for r in vs.segment(clip, masks=given, labels=labels, direction="forward")}

    def upstream(clip: list[np.ndarray], k: int, split: dict[str, float]) -> dict[int, np.ndarray]:
        def load_video_frames(video_path, image_size, offload_video_to_cpu, **kwargs):
            # upstream's loader resizes every frame to (S, S), normalises and stacks them on the device
            return torch.cat([ref._image_tensor(f) for f in clip]), height, width

        out: dict[int, np.ndarray] = {}
        t0 = time.perf_counter()
        with ref._autocast(), mock.patch.object(upstream_module, "load_video_frames", load_video_frames), \
                mock.patch.object(upstream_module, "tqdm", lambda items, **kwargs: items):  # no progress bar
            state = predictor.init_state("<in-memory frames>")
            _sync(device)
            t1 = time.perf_counter()
            for j in range(k):
                predictor.add_new_mask(state, frame_idx=0, obj_id=j + 1, mask=masks0[j])
            _sync(device)
            t2 = time.perf_counter()
            for i, _, logits in predictor.propagate_in_video(state):
                out[i] = (logits[:, 0] > 0).cpu().numpy()
        split.update(init_state=t1 - t0, add_new_mask=t2 - t1, propagate_in_video=time.perf_counter() - t2)
        return out

    def timed(fn: Callable, *args) -> tuple[Any, float, float | None]:
        _sync(device)
        _reset_peak(device)
        t0 = time.perf_counter()
        result = fn(*args)
        _sync(device)
        return result, time.perf_counter() - t0, _peak_mib(device)

    n = opts.video_frames
    warm = frames[:min(n, opts.video_warmup_frames)]
    runs: dict[str, dict[str, Any]] = {}
    for k in opts.video_objects:
        ours(warm, k)
        upstream(warm, k, {})
        our_masks, our_s, our_peak = timed(ours, frames, k)
        split: dict[str, float] = {}
        their_masks, their_s, their_peak = timed(upstream, frames, k, split)
        our_fps, their_fps = n / our_s, n / their_s
        ratio = our_fps / their_fps
        target = VIDEO_TARGETS.get(k)
        runs[str(k)] = {
            "objects": k, "frames": n,
            "ours_fps": round(our_fps, 4), "sam2_video_predictor_fps": round(their_fps, 4),
            "ratio": round(ratio, 4), "target_ratio": target,
            "target_met": None if target is None else bool(ratio >= target),
            "ours_s": round(our_s, 4), "sam2_video_predictor_s": round(their_s, 4),
            "sam2_video_predictor_split_s": {key: round(v, 4) for key, v in split.items()},
            "agreement_mean_iou": round(_mean_iou(our_masks, their_masks), 4),
            "nonempty_share": {"ours": _nonempty_share(our_masks),
                               "sam2_video_predictor": _nonempty_share(their_masks)},
            "peak_gpu_memory_mib": {"ours": our_peak, "sam2_video_predictor": their_peak},
        }
    if opts.random_weights:
        notes.append("random weights: the masks mean nothing, the agreement only says both did the same work")
    if device.type == "cuda":
        notes.append("peak GPU memory per timed run: allocated, both models' weights resident")
    return {
        "status": "measured",
        "ours": "dcsam.video.VideoSegmenter.segment (Sam2Propagator: all objects in one batch, bounded memory)",
        "sam2_video_predictor": f"sam2=={importlib.metadata.version('sam2')} SAM2VideoPredictor "
                                "(build_sam2_video_predictor, the same weights): init_state, add_new_mask per "
                                "object, propagate_in_video (objects one after the other)",
        "frames_fed": "the same in-memory uint8 RGB frames to both: ours as a list of arrays; upstream's "
                      "init_state through its load_video_frames slot, resized and normalised as ours does "
                      "(no JPEG decoding on either side)",
        "timed": "the whole run on all frames, frame 0's masks in, every frame's bool masks on the host out; "
                 "upstream's init_state (all frames' preprocessing, frame 0's encoding) included and split out",
        "frames": n, "frame_size": [width, height], "warmup_frames": len(warm),
        "sam_image_size": int(model.image_size), "precision": effective, "compile": opts.compile,
        "fill_hole_area": fill_hole_area, "targets": {str(k): v for k, v in VIDEO_TARGETS.items()},
        "by_objects": runs, "notes": notes,
    }


def main(argv: list[str] | None = None) -> int:  # ``python -m dcsam.bench`` until the CLI registers it
    parser = argparse.ArgumentParser(prog="dcsam")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
