"""The optimisation loop every engine's fine-tuning shares."""

from __future__ import annotations

from collections.abc import Callable

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
