"""The optimisation loop every engine's fine-tuning shares."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from ..engines.base import ProgressFn


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
    usually forks the RNG around model creation and this loop together. Returns the losses.
    """
    losses: list[float] = []
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
    finally:
        module.train(was_training)
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
