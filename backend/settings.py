"""Backend settings, read once from the environment (Label Studio backend conventions + ``DCSAM_*``).

Each setting is one dataclass field of :class:`BackendSettings`: its default, its environment
variable(s), its bounds and its help text live there and nowhere else; :data:`ENV_DOC` (printed by
``dcsam serve --help``) and :meth:`BackendSettings.from_env` are derived from the fields.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dcsam.config import DEFAULT_BACKBONE, DEFAULT_SAM

MB = 1024 * 1024


def setting(
    default: Any,
    *env: str,
    doc: str,
    minimum: float | None = None,
    choices: tuple[str, ...] = (),
    kind: str | None = None,
    scale: int = 1,
    factory: Any = None,
) -> Any:
    """A settings field: ``env`` names (the first is documented, the others are aliases), bounds, help.

    ``kind`` overrides the parser chosen from the default's type (``str``, ``int``, ``float``,
    ``bool``, ``json``, ``path``); ``scale`` multiplies a number read from the environment
    (megabytes to bytes).
    """
    meta = {"env": env, "doc": doc, "minimum": minimum, "choices": choices, "kind": kind, "scale": scale}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass
class BackendSettings:
    # Label Studio and this server
    label_studio_url: str | None = setting(
        None,
        "LABEL_STUDIO_URL",
        "LABEL_STUDIO_HOST",
        doc="Label Studio base URL with scheme, e.g. http://ls.example.org:8080 (alias LABEL_STUDIO_HOST)",
    )
    label_studio_api_key: str | None = setting(
        None,
        "LABEL_STUDIO_API_KEY",
        "LABEL_STUDIO_ACCESS_TOKEN",
        doc="legacy token or Personal Access Token (alias LABEL_STUDIO_ACCESS_TOKEN); only sent to "
        "LABEL_STUDIO_URL's host",
    )
    model_dir: Path = setting(
        None,
        "MODEL_DIR",
        kind="path",
        factory=lambda: Path("dcsam-backend-data"),
        doc="backend state (SQLite), fine-tuned checkpoints and scratch space",
    )
    basic_auth_user: str | None = setting(
        None, "BASIC_AUTH_USER", doc="with BASIC_AUTH_PASS: HTTP Basic auth on every endpoint but /webhook"
    )
    basic_auth_pass: str | None = setting(None, "BASIC_AUTH_PASS", doc="see BASIC_AUTH_USER")
    local_files_root: str | None = setting(
        None,
        "LOCAL_FILES_DOCUMENT_ROOT",
        doc="read /data/local-files/?d=... directly from this folder (never outside it)",
    )
    webhook_secret: str | None = setting(
        None, "DCSAM_WEBHOOK_SECRET", doc="shared secret for /webhook: header X-Webhook-Secret or query ?token="
    )
    # model
    engine: str = setting(
        "auto",
        "DCSAM_ENGINE",
        choices=("auto", "dcsam", "lite"),
        doc="auto: dcsam when a SAM checkpoint is available, else lite",
    )
    sam: str = setting(DEFAULT_SAM, "DCSAM_SAM", doc="SAM base model for the dcsam engine")
    sam_checkpoint: str | None = setting(
        None, "DCSAM_SAM_CHECKPOINT", doc="path to the SAM checkpoint (unset: the dcsam cache, or a download)"
    )
    prompt_generator: str | None = setting(
        None, "DCSAM_PROMPT_GENERATOR", doc="trained DC-SAM prompt-generator checkpoint (unset: cold start)"
    )
    backbone: str = setting(DEFAULT_BACKBONE, "DCSAM_BACKBONE", doc="DC-SAM prior backbone")
    # smoke runs: DC-SAM small enough to train on a CPU in minutes (outputs are meaningless with random weights)
    random_sam_weights: bool = setting(
        False,
        "DCSAM_RANDOM_SAM_WEIGHTS",
        doc="1/0: build SAM with RANDOM weights (end-to-end tests and smoke runs only; needs DCSAM_ENGINE=dcsam "
        "and no DCSAM_SAM_CHECKPOINT; logged as a warning, model_version says -random)",
    )
    sam_image_size: int | None = setting(
        None,
        "DCSAM_SAM_IMAGE_SIZE",
        kind="int",
        minimum=64,
        doc="SAM 2's input size in pixels, a multiple of 32 (unset: 1024, what the released weights expect; "
        "smaller, e.g. 256, only for CPU smoke runs)",
    )
    image_size: int = setting(512, "DCSAM_IMAGE_SIZE", minimum=32, doc="DC-SAM's working resolution in pixels")
    backbone_input_size: int | None = setting(
        None,
        "DCSAM_BACKBONE_INPUT_SIZE",
        kind="int",
        minimum=32,
        doc="input size of DC-SAM's prior backbone in pixels (unset: the backbone's own, 1024 for efficientnet_lite0)",
    )
    allow_download: bool = setting(
        True, "DCSAM_ALLOW_DOWNLOAD", doc="1/0: may `dcsam serve` download the SAM checkpoint at start"
    )
    cache_dir: str | None = setting(None, "DCSAM_CACHE_DIR", doc="where weights are cached (unset: ~/.cache/dcsam)")
    device: str = setting("auto", "DCSAM_DEVICE", doc="auto | cpu | cuda | cuda:N")
    precision: str = setting("auto", "DCSAM_PRECISION", choices=("auto", "fp32", "bf16"), doc="model precision")
    batch_size: int = setting(4, "DCSAM_BATCH_SIZE", minimum=1, doc="images per model call")
    engine_options: dict[str, Any] = setting(
        None,
        "DCSAM_ENGINE_OPTIONS",
        kind="json",
        factory=dict,
        doc="JSON object of engine options (e.g. lite refinement switches)",
    )
    # examples and outputs
    examples_per_label: int = setting(
        5, "DCSAM_EXAMPLES_PER_LABEL", minimum=1, doc="K: the latest K accepted annotations per label are the examples"
    )
    examples_recheck_s: float = setting(
        30.0,
        "DCSAM_EXAMPLES_RECHECK_S",
        minimum=0,
        doc="re-list annotations from Label Studio at most this often, webhooks aside",
    )
    max_projects_in_memory: int = setting(
        64,
        "DCSAM_MAX_PROJECTS_IN_MEMORY",
        minimum=1,
        doc="projects whose encoded examples stay in memory; the least recently used is dropped (re-encoded "
        "when next used)",
    )
    sync_debounce_s: float = setting(
        1.0,
        "DCSAM_SYNC_DEBOUNCE_S",
        minimum=0,
        doc="annotation webhooks within this many seconds merge into one examples re-sync",
    )
    min_score: float = setting(
        0.0, "DCSAM_MIN_SCORE", doc="drop predicted regions scoring below this (0: keep every non-empty mask)"
    )
    max_image_pixels: int = setting(
        100_000_000, "DCSAM_MAX_IMAGE_PIXELS", minimum=1, doc="refuse (per task) images with more pixels than this"
    )
    max_download_bytes: int = setting(
        256 * MB,
        "DCSAM_MAX_DOWNLOAD_MB",
        kind="float",
        scale=MB,
        minimum=0,
        doc="refuse (per task) media files larger than this many megabytes",
    )
    download_timeout_s: float = setting(
        120.0,
        "DCSAM_DOWNLOAD_TIMEOUT_S",
        minimum=1,
        doc="give up (per task) a media download not complete after this many seconds, redirects included",
    )
    media_allow_private: bool = setting(
        True,
        "DCSAM_MEDIA_ALLOW_PRIVATE",
        doc="1/0: may task media URLs name private or loopback addresses (Label Studio's own host always "
        "may; link-local and cloud-metadata addresses never)",
    )
    decode_budget_mp: float = setting(
        100.0,
        "DCSAM_DECODE_BUDGET_MP",
        minimum=1,
        doc="megapixels decoded at once in a worker; larger decodes wait (one bigger image decodes alone)",
    )
    max_config_bytes: int = setting(
        2 * MB,
        "DCSAM_MAX_CONFIG_MB",
        kind="float",
        scale=MB,
        minimum=0.001,
        doc="refuse label configs larger than this many megabytes",
    )
    warmup: bool = setting(
        False,
        "DCSAM_WARMUP",
        doc="1/0: load the model in the background when a worker starts (`dcsam serve` turns it on)",
    )
    # background jobs
    train_every: int = setting(
        0,
        "DCSAM_TRAIN_EVERY",
        minimum=0,
        doc="fine-tune after this many new accepted annotations of a project (0: only on Start Training)",
    )
    train_debounce_s: float = setting(
        60.0,
        "DCSAM_TRAIN_DEBOUNCE_S",
        minimum=0,
        doc="wait this long after the last annotation before an automatic fine-tune",
    )
    train_steps: int | None = setting(
        None,
        "DCSAM_TRAIN_STEPS",
        kind="int",
        minimum=1,
        doc="optimisation steps per fine-tune (unset: the engine's own choices)",
    )
    train_folds: int = setting(
        4, "DCSAM_TRAIN_FOLDS", minimum=2, doc="cross-validation folds that score a fine-tune before it is promoted"
    )
    train_patience: int = setting(
        30,
        "DCSAM_TRAIN_PATIENCE",
        minimum=0,
        doc="stop a fine-tune run once its smoothed loss has not improved for this many steps (0: run every step)",
    )
    train_min_gain: float = setting(
        0.0,
        "DCSAM_TRAIN_MIN_GAIN",
        minimum=-1.0,
        doc="promote a fine-tune only if validation mIoU rises by more than this",
    )
    preannotate_after_train: bool = setting(
        True, "DCSAM_PREANNOTATE_AFTER_TRAIN", doc="1/0: pre-annotate the whole project after a promoted fine-tune"
    )
    preannotate_skip_annotated: bool = setting(
        True,
        "DCSAM_PREANNOTATE_SKIP_ANNOTATED",
        doc="1/0: the pre-annotation after a promoted fine-tune leaves out tasks that already have an accepted "
        "annotation (a person's labels are the truth there)",
    )
    preannotate_chunk: int = setting(
        100,
        "DCSAM_PREANNOTATE_CHUNK",
        minimum=1,
        doc="tasks per page and per predictions import of a pre-annotation job",
    )
    preannotate_io_threads: int = setting(
        8, "DCSAM_PREANNOTATE_IO_THREADS", minimum=1, doc="concurrent downloads / Label Studio calls of a job"
    )
    preannotate_retries: int = setting(
        5, "DCSAM_PREANNOTATE_RETRIES", minimum=0, doc="retries of a failed predictions import, exponential backoff"
    )
    preannotate_backoff_s: float = setting(
        1.0, "DCSAM_PREANNOTATE_BACKOFF_S", minimum=0, doc="first retry delay, doubled each time, at most 60 s"
    )
    preannotate_import_timeout_s: float = setting(
        120.0, "DCSAM_PREANNOTATE_IMPORT_TIMEOUT_S", minimum=1, doc="timeout of one predictions import call"
    )
    jobs_keep_per_project: int = setting(
        100,
        "DCSAM_JOBS_KEEP",
        minimum=1,
        doc="finished job rows kept per project beyond DCSAM_JOBS_KEEP_DAYS (older ones are pruned)",
    )
    jobs_keep_days: float = setting(
        30.0, "DCSAM_JOBS_KEEP_DAYS", minimum=0, doc="finished job rows of the last this many days are all kept"
    )
    # past one machine
    database_url: str | None = setting(
        None,
        "DCSAM_DATABASE_URL",
        doc="postgresql://user:pass@host/db: every table in PostgreSQL, shared by backend replicas (unset: the "
        "SQLite file under MODEL_DIR)",
    )
    job_lease_s: float = setting(
        60.0,
        "DCSAM_JOB_LEASE_S",
        minimum=5,
        doc="a running job's lease, renewed by its live replica; after it lapses another replica takes the job",
    )
    ray_address: str | None = setting(
        None,
        "DCSAM_RAY_ADDRESS",
        "RAY_ADDRESS",
        doc="run pre-annotation jobs on Ray: a cluster address (ray://host:10001, host:6379) or 'local' for a "
        "Ray started on demand (alias RAY_ADDRESS; unset: in this process)",
    )
    ray_actors: int = setting(
        0, "DCSAM_RAY_ACTORS", minimum=0, doc="inference actors on Ray (0: one per GPU of the cluster, else 2 CPU ones)"
    )
    # video
    video_key: str = setting("video", "DCSAM_VIDEO_KEY", doc="task data key of a frame-sequence task's video id")
    frame_key: str = setting("frame", "DCSAM_FRAME_KEY", doc="task data key of a frame-sequence task's frame number")
    video_propagation: str = setting(
        "auto",
        "DCSAM_VIDEO_PROPAGATION",
        choices=("auto", "sam2", "lite"),
        doc="how masks travel through a video (auto: SAM 2 memory with a SAM 2 model, else lite)",
    )
    video_cache: int = setting(
        16, "DCSAM_VIDEO_CACHE", minimum=1, doc="frame-sequence videos whose propagated regions are kept in memory"
    )
    video_wait_s: float = setting(
        60.0,
        "DCSAM_VIDEO_WAIT_S",
        minimum=1,
        doc="a /predict request waits at most this long for its frames of a frame-sequence propagation (below Label "
        "Studio's 100 s limit); frames not done by then get no prediction yet and the propagation goes on in the "
        "background. Pre-annotation jobs wait until it is done",
    )
    video_task_wait_s: float = setting(
        30.0,
        "DCSAM_VIDEO_TASK_WAIT_S",
        minimum=0,
        doc="a /predict request waits at most this long for its <Video> tasks' tracks; a track not done by then "
        "goes on in the background and that task gets no prediction yet (Label Studio asks again later)",
    )
    video_keyframe_tolerance: float = setting(
        0.5,
        "DCSAM_VIDEO_KEYFRAME_TOLERANCE",
        minimum=0,
        doc="VideoRectangle tracks: leave out frames Label Studio interpolates within this many percent",
    )

    @property
    def basic_auth(self) -> bool:
        return bool(self.basic_auth_user and self.basic_auth_pass)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> BackendSettings:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            meta = f.metadata
            raw = next((env[name] for name in meta["env"] if env.get(name) not in (None, "")), None)
            if raw is not None:
                values[f.name] = _parse(meta["env"][0], raw, _kind(f), meta)
        settings = cls(**values)
        if settings.label_studio_url:
            settings.label_studio_url = settings.label_studio_url.rstrip("/")
            if not settings.label_studio_url.startswith(("http://", "https://")):
                raise ValueError(f"LABEL_STUDIO_URL={settings.label_studio_url!r} must start with http:// or https://")
        return settings


def _kind(f: dataclasses.Field) -> str:
    if f.metadata["kind"]:
        return f.metadata["kind"]
    default = f.default
    return "bool" if isinstance(default, bool) else type(default).__name__ if default is not None else "str"


def _parse(name: str, raw: str, kind: str, meta: Mapping[str, Any]) -> Any:
    raw = raw.strip()
    if kind == "bool":
        v = raw.lower()
        if v in ("1", "true", "yes", "on"):
            return True
        if v in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{name}={raw!r} is not a boolean (use 1/0, true/false)")
    if kind == "json":
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{name} is not valid JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise ValueError(f"{name} must be a JSON object")
        return value
    if kind == "path":
        return Path(raw)
    if kind in ("int", "float"):
        try:
            number = int(raw) if kind == "int" else float(raw)
        except ValueError as exc:
            raise ValueError(f"{name}={raw!r} is not a valid {kind}") from exc
        if meta["minimum"] is not None and number < meta["minimum"]:
            raise ValueError(f"{name}={raw!r} must be >= {meta['minimum']}")
        return int(number * meta["scale"]) if meta["scale"] != 1 else number
    value = raw if meta["choices"] == () else raw.lower()
    if meta["choices"] and value not in meta["choices"]:
        raise ValueError(f"{name}={raw!r}: choose {', '.join(meta['choices'])}")
    return value


def _default_text(f: dataclasses.Field) -> str:
    if f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
        return f"default {value}" if value else ""
    if f.default is None:
        return ""
    if isinstance(f.default, bool):
        return f"default {int(f.default)}"
    if f.metadata["scale"] != 1:
        return f"default {f.default / f.metadata['scale']:g}"
    return f"default {f.default}"


def _env_doc() -> dict[str, str]:
    doc = {}
    for f in dataclasses.fields(BackendSettings):
        meta = f.metadata
        choices = " | ".join(meta["choices"])
        parts = [p for p in (choices, meta["doc"]) if p]
        default = _default_text(f)
        doc[meta["env"][0]] = ": ".join(parts) + (f" ({default})" if default else "")
    doc["WORKERS / THREADS / PORT"] = "gunicorn workers (1), threads per worker (8), port (9090)"
    return doc


ENV_DOC: dict[str, str] = _env_doc()
