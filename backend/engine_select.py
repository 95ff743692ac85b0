"""Which engine serves (``DCSAM_ENGINE=auto|dcsam|lite``) and the ``model_version`` it is announced as.

``auto`` picks ``dcsam`` only when a SAM checkpoint is configured (``DCSAM_SAM_CHECKPOINT``), is
already in the weights cache, or -- in ``dcsam serve`` only, before the workers start -- can be
downloaded. Otherwise it picks the bundled ``lite`` engine and says so with a loud WARNING.
SAM with random weights (``DCSAM_RANDOM_SAM_WEIGHTS``, end-to-end tests on a CPU) is never a fallback: it
needs ``DCSAM_ENGINE=dcsam`` and no checkpoint, is logged as a warning and named in the version.

The version is computed from the settings alone (no model load), so ``/setup`` answers instantly and
says the same as every prediction: ``<engine>-<model>-<digest of the settings that change outputs>``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from dcsam.config import SegmenterConfig, default_cache_dir

from .settings import BackendSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineChoice:
    engine: str  # "lite" | "dcsam"
    sam_checkpoint: str | None  # dcsam only: a local path, or None = the engine resolves it
    reason: str


def _cache_dir(settings: BackendSettings) -> Path:
    return Path(settings.cache_dir) if settings.cache_dir else default_cache_dir()


def _sam_spec(settings: BackendSettings):
    from dcsam.sam_models import SAM_MODELS

    if settings.sam not in SAM_MODELS:
        raise ValueError(f"DCSAM_SAM={settings.sam!r} is unknown; choose one of {sorted(SAM_MODELS)}")
    return SAM_MODELS[settings.sam]


def choose_engine(settings: BackendSettings, *, try_download: bool = False) -> EngineChoice:
    """Resolve ``settings.engine``; downloads only when ``try_download`` (``dcsam serve`` start-up)."""
    if settings.engine == "lite":
        return EngineChoice("lite", None, "DCSAM_ENGINE=lite")
    if settings.random_sam_weights:
        if settings.engine != "dcsam" or settings.sam_checkpoint:
            raise ValueError("DCSAM_RANDOM_SAM_WEIGHTS=1 needs DCSAM_ENGINE=dcsam and no DCSAM_SAM_CHECKPOINT")
        _sam_spec(settings)
        log.warning("DCSAM_RANDOM_SAM_WEIGHTS=1: %s with RANDOM weights (tests / smoke runs only)", settings.sam)
        return EngineChoice("dcsam", None, f"DCSAM_RANDOM_SAM_WEIGHTS=1: {settings.sam} with random weights")
    if settings.sam_checkpoint:
        path = Path(settings.sam_checkpoint).expanduser()
        if not path.is_file():
            raise ValueError(f"DCSAM_SAM_CHECKPOINT={settings.sam_checkpoint!r}: no such file")
        _sam_spec(settings)
        return EngineChoice("dcsam", str(path), f"SAM checkpoint {path} (DCSAM_SAM_CHECKPOINT)")
    spec = _sam_spec(settings)
    cached = _cache_dir(settings) / spec.weights.filename
    if cached.is_file():
        return EngineChoice("dcsam", str(cached), f"SAM checkpoint {cached} (cache)")
    if settings.engine == "dcsam":
        # Explicitly asked for: the engine itself downloads (or fails with a clear error) when loaded.
        return EngineChoice("dcsam", None, "DCSAM_ENGINE=dcsam")
    why = f"no SAM checkpoint for {settings.sam}: DCSAM_SAM_CHECKPOINT is unset and {cached} does not exist"
    if try_download and settings.allow_download:
        from dcsam.errors import CheckpointError
        from dcsam.weights import resolve_weight_file

        try:
            path = resolve_weight_file(
                spec.weights, None, cache_dir=_cache_dir(settings), allow_download=True, setting="DCSAM_SAM_CHECKPOINT"
            )
            return EngineChoice("dcsam", str(path), f"SAM checkpoint {path} (downloaded)")
        except (CheckpointError, OSError) as exc:
            why += f"; the download failed ({exc})"
    elif not settings.allow_download:
        why += "; downloads are disabled (DCSAM_ALLOW_DOWNLOAD=0)"
    log.warning("!" * 78)
    log.warning("DCSAM_ENGINE=auto falls back to the bundled LITE engine (no SAM): %s", why)
    log.warning("model_version names the engine; set DCSAM_SAM_CHECKPOINT to serve DC-SAM")
    log.warning("!" * 78)
    return EngineChoice("lite", None, "fallback: " + why)


def segmenter_config(settings: BackendSettings, choice: EngineChoice) -> SegmenterConfig:
    return SegmenterConfig(
        engine=choice.engine,
        sam=settings.sam,
        sam_checkpoint=choice.sam_checkpoint,
        backbone=settings.backbone,
        prompt_generator=settings.prompt_generator,
        allow_download=settings.allow_download,
        cache_dir=settings.cache_dir,
        device=settings.device,
        precision=settings.precision,
        batch_size=settings.batch_size,
        options=dict(settings.engine_options),
        random_sam_weights=settings.random_sam_weights,
        sam_image_size=settings.sam_image_size,
        image_size=settings.image_size,
        backbone_input_size=settings.backbone_input_size,
    )


def _file_identity(path: str | None) -> list | None:
    if not path:
        return None
    try:
        st = os.stat(path)
        return [os.path.basename(path), st.st_size, int(st.st_mtime)]
    except OSError:
        return [os.path.basename(path)]


def model_version(settings: BackendSettings, choice: EngineChoice) -> str:
    """A stable version: changes only when the weights or output-changing settings change."""
    if choice.engine == "lite":
        name = "lite-effl0"
        facts = {"options": settings.engine_options}
    else:
        name = f"dcsam-{settings.sam}-" + ("pg" if settings.prompt_generator else "coldstart")
        name += "-random" if settings.random_sam_weights else ""
        facts = {
            "backbone": settings.backbone,
            "sam_checkpoint": _file_identity(choice.sam_checkpoint),
            "prompt_generator": _file_identity(settings.prompt_generator),
            "precision": settings.precision,
            "options": settings.engine_options,
        }
        sizes = [settings.sam_image_size, settings.image_size, settings.backbone_input_size]
        if sizes != [None, SegmenterConfig.image_size, None]:  # only when set: default versions stay as they were
            facts["sizes"] = sizes
    facts["min_score"] = settings.min_score
    facts["k"] = settings.examples_per_label
    digest = hashlib.sha1(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{name}-{digest}"
