"""Fine-tuning beside serving: a training twin of an engine, and frozen features cached for one training run.

:func:`training_twin` copies an engine so that its trainable part (lite: the head and matching memory;
DC-SAM: the prompt generator) is its own while the frozen networks (backbone, SAM) stay shared: the twin
can be fine-tuned in one thread while the original serves in another, at the memory cost of one more
trainable part, not of a second model.

:func:`cached_features` makes a twin's frozen-feature encoders (``encode_example``, and ``encode_query``
where the engine has one) answer each image once inside a ``with`` block: cross-validation fine-tunes and
scores the same images many times (every fold, every step choice, the final fit), and their frozen
features never change.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from ..engines.base import Engine, LabelledImage

__all__ = ["FROZEN_ENCODERS", "cached_features", "shared_storages", "training_twin", "warm_features"]

# engine methods whose result depends on the frozen networks and the input only
FROZEN_ENCODERS = ("encode_example", "encode_query")


def _frozen_modules(engine: Engine) -> dict[int, nn.Module]:
    """{id: module} of every module held by ``engine`` whose parameters are all frozen (shared by a twin)."""
    out: dict[int, nn.Module] = {}
    for value in vars(engine).values():
        if not isinstance(value, nn.Module):
            continue
        for module in value.modules():
            params = list(module.parameters())
            if params and not any(p.requires_grad for p in params):
                out[id(module)] = module
    return out


def _storages(state: Any) -> set[int]:
    """Data pointers of every tensor in a (nested) state dict."""
    if isinstance(state, torch.Tensor):
        return {state.untyped_storage().data_ptr()} if state.numel() else set()
    if isinstance(state, dict):
        return set().union(*(_storages(v) for v in state.values())) if state else set()
    if isinstance(state, (list, tuple)):
        return set().union(*(_storages(v) for v in state)) if state else set()
    return set()


def shared_storages(a: Engine, b: Engine) -> set[int]:
    """Storage of trainable weights that ``a`` and ``b`` share (empty for a proper twin)."""
    return _storages(a.trainable_state_dict()) & _storages(b.trainable_state_dict())


def training_twin(engine: Engine) -> Engine:
    """A copy of ``engine`` with its own trainable part and the frozen modules shared (see the module doc).

    Falls back to a full copy if sharing the frozen modules would share trainable weights too (an engine
    whose trainable part has no parameter that requires grad).
    """
    twin = copy.deepcopy(engine, memo=dict(_frozen_modules(engine)))
    if shared_storages(engine, twin):
        twin = copy.deepcopy(engine)
    return twin


def _digest(array: np.ndarray) -> tuple:
    a = np.ascontiguousarray(array)
    return (a.shape, a.dtype.str, hashlib.blake2b(a.reshape(-1).view(np.uint8).data, digest_size=16).digest())


def _part(value: Any) -> tuple | None:
    if isinstance(value, LabelledImage):
        return (_digest(value.image), _digest(value.mask))
    if isinstance(value, np.ndarray):
        return _digest(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return ("value", value)  # a setting passed along with the image (e.g. extra query sizes)
    if isinstance(value, (tuple, list)):
        parts = [_part(v) for v in value]
        return None if any(p is None for p in parts) else ("seq", tuple(parts))
    return None


def _key(args: tuple, kwargs: dict) -> tuple | None:
    """A content key for the encoder's arguments (images, masks, labelled images); None: do not cache."""
    parts = [_part(v) for v in args]
    named = [(k, _part(v)) for k, v in sorted(kwargs.items())]
    if any(p is None for p in parts) or any(p is None for _, p in named):
        return None
    return (tuple(parts), tuple(named))


@contextmanager
def cached_features(engine: Engine) -> Iterator[dict[str, int]]:
    """Inside the block, ``engine``'s frozen-feature encoders compute each distinct input once.

    Yields counters ``{"hits": .., "misses": ..}``. The cache lives only for the block (one training run):
    features are keyed by the input's content, so an image seen in several folds is encoded once.
    """
    counts = {"hits": 0, "misses": 0}
    own = vars(engine)
    saved = {name: own[name] for name in FROZEN_ENCODERS if name in own}  # an instance's own patch, kept
    wrapped = []
    for name in FROZEN_ENCODERS:
        original = getattr(engine, name, None)
        if original is not None:
            setattr(engine, name, _memoised(original, counts))
            wrapped.append(name)
    try:
        yield counts
    finally:
        for name in wrapped:
            delattr(engine, name)
        for name, value in saved.items():
            setattr(engine, name, value)


def _memoised(fn: Callable[..., Any], counts: dict[str, int]) -> Callable[..., Any]:
    cache: dict[tuple, Any] = {}

    def call(*args: Any, **kwargs: Any) -> Any:
        key = _key(args, kwargs)
        if key is None:
            return fn(*args, **kwargs)
        if key in cache:
            counts["hits"] += 1
            return cache[key]
        counts["misses"] += 1
        cache[key] = out = fn(*args, **kwargs)
        return out

    return call


def warm_features(
    engine: Engine, images: Sequence[tuple[np.ndarray, np.ndarray]], between: Callable[[], None] | None = None
) -> None:
    """Encode each (image, mask) once with ``engine``'s frozen encoders (inside :func:`cached_features`),
    calling ``between()`` after each image: the place where a caller may pause, e.g. to let requests run."""
    seen: set[tuple] = set()
    for image, mask in images:
        key = (_digest(image), _digest(mask))
        if key in seen:
            continue
        seen.add(key)
        engine.encode_example(LabelledImage(image, mask))
        encode_query = getattr(engine, "encode_query", None)
        if encode_query is not None:
            encode_query(image)
        if between is not None:
            between()
