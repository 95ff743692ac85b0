"""Nuclio entry points of the dcsam detector: the code lives in ``backend.cvat.nuclio`` (the backend image)."""

from backend.cvat.nuclio import handler, init_context

__all__ = ["handler", "init_context"]
