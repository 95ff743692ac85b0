"""What one benchmark run measures (:class:`BenchOptions`) and the platform edges of its end-to-end
path (:class:`BenchOutput`)."""

from __future__ import annotations

import dataclasses
import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import DEFAULT_BACKBONE, DEFAULT_SAM, SegmenterConfig
from ..errors import DcsamError
from ..io import encode_png, read_image

# Other packages add outputs here: name = "module:factory", a zero-argument factory returning a
# BenchOutput (the Label Studio backend registers its brush RLE).
OUTPUTS_GROUP = "dcsam.bench_outputs"
PNG = "png"


@dataclass
class BenchOptions:
    # the model, as the shared model flags name it (see dcsam.cli.model_args); the engine is DC-SAM
    sam: str = DEFAULT_SAM
    sam_checkpoint: str | None = None
    backbone: str = DEFAULT_BACKBONE
    backbone_weights: str | None = None
    variant: str = SegmenterConfig.variant
    neg_stage2_source: str = SegmenterConfig.neg_stage2_source
    prompt_generator: str | None = None
    random_weights: str | None = None  # None | sam | backbone | all
    offline: bool = False
    device: str = SegmenterConfig.device
    precision: str = SegmenterConfig.precision  # auto | fp32 | bf16
    # the measurement
    decoder: str = "auto"  # auto | coldstart | trained
    output: str | None = None  # a BenchOutput's name; None: a platform's when one is installed, else png
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
    def from_args(cls, args: Any) -> BenchOptions:
        """From parsed ``dcsam bench`` flags (the same names, ``--no-video`` aside)."""
        values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
        return cls(**{**values, "video": not args.no_video})


@dataclass(frozen=True)
class BenchOutput:
    """The platform edges of the end-to-end path: the query's encoded bytes to an image, and each
    predicted mask to the platform's region (what a pre-annotation job uploads)."""

    name: str
    decode: Callable[[bytes], np.ndarray]  # encoded image -> uint8 RGB (H, W, 3)
    encode: Callable[[np.ndarray, str, float], Any]  # bool mask (H, W), label, score -> region; None when empty
    stage: str  # the encoding's name in the per-stage breakdown, e.g. "rle"
    path: str  # "<decoder> -> InContextSegmenter.predict -> <encoder>", as the report prints it


def png_output() -> BenchOutput:
    """The model library's own edges (what ``dcsam predict`` writes): any image format in, a PNG mask out."""

    def encode(mask: np.ndarray, label: str, score: float) -> bytes | None:
        return encode_png(mask.astype(np.uint8) * 255) if mask.any() else None

    return BenchOutput(
        PNG,
        decode=read_image,
        encode=encode,
        stage="png",
        path="dcsam.io.read_image -> InContextSegmenter.predict -> dcsam.io.encode_png",
    )


def _registered() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=OUTPUTS_GROUP)}


def output_names() -> list[str]:
    """Every output ``--output`` accepts: the installed platforms' (sorted), then png."""
    return [*sorted(_registered()), PNG]


def load_output(name: str | None = None) -> BenchOutput:
    """The output called ``name``; None: the first installed platform's, png when there is none."""
    if name is None:
        name = output_names()[0]
    if name == PNG:
        return png_output()
    registered = _registered()
    if name not in registered:
        raise DcsamError(f"no bench output {name!r}; installed: {', '.join(output_names())}")
    return registered[name].load()()
