"""The model, loaded once per process on first use (or by a warm-up thread), never by /health or /setup.

``inference_lock`` serialises every model call in the process (one writer to the GPU); request
threads wait on it, /health and /setup never touch it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from dcsam.api import InContextSegmenter
from dcsam.config import SegmenterConfig

log = logging.getLogger(__name__)

SegmenterFactory = Callable[[SegmenterConfig], InContextSegmenter]


def default_factory(config: SegmenterConfig) -> InContextSegmenter:
    return InContextSegmenter.from_config(config)


class ModelHolder:
    def __init__(self, config: SegmenterConfig, factory: SegmenterFactory | None = None):
        self.config = config
        self._factory = factory or default_factory
        self._base: InContextSegmenter | None = None
        self._load_lock = threading.Lock()
        self.inference_lock = threading.Lock()
        self.load_error: str | None = None
        self.load_seconds: float | None = None
        self.loads = 0  # how many times this process built the model (must stay <= 1)

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
                self.load_seconds = time.monotonic() - t0
                self.load_error = None
                self._base = base
                log.info("engine %s loaded in %.1f s (weights %s)", self.config.engine, self.load_seconds, base.version)
        return self._base

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
