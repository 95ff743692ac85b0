"""Whole-project pre-annotation on Ray: the :class:`~backend.services.pages.PageModel` of a job run with
``DCSAM_RAY_ADDRESS`` / ``RAY_ADDRESS`` set (or the job's ``ray`` param, ``dcsam preannotate --ray``).

The job itself does not change: the backend process is the Ray *driver* and keeps everything that talks to
Label Studio's state: listing pages, skipping tasks, the ledger, imports, progress and figures
(:func:`backend.services.preannotate.run_preannotate`). Only the work per page moves to Ray:

* **media** are fetched and decoded by CPU tasks (:func:`fetch_images`, one per batch, with the same loader,
  limits and download policy as :class:`~backend.services.predictor.Predictor`); their output goes straight
  from Ray's object store to an actor, never through the driver;
* **inference** runs on a pool of :class:`InferenceActor` (one per GPU, or ``DCSAM_RAY_ACTORS`` CPU actors,
  2 by default), each holding one engine for the whole job;
* the **examples** are encoded once, by the backend as for ``/predict``, and shipped with the served weights
  as one object (:class:`ModelSnapshot`, ``ray.put`` once per model_version): each actor fetches it once and
  keeps it, so no actor encodes an example and no batch carries one;
* **brush RLE** (or the control's other region format, :func:`backend.labelstudio.outputs.mask_regions`) is
  encoded in the actor after inference, on its CPU side, and only the regions travel back.

The snapshot is taken when the job starts (and again if the project's model_version changes mid-job): the
whole job predicts with the same examples, where the in-process job follows example changes between batches.
Annotations submitted during a job reach the next one.

Frame-sequence tasks and projects with a ``<Video>`` are predicted in the driver as before (their propagation
reads whole videos in order; splitting them over actors would change the result).

**Why Ray core, not Ray Data.** The job is already a driver loop over pages with a ledger step per page; Ray
Data's ``map_batches`` with an actor pool would run its own streaming executor beside that loop, with the
page's bookkeeping split between both and an operator per stage even on 2 cores. Two remote primitives (a
fetch task, an actor class) and a bounded dispatcher (at most :data:`IN_FLIGHT_PER_ACTOR` batches queued per
actor: the backpressure) give the same pipeline with the ledger still in one place.

**Exactly once.** Actors have no side effect: they return regions, and only the driver imports, under the
ledger's pending/done protocol. So running a batch twice can never import twice, and what matters is that no
batch is lost:

* an actor that dies (process killed, node lost) is restarted by Ray (``max_restarts``) and its unfinished
  calls are run again on the restarted actor (``max_task_retries``); the restarted actor loads its engine
  and fetches the same snapshot again, so the retried batch gives the same answer;
* an actor whose restarts are used up raises ``RayActorError`` for its calls: the driver drops it from the
  pool and sends those batches to another actor (:class:`ActorPool`); with no actor left the job fails and a
  rerun resumes from its cursor, like any failed job;
* a fetch task lost with its node is re-run by Ray from its lineage (tasks are retried by default).

Ray's own retries are the first line because they need no driver code and keep a batch on a warm engine;
the driver's resubmission covers what they cannot (an actor that cannot come back). Either way the page is
imported only when every batch of it has an answer.

The Label Studio URL and token travel to the fetch tasks (they download the media), so a job may only run
on the cluster named by ``DCSAM_RAY_ADDRESS`` or on a local Ray (:func:`backend.services.preannotate.ray_address`).
"""

from __future__ import annotations

import atexit
import copy
import dataclasses
import logging
import math
import os
import shutil
import tempfile
import threading
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
import torch

from dcsam.api import InContextSegmenter
from dcsam.checkpoints import clone_state
from dcsam.config import SegmenterConfig
from dcsam.errors import DcsamError

from ..labelstudio.labelconfig import ControlTag
from ..labelstudio.media import LabelStudioAccess, configure
from ..labelstudio.outputs import mask_regions
from ..settings import BackendSettings
from .deps import JobDeps
from .jobs import JobContext, JobError
from .pages import LocalPages
from .predictor import Predictor, TaskOutcome, empty_prediction
from .video import sequence_id

log = logging.getLogger(__name__)

NAMESPACE = "dcsam"
LOCAL_OBJECT_STORE_BYTES = 512 * 1024**2  # a local Ray's object store: two pages of large images, not 30 % of RAM
FETCH_CPUS = 0.25  # a fetch task mostly waits on the network: four share a CPU
MAX_RESTARTS = 3  # Ray restarts a dead actor this many times ...
MAX_TASK_RETRIES = 3  # ... and re-runs its unfinished calls on the restarted one
MAX_RESUBMITS = 3  # then the driver sends a batch to another actor at most this many times
IN_FLIGHT_PER_ACTOR = 2  # one running, one queued: the actor never waits for the driver, nor piles up work
WAIT_S = 1.0  # the dispatcher checks for cancellation this often


# -- Ray itself ---------------------------------------------------------------------------------------------
_init_lock = threading.Lock()


def connect(address: str, *, num_cpus: int | None = None) -> None:
    """Connect this process to Ray once: ``"local"`` starts one here on demand (all CPUs of the machine unless
    ``num_cpus``, no dashboard, a small object store, logs in a temporary folder), else joins the cluster at
    ``address``. A process already connected (a test's Ray, an earlier job) is reused as it is."""
    with _init_lock:
        if ray.is_initialized():
            return
        if address == "local":
            temp = tempfile.mkdtemp(prefix="dcsam-ray-")
            atexit.register(shutil.rmtree, temp, True)  # registered first, so it runs after Ray's own shutdown
            ray.init(
                address="local",
                num_cpus=num_cpus or os.cpu_count() or 1,
                include_dashboard=False,
                object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                namespace=NAMESPACE,
                _temp_dir=temp,
                log_to_driver=False,
                configure_logging=False,
            )
        else:
            ray.init(address=address, namespace=NAMESPACE, log_to_driver=False, configure_logging=False)
        log.info("connected to Ray (%s): %s", address, ray.cluster_resources())


@dataclass(frozen=True)
class ActorShape:
    """How many inference actors, and what each one reserves."""

    count: int
    num_cpus: float
    num_gpus: float
    torch_threads: int  # CPU actors: the CPUs each one may use (GPU actors: 1, the GPU does the work)


def actor_shape(wanted: int, resources: dict[str, float], node_cpus: float) -> ActorShape:
    """``wanted`` actors (``DCSAM_RAY_ACTORS``; 0: one per GPU, else 2 on CPUs) for a cluster with
    ``resources`` (``ray.cluster_resources()``) whose largest node has ``node_cpus`` CPUs. GPU actors take a
    GPU each (a share when asked for more actors than GPUs). CPU actors share the CPUs, leave half a CPU to
    the fetch tasks (which could never run otherwise) and fit on one node; each runs torch on the whole CPUs
    it reserves, at least one: on a busy machine, threads beyond the CPUs a process gets wait on each other
    (measured here: 8 lite images took 2.4 s with 1 thread and 7.8 s with 2 on a loaded 2-core machine)."""
    gpus = int(resources.get("GPU", 0))
    cpus = float(resources.get("CPU", 1))
    count = wanted or gpus or 2
    if gpus:
        return ActorShape(count, 1.0 if cpus >= count + 1 else 0.0, min(1.0, gpus / count), 1)
    share = max(0.1, min((cpus - 2 * FETCH_CPUS) / count, node_cpus - 2 * FETCH_CPUS))
    return ActorShape(count, share, 0.0, max(1, math.floor(share)))


def largest_node_cpus() -> float:
    """The CPUs of the cluster's largest live node (an actor must fit on one)."""
    return max((float(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")), default=1.0)


# -- what every actor gets once per model_version ------------------------------------------------------------
@dataclass
class ModelSnapshot:
    """The served weights and the project's encoded examples, as the backend's engine holds them now."""

    version: str  # the model_version these weights are
    weights: dict[str, Any]  # engine.trainable_state_dict(), on the CPU
    examples: dict[str, list[Any]]  # example key -> encoded examples, on the CPU
    targets: dict[str, list[tuple[str, ControlTag, str]]]  # task data key -> (example key, control, label)
    min_score: float
    batch_size: int


def move_tensors(obj: Any, device: torch.device | str) -> Any:
    """``obj`` with every tensor in it (in dicts, lists, tuples and dataclasses) on ``device``: encoded examples
    are engine-specific structures, and an actor's device is not necessarily the backend's."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: move_tensors(v, device) for k, v in obj.items()}
    if type(obj) in (list, tuple):
        return type(obj)(move_tensors(v, device) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        moved = copy.copy(obj)
        for f in dataclasses.fields(obj):
            object.__setattr__(moved, f.name, move_tensors(getattr(obj, f.name), device))
        return moved
    return obj


# -- CPU tasks: media -------------------------------------------------------------------------------------
MEDIA_SETTINGS = (
    "max_download_bytes",
    "max_image_pixels",
    "local_files_root",
    "download_timeout_s",
    "media_allow_private",
    "decode_budget_mp",
)


def media_settings(settings: BackendSettings) -> BackendSettings:
    """The settings a fetch task needs (limits and download policy) and nothing else: the backend's own
    secrets (basic auth, webhook secret, database URL) do not travel to the cluster."""
    return dataclasses.replace(BackendSettings(), **{name: getattr(settings, name) for name in MEDIA_SETTINGS})


_worker_state: dict[tuple[str, str], tuple[LabelStudioAccess, Predictor]] = {}


def _media_loader(settings: BackendSettings, url: str, api_key: str) -> tuple[LabelStudioAccess, Predictor]:
    """This worker process's Label Studio access and media loader (made once per worker and token)."""
    key = (url, api_key)
    if key not in _worker_state:
        configure(settings)  # the download policy and decode budget, as in the backend
        access = LabelStudioAccess(
            url, api_key, max_download_bytes=settings.max_download_bytes, local_files_root=settings.local_files_root
        )
        # a Predictor for its media methods only (the model is the actors'): one loader for both paths
        loader = Predictor(
            settings,
            None,  # type: ignore[arg-type]
            None,  # type: ignore[arg-type]
            version_for=lambda _project: "",
            prepare=lambda _project: "",
            on_task_error=lambda _kind: None,
        )
        _worker_state[key] = (access, loader)
    return _worker_state[key]


@ray.remote(num_cpus=FETCH_CPUS)
def fetch_images(
    settings: BackendSettings, credentials: tuple[str, str], tasks: list[dict], value_keys: list[str]
) -> dict[tuple[int, str], tuple[np.ndarray | None, str | None]]:
    """Download and decode the tasks' images: ``Predictor.load_many``'s answer (errors per task, never raised)."""
    access, loader = _media_loader(settings, *credentials)
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(tasks) * len(value_keys)))) as pool:
        return loader.load_many(tasks, value_keys, access, pool)


# -- actors: inference -------------------------------------------------------------------------------------
TaskAnswer = tuple[list[dict], str | None, str | None]  # regions, error, error kind ("media" | "model")


@ray.remote
class InferenceActor:
    """One engine (on one GPU, or a share of the CPUs) for a whole job: fetched images in, regions out."""

    def __init__(self, config: dict[str, Any], torch_threads: int, gpu: bool):
        if not gpu:
            torch.set_num_threads(max(1, min(torch_threads, os.cpu_count() or 1)))
        elif str(config.get("device", "auto")).startswith("cuda"):
            config = {**config, "device": "cuda"}  # Ray gave this actor one GPU: it is cuda:0 here
        self.config = SegmenterConfig.from_dict(config)
        self.engine = InContextSegmenter.from_config(self.config).engine
        self.device = self.config.resolved_device()
        self.snapshots: dict[str, ModelSnapshot] = {}  # the snapshot's object id -> it, fetched once
        self.loaded: str | None = None  # the object id of the snapshot whose weights the engine holds
        self.fetches = 0  # snapshots fetched by this process (one per model_version)

    def pid(self) -> int:
        return os.getpid()

    def snapshot_fetches(self) -> int:
        return self.fetches

    def predict(self, images: dict, snapshot: list[ray.ObjectRef], count: int) -> list[TaskAnswer]:
        """Regions for ``count`` tasks whose images :func:`fetch_images` fetched. ``snapshot`` is a one-element
        list so that Ray passes the reference, not the object: fetched only on the actor's first call."""
        ref = snapshot[0]
        key = ref.hex()
        if key not in self.snapshots:
            self.snapshots = {key: move_tensors(ray.get(ref), self.device)}
            self.fetches += 1
        snap = self.snapshots[key]
        if self.loaded != key:
            self.engine.load_trainable_state_dict(snap.weights)
            self.loaded = key
        answers: list[TaskAnswer] = [([], None, None) for _ in range(count)]
        for value_key, targets in snap.targets.items():
            examples = {k: snap.examples[k] for k, _, _ in targets}
            got = [(i, images.get((i, value_key)) or (None, "not downloaded")) for i in range(count)]
            for i, (_img, err) in got:
                if err:
                    answers[i] = (answers[i][0], err, "media")
            ok = [(i, img) for i, (img, _err) in got if img is not None]
            for start in range(0, len(ok), max(1, snap.batch_size)):
                chunk = ok[start : start + max(1, snap.batch_size)]
                try:
                    outs = self.engine.predict([img for _, img in chunk], examples)
                except DcsamError as exc:
                    for i, _ in chunk:
                        answers[i] = (answers[i][0], f"model: {exc}", "model")
                    continue
                for (i, _), out in zip(chunk, outs):
                    regions = mask_regions(
                        {lab: r.mask for lab, r in out.items()},
                        {lab: float(r.score) for lab, r in out.items()},
                        targets,
                        snap.min_score,
                    )
                    answers[i] = (answers[i][0] + regions, answers[i][1], answers[i][2])
        return answers


class ActorPool:
    """Inference actors and a dispatcher that keeps each busy and re-sends the batches of one that is gone."""

    def __init__(self, actors: list[Any], ctx: JobContext):
        self.actors = list(actors)
        self.ctx = ctx

    def run(self, calls: list[Callable[[Any], ray.ObjectRef]]) -> list[Any]:
        """Each ``call(actor)`` on some actor, at most :data:`IN_FLIGHT_PER_ACTOR` queued per actor; answers in
        order. A call whose actor died for good is made again on another one."""
        results: list[Any] = [None] * len(calls)
        todo = deque(range(len(calls)))
        resubmits = [0] * len(calls)
        running: dict[ray.ObjectRef, tuple[int, Any]] = {}
        busy: dict[int, int] = {id(a): 0 for a in self.actors}
        while todo or running:
            sent = True
            while todo and sent:  # round robin: a page of two batches goes to two actors
                sent = False
                for actor in self.actors:
                    if todo and busy[id(actor)] < IN_FLIGHT_PER_ACTOR:
                        i = todo.popleft()
                        running[calls[i](actor)] = (i, actor)
                        busy[id(actor)] += 1
                        sent = True
            if not running:
                raise JobError("every Ray inference actor died (restarts used up); run the job again to resume")
            ready, _ = ray.wait(list(running), num_returns=1, timeout=WAIT_S)
            self.ctx.check_cancel()
            for ref in ready:
                i, actor = running.pop(ref)
                busy[id(actor)] -= 1
                try:
                    results[i] = ray.get(ref)
                except ray.exceptions.RayActorError as exc:
                    resubmits[i] += 1
                    if resubmits[i] > MAX_RESUBMITS:
                        raise JobError(f"a batch failed on {resubmits[i]} Ray actors; last: {exc}") from exc
                    if actor in self.actors:
                        log.warning(
                            "job %s: a Ray inference actor is gone (%s); its batches go to the others",
                            self.ctx.id,
                            str(exc)[:200],
                        )
                        self.actors.remove(actor)
                    todo.appendleft(i)
        return results

    def close(self) -> None:
        for actor in self.actors:
            try:
                ray.kill(actor)
            except Exception:  # already gone
                pass
        self.actors = []


# -- the page model ------------------------------------------------------------------------------------------
@dataclass
class RayLoad:
    """A page's tasks as ``RayPages.load`` left them."""

    local: list[int]  # indices into the page's todo predicted in the driver (frames; all tasks with a <Video>)
    local_images: dict  # Predictor.load_many's answer for those
    batches: list[tuple[list[int], ray.ObjectRef]]  # indices into todo and the fetch task of their images


def credentials(deps: JobDeps, project_id: int) -> tuple[str, str]:
    """The Label Studio URL and token the fetch tasks use: the same precedence as
    ``LabelStudioProjects.access_for`` (the environment's, else what /setup stored for the project)."""
    s = deps.settings
    if s.label_studio_url and s.label_studio_api_key:
        return s.label_studio_url, s.label_studio_api_key
    project = deps.projects.get(project_id) or {}
    if not project.get("hostname") or not project.get("access_token"):
        raise JobError(f"project {project_id}: no Label Studio URL/token for the Ray fetch tasks")
    return str(project["hostname"]), str(project["access_token"])


class RayPages:
    """The pages of one job on Ray (see the module docstring); ``local`` gives the job's project, config,
    Label Studio access and I/O pool (frame sequences are still predicted by it, in this process)."""

    def __init__(self, local: LocalPages, ctx: JobContext, address: str):
        deps, project_id = local.deps, local.project_id
        self.deps, self.ctx, self.project_id, self.cfg, self.access, self.pool = (
            deps,
            ctx,
            project_id,
            local.cfg,
            local.access,
            local.pool,
        )
        self.credentials = credentials(deps, project_id)
        try:
            connect(address)
        except Exception as exc:  # an unreachable cluster, a local Ray that cannot start
            raise JobError(f"cannot connect to Ray at {address!r}: {type(exc).__name__}: {str(exc)[:300]}") from exc
        shape = actor_shape(deps.settings.ray_actors, ray.cluster_resources(), largest_node_cpus())
        tag = f"dcsam-preannotate-{ctx.id}-{uuid.uuid4().hex[:8]}"
        config = deps.runtime.config.to_dict()
        # the actors load their engines while the first page is listed and fetched
        self.actors = ActorPool(
            [
                InferenceActor.options(  # type: ignore[attr-defined]
                    name=f"{tag}-{i}",
                    namespace=NAMESPACE,
                    num_cpus=shape.num_cpus,
                    num_gpus=shape.num_gpus,
                    max_restarts=MAX_RESTARTS,
                    max_task_retries=MAX_TASK_RETRIES,
                ).remote(config, shape.torch_threads, shape.num_gpus > 0)
                for i in range(shape.count)
            ],
            ctx,
        )
        log.info("job %s: pre-annotating on Ray (%s) with %s", ctx.id, address, shape)
        self.settings_ref = ray.put(media_settings(deps.settings))
        self.planned: tuple | None = None
        self.snapshot: ray.ObjectRef | None = None
        self.served = ""
        self.local_only = False

    def start(self, version: str, planned: tuple) -> None:
        pe, plan = planned
        self.planned = planned
        self.local_only = any(name in self.cfg.videos for name in plan)
        images = {name: wanted for name, wanted in plan.items() if name in self.cfg.images}
        targets: dict[str, list[tuple[str, ControlTag, str]]] = {}
        for name, wanted in images.items():
            targets.setdefault(self.cfg.images[name].value_key, []).extend((k, c, lab) for c, lab, k in wanted)
        runtime = self.deps.runtime
        with runtime.inference_lock:  # the weights and examples /predict would use now, consistently
            self.served = self.deps.prepare(self.project_id)
            weights = move_tensors(clone_state(runtime.base().engine.trainable_state_dict()), "cpu")
            examples = {
                k: move_tensors(pe.segmenter.encoded_examples(k), "cpu")
                for wanted in targets.values()
                for k, _, _ in wanted
            }
        snapshot = ModelSnapshot(
            self.served, weights, examples, targets, self.deps.settings.min_score, max(1, self.deps.settings.batch_size)
        )
        self.snapshot = ray.put(snapshot)  # once per model_version; each actor fetches it once

    def _is_local(self, task: dict) -> bool:
        if self.local_only:
            return True
        video = self.deps.predictor.video
        return (
            video is not None
            and sequence_id(task, self.deps.settings.video_key, self.deps.settings.frame_key) is not None
        )

    def load(self, todo: list[dict], value_keys: list[str]) -> RayLoad:
        local = [i for i, t in enumerate(todo) if self._is_local(t)]
        remote = [i for i in range(len(todo)) if i not in set(local)]
        local_images = (
            self.deps.predictor.load_many([todo[i] for i in local], value_keys, self.access, self.pool) if local else {}
        )
        # batches small enough that every actor gets a share of the page (and a lost batch costs little)
        actors = max(1, len(self.actors.actors))
        size = max(1, min(self.deps.settings.batch_size, math.ceil(len(remote) / actors)))
        batches = []
        for start in range(0, len(remote), size):
            idx = remote[start : start + size]
            fetch = fetch_images.remote(self.settings_ref, self.credentials, [todo[i] for i in idx], value_keys)
            batches.append((idx, fetch))
        return RayLoad(local, local_images, batches)

    def predict(self, todo: list[dict], loaded: RayLoad) -> list[TaskOutcome]:
        if not todo:
            return []
        outcomes = [TaskOutcome(empty_prediction(self.served)) for _ in todo]
        if loaded.local:
            local = self.deps.predictor.predict_outcomes(
                self.project_id,
                [todo[i] for i in loaded.local],
                self.cfg,
                self.access,
                preloaded=loaded.local_images,
                planned=self.planned,
            )
            for i, outcome in zip(loaded.local, local):
                outcomes[i] = outcome
        snapshot = [self.snapshot]
        answers = self.actors.run(
            [
                (lambda actor, fetch=fetch, n=len(idx): actor.predict.remote(fetch, snapshot, n))
                for idx, fetch in loaded.batches
            ]
        )
        for (idx, _fetch), batch in zip(loaded.batches, answers):
            for i, (regions, error, kind) in zip(idx, batch):
                prediction = outcomes[i].prediction
                prediction["result"] += regions
                if error:
                    log.error("task %s: no prediction: %s", todo[i].get("id"), error)
                    self.deps.predictor.on_task_error(kind or "model")
                    outcomes[i].error = error
                scores = [r["score"] for r in prediction["result"] if "score" in r]
                prediction["score"] = float(np.mean(scores)) if scores else 0.0
        return outcomes

    def close(self) -> None:
        self.actors.close()
