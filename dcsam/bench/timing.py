"""Timers' helpers: device synchronisation, summaries in milliseconds, what the device is."""

from __future__ import annotations

import os
import platform
import statistics
from typing import Any

import torch


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously: a timer must not stop before it)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def summary(seconds: list[float]) -> dict[str, float]:
    """Mean, median, 90th percentile and minimum, in milliseconds."""
    ms = sorted(s * 1000.0 for s in seconds)
    p90 = ms[min(len(ms) - 1, int(round(0.9 * (len(ms) - 1))))]
    return {
        "mean": round(statistics.fmean(ms), 3),
        "p50": round(statistics.median(ms), 3),
        "p90": round(p90, 3),
        "min": round(ms[0], 3),
    }


def positive_ms(seconds: float) -> float:
    # Rounded to microseconds but never 0: a stage that ran took time, however little.
    return max(round(seconds * 1000.0, 3), 0.001)


def peak_mib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def device_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "type": device.type,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            name=props.name,
            memory_gib=round(props.total_memory / 2**30, 1),
            capability=f"{props.major}.{props.minor}",
            cudnn=torch.backends.cudnn.version(),
        )
    else:
        info["name"] = platform.processor() or platform.machine()
    return info
