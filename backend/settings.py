"""Backend settings, read once from the environment (Label Studio backend conventions + ``DCSAM_*``).

Label Studio conventions: ``LABEL_STUDIO_URL`` (alias ``LABEL_STUDIO_HOST``), ``LABEL_STUDIO_API_KEY``
(alias ``LABEL_STUDIO_ACCESS_TOKEN``; a legacy token or a Personal Access Token), ``MODEL_DIR``,
``BASIC_AUTH_USER`` / ``BASIC_AUTH_PASS``, ``WORKERS``, ``THREADS``, ``PORT``,
``LOCAL_FILES_DOCUMENT_ROOT``, ``LOG_LEVEL``.

Everything else is ``DCSAM_*``; see :data:`ENV_DOC` (also printed by ``dcsam serve --help``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

ENV_DOC: dict[str, str] = {
    "LABEL_STUDIO_URL": "Label Studio base URL with scheme, e.g. http://ls.example.org:8080 (alias LABEL_STUDIO_HOST)",
    "LABEL_STUDIO_API_KEY": "legacy token or Personal Access Token (alias LABEL_STUDIO_ACCESS_TOKEN); only sent to LABEL_STUDIO_URL's host",
    "MODEL_DIR": "backend state (SQLite) and downloads scratch space (default ./dcsam-backend-data)",
    "BASIC_AUTH_USER / BASIC_AUTH_PASS": "protect every endpoint but /webhook with HTTP Basic auth",
    "WORKERS / THREADS / PORT": "gunicorn workers (1), threads per worker (8), port (9090)",
    "LOCAL_FILES_DOCUMENT_ROOT": "read /data/local-files/?d=... directly from this folder (never outside it)",
    "DCSAM_ENGINE": "auto | dcsam | lite (default auto: dcsam when a SAM checkpoint is available, else lite)",
    "DCSAM_SAM": "SAM base model for the dcsam engine (default sam2.1_hiera_t)",
    "DCSAM_SAM_CHECKPOINT": "path to the SAM checkpoint (default: the dcsam cache, or a download)",
    "DCSAM_PROMPT_GENERATOR": "trained DC-SAM prompt-generator checkpoint (default: cold start)",
    "DCSAM_BACKBONE": "DC-SAM prior backbone (default efficientnet_lite0)",
    "DCSAM_ALLOW_DOWNLOAD": "1/0: may `dcsam serve` download the SAM checkpoint at start (default 1)",
    "DCSAM_CACHE_DIR": "where weights are cached (default ~/.cache/dcsam)",
    "DCSAM_DEVICE": "auto | cpu | cuda | cuda:N (default auto)",
    "DCSAM_PRECISION": "auto | fp32 | bf16 (default auto)",
    "DCSAM_BATCH_SIZE": "images per model call (default 4)",
    "DCSAM_ENGINE_OPTIONS": "JSON object of engine options (e.g. lite refinement switches)",
    "DCSAM_EXAMPLES_PER_LABEL": "K: the latest K accepted annotations per label are the examples (default 5)",
    "DCSAM_EXAMPLES_RECHECK_S": "re-list annotations from Label Studio at most this often, webhooks aside (default 30)",
    "DCSAM_MIN_SCORE": "drop predicted regions scoring below this (default 0: keep every non-empty mask)",
    "DCSAM_MAX_IMAGE_PIXELS": "refuse (per task) images with more pixels than this (default 100000000)",
    "DCSAM_MAX_DOWNLOAD_MB": "refuse (per task) media files larger than this (default 256)",
    "DCSAM_WEBHOOK_SECRET": "shared secret for /webhook: header X-Webhook-Secret or query ?token=",
    "DCSAM_WARMUP": "1/0: load the model in the background when a worker starts (default 1 under `dcsam serve`)",
    "DCSAM_TRAIN_EVERY": "fine-tune after this many new accepted annotations of a project (default 0: only on Start Training)",
    "DCSAM_TRAIN_DEBOUNCE_S": "wait this long after the last annotation before an automatic fine-tune starts (default 60)",
    "DCSAM_TRAIN_STEPS": "optimisation steps per fine-tune (default: the engine's own: lite 300, dcsam 100)",
    "DCSAM_TRAIN_MIN_GAIN": "promote a fine-tune only if validation mIoU rises by more than this (default 0)",
    "DCSAM_TRAIN_FOLDS": "cross-validation folds that score a fine-tune before it is promoted (default 4, at least 2)",
    "DCSAM_PREANNOTATE_AFTER_TRAIN": "1/0: pre-annotate the whole project after a promoted fine-tune (default 1)",
    "DCSAM_PREANNOTATE_CHUNK": "tasks per page and per predictions import of a pre-annotation job (default 100)",
    "DCSAM_PREANNOTATE_IO_THREADS": "concurrent downloads / Label Studio calls of a job (default 8)",
    "DCSAM_PREANNOTATE_RETRIES": "retries of a failed predictions import, exponential backoff (default 5)",
    "DCSAM_PREANNOTATE_BACKOFF_S": "first retry delay, doubled each time, at most 60 s (default 1)",
    "DCSAM_VIDEO_KEY / DCSAM_FRAME_KEY": "task data keys of a frame-sequence task's video id and frame number (default video / frame)",
    "DCSAM_VIDEO_PROPAGATION": "auto | sam2 | lite: how masks travel through a video (default auto: SAM 2 memory with a SAM 2 model, else lite)",
    "DCSAM_VIDEO_CACHE": "frame-sequence videos whose propagated regions are kept in memory (default 16)",
    "DCSAM_VIDEO_KEYFRAME_TOLERANCE": "VideoRectangle tracks: leave out frames Label Studio interpolates within this many percent (default 0.5)",
}


def _env(env: Mapping[str, str], *names: str, default: str | None = None) -> str | None:
    for name in names:
        value = env.get(name)
        if value not in (None, ""):
            return value
    return default


def _bool(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {value!r} (use 1/0, true/false)")


def _number(env: Mapping[str, str], name: str, default: float, kind=float, minimum: float | None = None):
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = kind(raw)
    except ValueError as exc:
        raise ValueError(f"{name}={raw!r} is not a valid {kind.__name__}") from exc
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}={raw!r} must be >= {minimum}")
    return value


@dataclass
class BackendSettings:
    label_studio_url: str | None = None
    label_studio_api_key: str | None = None
    model_dir: Path = field(default_factory=lambda: Path("dcsam-backend-data"))
    basic_auth_user: str | None = None
    basic_auth_pass: str | None = None
    local_files_root: str | None = None
    webhook_secret: str | None = None
    # model
    engine: str = "auto"
    sam: str = "sam2.1_hiera_t"
    sam_checkpoint: str | None = None
    prompt_generator: str | None = None
    backbone: str = "efficientnet_lite0"
    allow_download: bool = True
    cache_dir: str | None = None
    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 4
    engine_options: dict[str, Any] = field(default_factory=dict)
    # examples and outputs
    examples_per_label: int = 5
    examples_recheck_s: float = 30.0
    min_score: float = 0.0
    max_image_pixels: int = 100_000_000
    max_download_bytes: int = 256 * 1024 * 1024
    warmup: bool = False
    # background jobs
    train_every: int = 0
    train_debounce_s: float = 60.0
    train_steps: int | None = None
    train_folds: int = 4
    train_min_gain: float = 0.0
    preannotate_after_train: bool = True
    preannotate_chunk: int = 100
    preannotate_io_threads: int = 8
    preannotate_retries: int = 5
    preannotate_backoff_s: float = 1.0
    preannotate_import_timeout_s: float = 120.0
    # video
    video_key: str = "video"
    frame_key: str = "frame"
    video_propagation: str = "auto"
    video_cache: int = 16
    video_keyframe_tolerance: float = 0.5

    @property
    def basic_auth(self) -> bool:
        return bool(self.basic_auth_user and self.basic_auth_pass)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "BackendSettings":
        env = os.environ if env is None else env
        engine = (_env(env, "DCSAM_ENGINE", default="auto") or "auto").strip().lower()
        if engine not in ("auto", "dcsam", "lite"):
            raise ValueError(f"DCSAM_ENGINE={engine!r}: choose auto, dcsam or lite")
        url = _env(env, "LABEL_STUDIO_URL", "LABEL_STUDIO_HOST")
        if url:
            url = url.rstrip("/")
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"LABEL_STUDIO_URL={url!r} must start with http:// or https://")
        options_raw = _env(env, "DCSAM_ENGINE_OPTIONS")
        try:
            options = json.loads(options_raw) if options_raw else {}
        except json.JSONDecodeError as exc:
            raise ValueError(f"DCSAM_ENGINE_OPTIONS is not valid JSON: {exc}") from exc
        if not isinstance(options, dict):
            raise ValueError("DCSAM_ENGINE_OPTIONS must be a JSON object")
        propagation = (_env(env, "DCSAM_VIDEO_PROPAGATION", default="auto") or "auto").strip().lower()
        if propagation not in ("auto", "sam2", "lite"):
            raise ValueError(f"DCSAM_VIDEO_PROPAGATION={propagation!r}: choose auto, sam2 or lite")
        return cls(
            label_studio_url=url,
            label_studio_api_key=_env(env, "LABEL_STUDIO_API_KEY", "LABEL_STUDIO_ACCESS_TOKEN"),
            model_dir=Path(_env(env, "MODEL_DIR", default="dcsam-backend-data")),
            basic_auth_user=_env(env, "BASIC_AUTH_USER"),
            basic_auth_pass=_env(env, "BASIC_AUTH_PASS"),
            local_files_root=_env(env, "LOCAL_FILES_DOCUMENT_ROOT"),
            webhook_secret=_env(env, "DCSAM_WEBHOOK_SECRET"),
            engine=engine,
            sam=_env(env, "DCSAM_SAM", default="sam2.1_hiera_t"),
            sam_checkpoint=_env(env, "DCSAM_SAM_CHECKPOINT"),
            prompt_generator=_env(env, "DCSAM_PROMPT_GENERATOR"),
            backbone=_env(env, "DCSAM_BACKBONE", default="efficientnet_lite0"),
            allow_download=_bool(_env(env, "DCSAM_ALLOW_DOWNLOAD"), True),
            cache_dir=_env(env, "DCSAM_CACHE_DIR"),
            device=_env(env, "DCSAM_DEVICE", default="auto"),
            precision=_env(env, "DCSAM_PRECISION", default="auto"),
            batch_size=_number(env, "DCSAM_BATCH_SIZE", 4, int, 1),
            engine_options=options,
            examples_per_label=_number(env, "DCSAM_EXAMPLES_PER_LABEL", 5, int, 1),
            examples_recheck_s=_number(env, "DCSAM_EXAMPLES_RECHECK_S", 30.0, float, 0),
            min_score=_number(env, "DCSAM_MIN_SCORE", 0.0, float),
            max_image_pixels=_number(env, "DCSAM_MAX_IMAGE_PIXELS", 100_000_000, int, 1),
            max_download_bytes=int(_number(env, "DCSAM_MAX_DOWNLOAD_MB", 256.0, float, 0) * 1024 * 1024),
            warmup=_bool(_env(env, "DCSAM_WARMUP"), False),
            train_every=_number(env, "DCSAM_TRAIN_EVERY", 0, int, 0),
            train_debounce_s=_number(env, "DCSAM_TRAIN_DEBOUNCE_S", 60.0, float, 0),
            train_steps=_number(env, "DCSAM_TRAIN_STEPS", None, int, 1),
            train_folds=_number(env, "DCSAM_TRAIN_FOLDS", 4, int, 2),
            train_min_gain=_number(env, "DCSAM_TRAIN_MIN_GAIN", 0.0, float, -1.0),
            preannotate_after_train=_bool(_env(env, "DCSAM_PREANNOTATE_AFTER_TRAIN"), True),
            preannotate_chunk=_number(env, "DCSAM_PREANNOTATE_CHUNK", 100, int, 1),
            preannotate_io_threads=_number(env, "DCSAM_PREANNOTATE_IO_THREADS", 8, int, 1),
            preannotate_retries=_number(env, "DCSAM_PREANNOTATE_RETRIES", 5, int, 0),
            preannotate_backoff_s=_number(env, "DCSAM_PREANNOTATE_BACKOFF_S", 1.0, float, 0),
            video_key=_env(env, "DCSAM_VIDEO_KEY", default="video"),
            frame_key=_env(env, "DCSAM_FRAME_KEY", default="frame"),
            video_propagation=propagation,
            video_cache=_number(env, "DCSAM_VIDEO_CACHE", 16, int, 1),
            video_keyframe_tolerance=_number(env, "DCSAM_VIDEO_KEYFRAME_TOLERANCE", 0.5, float, 0),
        )
