"""The image part of ``dcsam bench``: end to end, in stages, and SAM's raw image encoder."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
import torch

from ..api import InContextSegmenter
from ..cli.model_args import model_config
from ..config import SegmenterConfig
from ..engines.base import LabelledImage
from ..engines.dcsam_engine import DCSAMEngine
from ..errors import DcsamError
from ..modeling import SupportFeatures
from .options import BenchOptions, load_output
from .synthetic import encode_jpeg, synthetic_scene
from .timing import device_info, peak_mib, positive_ms, summary, sync
from .video import video_bench

BENCH_SCHEMA = 1
LABEL = "object"
MODEL_STAGES = ("decode", "preprocess", "backbone", "sam_encoder", "prompt_decoder")  # then the output's encoding


def segmenter_config(opts: BenchOptions) -> SegmenterConfig:
    sizes: dict[str, Any] = {}
    if opts.image_size is not None:
        # SAM 2 at a smaller input; the prior backbone at the same size, DC-SAM's grid at half of it.
        sizes = {
            "sam_image_size": opts.image_size,
            "backbone_input_size": opts.image_size,
            "image_size": max(64, opts.image_size // 2),
        }
    return model_config(opts, engine="dcsam", batch_size=opts.batch_size, **sizes)


def batch_to_device(images: list[np.ndarray], size: int, device: torch.device) -> torch.Tensor:
    """uint8 (H, W, 3) images -> float (B, 3, size, size) in [0, 1] on ``device``.

    The same resize as the engine's ``to_tensor`` (on the CPU, area when shrinking), but one pinned
    uint8 host buffer and one asynchronous copy per batch; the float conversion runs on the device.
    """
    host = torch.empty((len(images), size, size, 3), dtype=torch.uint8, pin_memory=device.type == "cuda")
    for i, img in enumerate(images):
        interp = cv2.INTER_AREA if max(img.shape[:2]) > size else cv2.INTER_LINEAR
        host[i] = torch.from_numpy(cv2.resize(img, (size, size), interpolation=interp))
    return host.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)


def raw_encoder(sam_adapter) -> tuple[Callable, str]:
    """SAM's own image encoding for a normalised (B, 3, S, S) input, without our adapter."""
    model = sam_adapter.model
    if sam_adapter.family == "sam2":
        return model.forward_image, f"{type(model).__name__}.forward_image (Hiera trunk + FPN neck)"
    return model.image_encoder, f"{type(model.image_encoder).__name__} (ViT)"


def run_bench(opts: BenchOptions) -> dict[str, Any]:
    """One benchmark run (see :mod:`dcsam.bench`); the report as a JSON-ready dict."""
    output = load_output(opts.output)
    stages = (*MODEL_STAGES, output.stage)
    rng = np.random.default_rng(opts.seed)
    torch.manual_seed(opts.seed)
    notes: list[str] = []
    with torch.inference_mode():
        t0 = time.perf_counter()
        seg = InContextSegmenter.from_config(segmenter_config(opts))
        build_s = time.perf_counter() - t0
        engine = seg.engine
        if not isinstance(engine, DCSAMEngine):
            raise DcsamError(f"dcsam bench times the DC-SAM engine, got {engine.name}")
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
        effective = (
            "bf16"
            if device.type == "cuda" and dtype == torch.bfloat16
            else ("fp16" if device.type == "cuda" and dtype == torch.float16 else "fp32")
        )
        if effective == "fp32" and opts.precision == "bf16":
            notes.append("bf16 asked for, but the engine autocasts on CUDA only: measured in fp32")
        adapter = engine.model.sam
        if opts.compile:
            sam_model: Any = adapter.model  # SAM 1 or SAM 2: both name their encoder image_encoder
            sam_model.image_encoder = torch.compile(sam_model.image_encoder)
            notes.append("SAM image encoder compiled with torch.compile (warm-up batches include compilation)")

        # The example: features computed once and cached, as the backend does.
        ex_img, ex_mask = synthetic_scene(*opts.input_size, rng)
        ex_img = output.decode(encode_jpeg(ex_img, opts.jpeg_quality))
        t0 = time.perf_counter()
        seg.add_examples([ex_img], [ex_mask], label=LABEL)
        sync(device)
        example_s = time.perf_counter() - t0
        support = SupportFeatures.cat([engine.encode_example(LabelledImage(ex_img, ex_mask))])

        pool = [
            encode_jpeg(synthetic_scene(*opts.input_size, rng)[0], opts.jpeg_quality)
            for _ in range(max(opts.batch_size, 4))
        ]
        batches = [
            [pool[(b * opts.batch_size + i) % len(pool)] for i in range(opts.batch_size)]
            for b in range(opts.warmup + opts.iterations)
        ]

        def decode_all(data: list[bytes]) -> list[np.ndarray]:
            return [output.decode(d) for d in data]

        def encode_all(results: list[dict[str, Any]]) -> list[Any]:
            return [output.encode(r[LABEL].mask, LABEL, r[LABEL].score) for r in results]

        # 1. End to end: the platform's path, synchronised only per batch (masks come back to the host anyway).
        nonempty = 0
        e2e: list[float] = []
        for b, jpegs in enumerate(batches):
            t0 = time.perf_counter()
            preds = seg.predict(decode_all(jpegs), labels=[LABEL])
            regions = [output.encode(p.masks[LABEL], LABEL, p.scores[LABEL]) for p in preds]
            sync(device)
            if b >= opts.warmup:
                e2e.append(time.perf_counter() - t0)
                nonempty += sum(r is not None for r in regions)

        # 2. The same work in stages, synchronised around every timer.
        def timed(times: dict[str, float], name: str, fn: Callable, *args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            out = fn(*args, **kwargs)
            sync(device)
            times[name] = time.perf_counter() - t
            return out

        size = adapter.image_size
        stage_s: dict[str, list[float]] = {k: [] for k in stages}
        for b, jpegs in enumerate(batches):
            times: dict[str, float] = {}
            images = timed(times, "decode", decode_all, jpegs)
            batch = timed(times, "preprocess", batch_to_device, images, size, device)
            with engine.autocast():
                feats = timed(times, "sam_encoder", adapter.encode, batch)
                query = timed(times, "backbone", engine.model.encode_query, batch, sam=feats)
                results: list[dict[str, Any]] = [{} for _ in images]
                # The engine's own decoding code (it repeats the example's features per query itself).
                step = engine.predict_trained if engine.trained else engine.predict_cold_start
                timed(times, "prompt_decoder", step, images, query, support, LABEL, results)
            timed(times, output.stage, encode_all, results)
            if b >= opts.warmup:
                for k in stages:
                    stage_s[k].append(times[k])

        # 3. SAM's raw image encoder, same batch size and precision, input already on the device.
        encode, encoder_name = raw_encoder(adapter)
        x = torch.randn(opts.batch_size, 3, size, size, device=device)
        raw: list[float] = []
        with engine.autocast():
            for b in range(opts.warmup + opts.iterations):
                sync(device)
                t0 = time.perf_counter()
                encode(x)
                sync(device)
                if b >= opts.warmup:
                    raw.append(time.perf_counter() - t0)
        peak = peak_mib(device)  # the image part's, before the video runs

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
        "device": device_info(device),
        "config": {
            "engine": "dcsam",
            "model_version": seg.version,
            "sam": opts.sam,
            "backbone": opts.backbone,
            "decoder": decoder,
            "random_weights": opts.random_weights,
            "batch_size": opts.batch_size,
            "precision": {"requested": opts.precision, "effective": effective},
            "compile": opts.compile,
            "sam_image_size": size,
            "backbone_input_size": engine.model.backbone.input_size,
            "dcsam_image_size": engine.model.image_size,
            "input_size": list(opts.input_size),
            "jpeg_kib_mean": round(jpeg_kib, 1),
            "iterations": opts.iterations,
            "warmup": opts.warmup,
            "model_build_s": round(build_s, 3),
            "output": output.name,
        },
        "example": {"cached": True, "encode_ms": positive_ms(example_s)},
        "end_to_end": {
            "path": output.path,
            "images": n_img,
            "images_per_s": round(e2e_ips, 4),
            "batch_ms": summary(e2e),
            "masks_nonempty": nonempty,
        },
        "stages": {
            k: {
                "ms_per_batch": positive_ms(v),
                "ms_per_image": positive_ms(v / opts.batch_size),
                "share": round(v / stages_total, 4),
            }
            for k, v in stage_mean.items()
        },
        "stages_total": {
            "ms_per_batch": positive_ms(stages_total),
            "images_per_s": round(opts.batch_size / stages_total, 4),
        },
        "sam_encoder_raw": {
            "callable": encoder_name,
            "ms_per_batch": positive_ms(raw_mean),
            "batch_ms": summary(raw),
            "images_per_s": round(raw_ips, 4),
        },
        "ratios": {
            # 1.0 would mean pre-annotation runs as fast as SAM's encoder alone (the hardware-bound ceiling).
            "end_to_end_over_raw_encoder": round(e2e_ips / raw_ips, 4),
            # Our encoder stage (resize + normalise + SAM + feature reshaping) against SAM's own.
            "sam_encoder_stage_over_raw": round(stage_mean["sam_encoder"] / raw_mean, 4),
        },
        "peak_gpu_memory_mib": peak,
        "video": video,
        "notes": notes,
    }
