"""Shared helpers for the benchmarks: timing and thread settings."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import torch


def setup(threads: int) -> None:
    """Caps intra-op threads so that ratios are comparable between machines."""
    torch.set_num_threads(threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    torch.manual_seed(0)


def _sync() -> None:
    """Waits for queued GPU work, so that a timing covers the kernels, not their launch."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def best_of(fn: Callable[[], object], repeats: int) -> float:
    """Best wall time of ``repeats`` calls after one warm-up call (seconds)."""
    fn()
    _sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - start)
    return min(times)
