"""dcsam.training.loop: the early-stop rule ends a plateaued fine-tune, only where (and in the thread) it is set."""

from __future__ import annotations

import threading

import torch
from torch import nn

from dcsam.training.loop import EarlyStop, early_stopping, optimise


def _run(steps: int, target: float, lr: float = 0.5) -> list[float]:
    """A one-parameter fit of ``target``: the loss falls (by 4% a step at lr 0.01), then stays at 0 once reached."""
    torch.manual_seed(0)
    w = nn.Linear(1, 1, bias=False)
    opt = torch.optim.SGD(w.parameters(), lr=lr)
    x = torch.ones(1, 1)
    return optimise(w, opt, lambda step: ((w(x) - target) ** 2).mean(), steps)


def test_without_a_rule_every_step_runs():
    assert len(_run(200, 1.0)) == 200


def test_a_plateau_stops_the_loop_and_is_recorded():
    rule = EarlyStop(patience=10, min_steps=20)
    with early_stopping(rule):
        losses = _run(200, 1.0)
    assert 20 <= len(losses) < 200
    assert rule.runs == [(len(losses), 200)]
    assert losses[-1] < 1e-6  # it stopped because the fit was done
    with early_stopping(rule):
        assert len(_run(5, 1.0)) == 5  # never before min_steps
    assert rule.runs[-1] == (5, 5)


def test_a_loss_that_keeps_falling_runs_every_step():
    rule = EarlyStop(patience=10, min_steps=20)
    with early_stopping(rule):
        assert len(_run(200, 100.0, lr=0.01)) == 200


def test_the_rule_is_per_thread():
    seen: list[int] = []
    with early_stopping(EarlyStop(patience=10, min_steps=20)):
        other = threading.Thread(target=lambda: seen.append(len(_run(200, 1.0))))
        other.start()
        other.join()
    assert seen == [200]  # a request or job thread elsewhere trains to the end
