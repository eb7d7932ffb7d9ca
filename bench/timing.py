"""Timing and image-comparison helpers shared by the GPU benchmarks (run as
`python bench/<name>.py`)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np
import torch


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], *, device: str, warmup: int, repeat: int) -> float:
    """Median seconds of ``fn()`` after ``warmup`` calls, the GPU synchronised around each."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def median_seconds(fn: Callable[[], object], *, device: str, warmup: int, repeat: int) -> float:
    """:func:`timed`, rounded for the results JSON."""
    return round(timed(fn, device=device, warmup=warmup, repeat=repeat), 4)


def psnr_db(a: np.ndarray, b: np.ndarray, *, peak: float) -> float:
    """PSNR of two images of the same shape with values up to ``peak``, in dB (inf when
    identical)."""
    mse = float(np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2))
    return float("inf") if mse == 0 else round(10 * float(np.log10(peak**2 / mse)), 2)
