"""One configuration object for every engine; the CLI and the backend fill it from flags / env."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

# The defaults every entry point shares (CLI flags, backend settings, benchmarks): one place each.
DEFAULT_SAM = "sam2.1_hiera_t"
DEFAULT_BACKBONE = "efficientnet_lite0"


OFF_WORDS = ("0", "false", "no", "off", "none")


def coerce_options(options: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` with every value whose default is a bool, int or float converted to that type: engine
    options come typed or as strings (``--option size=640``, a JSON setting). The words of
    :data:`OFF_WORDS` are False, anything else True."""
    out = dict(options)
    for key, default in defaults.items():
        if key not in out:
            continue
        if isinstance(default, bool):
            out[key] = str(out[key]).lower() not in OFF_WORDS
        elif isinstance(default, int):
            out[key] = int(out[key])
        elif isinstance(default, float):
            out[key] = float(out[key])
    return out


def default_cache_dir() -> Path:
    """Where downloaded weights go: ``$DCSAM_CACHE_DIR`` or ``~/.cache/dcsam``."""
    return Path(os.environ.get("DCSAM_CACHE_DIR") or Path.home() / ".cache" / "dcsam")


@dataclass
class SegmenterConfig:
    engine: str = "lite"  # "lite" | "dcsam"
    # DC-SAM engine
    sam: str = DEFAULT_SAM  # base model name, see dcsam.sam_models.SAM_MODELS
    sam_checkpoint: str | None = None  # path to the official checkpoint; None = cache/download
    backbone: str = DEFAULT_BACKBONE  # prior backbone, see dcsam.backbones
    backbone_weights: str | None = None  # path; None = bundled (lite0) or cache/download
    variant: str = "full"  # "full" | "prior_only"
    prompt_generator: str | None = None  # trained prompt-generator checkpoint; None = cold start
    neg_stage2_source: str = "query_neg"  # or "support_pos_release" (reference release behaviour)
    image_size: int = 512  # DC-SAM's working resolution (masks are scored here in the paper)
    backbone_input_size: int | None = None  # None: the backbone's own (512; 1024 for efficientnet_lite0)
    sam_image_size: int | None = None  # None: 1024 (SAM 2 only; smaller for tiny CPU runs)
    dropout: float = 0.5  # Dropout2d after the mid-level reduction (full variant)
    # Random weights, only when asked for (tests, benchmarks, counting parameters); never a fallback.
    random_sam_weights: bool = False
    random_backbone_weights: bool = False
    allow_download: bool = True
    cache_dir: str | None = None
    # runtime
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:1" ...
    precision: str = "auto"  # "auto" (bf16 on CUDA, fp32 on CPU) | "fp32" | "bf16"
    batch_size: int = 8
    # engine-specific extras (e.g. lite refinement switches)
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None = None, **overrides: Any) -> SegmenterConfig:
        merged = {**(values or {}), **overrides}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(merged) - known)
        if unknown:
            raise ValueError(f"unknown setting(s) {unknown}; known: {sorted(known)}")
        return cls(**merged)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def resolved_cache_dir(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else default_cache_dir()

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def resolved_dtype(self) -> torch.dtype:
        device = self.resolved_device()
        if self.precision == "auto":
            return torch.bfloat16 if device.type == "cuda" else torch.float32
        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]
