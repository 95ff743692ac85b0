"""The optimisation loop every engine's fine-tuning shares, and its optional early stop.

An engine's ``finetune`` takes a step count, not a stopping rule; a caller that wants one (the backend's
cross-validated fine-tuning) sets it around the call with :func:`early_stopping`. The rule is per thread
(a context variable): a fine-tune in a job thread never changes another thread's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..engines.base import ProgressFn


@dataclass
class EarlyStop:
    """Stop when the smoothed training loss has not fallen by ``min_delta`` (relative, and at least
    ``abs_delta``) for ``patience`` steps, after at least ``min_steps``. ``runs`` records each loop it
    governed: (steps run, steps asked)."""

    patience: int = 30
    min_steps: int = 30
    min_delta: float = 0.01
    abs_delta: float = 1e-4  # a loss fading towards 0 keeps improving by 1%: that is a plateau too
    smoothing: float = 0.9  # of the loss's exponential moving average (minibatch losses are noisy)
    runs: list[tuple[int, int]] = field(default_factory=list)


_EARLY_STOP: ContextVar[EarlyStop | None] = ContextVar("dcsam_early_stop", default=None)


@contextmanager
def early_stopping(rule: EarlyStop | None) -> Iterator[EarlyStop | None]:
    """Inside the block (this thread only), :func:`optimise` stops early by ``rule``; None: never."""
    token = _EARLY_STOP.set(rule)
    try:
        yield rule
    finally:
        _EARLY_STOP.reset(token)


def optimise(
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    step_loss: Callable[[int], torch.Tensor],
    steps: int,
    progress: ProgressFn | None = None,
) -> list[float]:
    """Run ``steps`` optimiser steps on ``step_loss(step)`` with ``module`` in training mode.

    ``progress(step, steps, {"loss": ...})`` is called after each step. The module's previous
    mode (train or eval) is restored afterwards, also on error. Seeding is the caller's: it
    usually forks the RNG around model creation and this loop together. Returns the losses (fewer than
    ``steps`` when an :func:`early_stopping` rule stopped it).
    """
    losses: list[float] = []
    rule = _EARLY_STOP.get()
    ema: float | None = None
    best, since = float("inf"), 0
    was_training = module.training
    module.train()
    try:
        for step in range(steps):
            loss = step_loss(step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            if progress is not None:
                progress(step + 1, steps, {"loss": losses[-1]})
            if rule is not None:
                ema = losses[-1] if ema is None else rule.smoothing * ema + (1 - rule.smoothing) * losses[-1]
                if best == float("inf") or ema < best - max(rule.min_delta * best, rule.abs_delta):
                    best, since = ema, 0
                else:
                    since += 1
                if step + 1 >= rule.min_steps and since >= rule.patience:
                    break
    finally:
        module.train(was_training)
        if rule is not None:
            rule.runs.append((len(losses), steps))
    return losses


def finetune_figures(losses: list[float], steps: int, pairs: int, started: float, last: int = 10) -> dict[str, Any]:
    """What a fine-tuning returns: the first loss, the mean of the ``last`` losses (None without
    steps), the step count, how many training pairs it drew from and the seconds since ``started``
    (a ``time.perf_counter()`` value)."""
    return {
        "loss_first": losses[0] if losses else None,
        "loss_last": float(np.mean(losses[-last:])) if losses else None,
        "steps": steps,
        "pairs": pairs,
        "seconds": time.perf_counter() - started,
    }
