"""The model runtime: the segmenter, loaded once per process on first use (or by a warm-up thread),
never by /health or /setup.

``inference_lock`` serialises every serving model call in the process (one writer to the GPU); request
threads wait on it, /health and /setup never touch it.

Fine-tuning runs beside serving, not under that lock: it trains :meth:`ModelRuntime.training_engine`, a twin
of the serving engine with its own trainable part and the frozen networks shared
(:func:`dcsam.training.twin.training_twin`), and gives way to serving between its steps
(:meth:`ModelRuntime.yield_to_serving`): while a model call holds or waits for the lock, training pauses.
A promoted fine-tune reaches the serving engine only through the version registry and
:meth:`ModelRuntime.use_weights`, i.e. under the lock, between two requests.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from dcsam.api import InContextSegmenter
from dcsam.checkpoints import clone_state
from dcsam.config import SegmenterConfig
from dcsam.engines.base import Engine
from dcsam.training.twin import training_twin

log = logging.getLogger(__name__)

BASE_TAG = "\x00base"


SegmenterFactory = Callable[[SegmenterConfig], InContextSegmenter]


def default_factory(config: SegmenterConfig) -> InContextSegmenter:
    return InContextSegmenter.from_config(config)


class InferenceLock:
    """A lock (``with``, ``acquire``/``release``, ``locked``) that also knows whether anyone holds or waits
    for it, so that background work can give way to model calls (:meth:`wait_idle`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = threading.Condition()
        self._wanted = 0  # holders + waiters

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        with self._state:
            self._wanted += 1
        ok = self._lock.acquire(blocking, timeout)
        if not ok:
            self._done()
        return ok

    def release(self) -> None:
        self._lock.release()
        self._done()

    def _done(self) -> None:
        with self._state:
            self._wanted -= 1
            if not self._wanted:
                self._state.notify_all()

    def locked(self) -> bool:
        return self._lock.locked()

    @property
    def wanted(self) -> int:
        """How many threads hold or wait for the lock now."""
        return self._wanted

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no thread holds or waits for the lock (at most ``timeout`` s); True if it is idle."""
        with self._state:
            return self._state.wait_for(lambda: not self._wanted, timeout)

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class ModelRuntime:
    def __init__(
        self,
        config: SegmenterConfig,
        factory: SegmenterFactory | None = None,
        on_load: Callable[[], None] | None = None,
    ):
        self.config = config
        self._factory = factory or default_factory
        self._on_load = on_load or (lambda: None)  # e.g. metrics, counted where the load happens
        self._base: InContextSegmenter | None = None
        self._load_lock = threading.Lock()
        self.inference_lock = InferenceLock()
        self._twin: Engine | None = None  # the training twin, made on first fine-tune
        self._twin_lock = threading.Lock()
        self.yield_timeout_s = 30.0  # the longest a training step waits for serving to go idle
        self.load_error: str | None = None
        self.load_seconds: float | None = None
        self.loads = 0  # how many times this process built the model (must stay <= 1)
        # which trainable weights the engine holds now: a model_version, or None = unknown (reload before use)
        self.weights_tag: str | None = None
        self.base_state: dict | None = None  # the engine's trainable weights as loaded (base model_version)

    @property
    def loaded(self) -> bool:
        return self._base is not None

    def base(self) -> InContextSegmenter:
        """The process-wide segmenter (engine + weights); built on first call, thread-safe."""
        if self._base is not None:
            return self._base
        with self._load_lock:
            if self._base is None:
                t0 = time.monotonic()
                log.info("loading the %s engine (once per process) ...", self.config.engine)
                try:
                    base = self._factory(self.config)
                except Exception as exc:
                    self.load_error = f"{type(exc).__name__}: {exc}"
                    log.error("could not load the %s engine: %s", self.config.engine, self.load_error)
                    raise
                self.loads += 1
                self.base_state = clone_state(base.engine.trainable_state_dict())
                self.weights_tag = BASE_TAG
                self.load_seconds = time.monotonic() - t0
                self.load_error = None
                self._base = base
                log.info("engine %s loaded in %.1f s (weights %s)", self.config.engine, self.load_seconds, base.version)
                self._on_load()
        return self._base

    def use_weights(self, tag: str, load: Callable[[], dict | None]) -> None:
        """Make the engine hold the trainable weights ``tag`` (``load()`` gives them; None = the base ones).

        Call with :attr:`inference_lock` held. A no-op when the engine already holds them.
        """
        engine = self.base().engine
        if tag == self.weights_tag:
            return
        self.weights_tag = None
        state = load()
        engine.load_trainable_state_dict(self.base_state if state is None else state)
        self.weights_tag = tag

    def forget_weights(self) -> None:
        """The engine's weights were changed in place (training): reload before the next use."""
        self.weights_tag = None

    def training_engine(self) -> Engine:
        """The engine fine-tuning runs on: a twin of the serving engine (own trainable part, shared frozen
        networks), made once per process. Never held by the inference lock; one training job at a time."""
        with self._twin_lock:
            if self._twin is None:
                base = self.base().engine
                with self.inference_lock:  # a consistent copy: no request is changing the weights meanwhile
                    self._twin = training_twin(base)
            twin = self._twin
        return twin

    def yield_to_serving(self) -> None:
        """Called by training between steps: pause while a model call holds or waits for the inference
        lock (at most :attr:`yield_timeout_s`, so that a stream of requests cannot starve training)."""
        self.inference_lock.wait_idle(self.yield_timeout_s)

    def new_segmenter(self) -> InContextSegmenter:
        """A segmenter with its own examples that shares the loaded engine (one per project)."""
        base = self.base()
        return InContextSegmenter(base.engine, base.config)

    def start_warmup(self) -> threading.Thread:
        def run() -> None:
            try:
                self.base()
            except Exception:  # logged in base(); a request retries
                pass

        thread = threading.Thread(target=run, name="dcsam-warmup", daemon=True)
        thread.start()
        return thread
