"""Timing kernels side by side: the one way the benchmarks and the evaluate stage measure.

Each call is timed alone (CUDA events on a GPU, `perf_counter` on CPU) after the caches are
flushed by writing a buffer larger than the last-level cache, so a weight matrix is read
from memory as in a decode step through a real model, not from a cache the previous call
warmed. Variants are interleaved call by call, so drift (clocks, other load) hits all of
them alike; the median over the calls is reported.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

# larger than the last-level cache: H100/H200 L2 50-60 MB; laptop and server L3 8-32 MB
FLUSH_BYTES = {"cuda": 256 << 20, "cpu": 64 << 20}


class _Flusher:
    def __init__(self, device: torch.device):
        n = FLUSH_BYTES.get(device.type, 64 << 20) // 4
        self.buf = torch.empty(n, dtype=torch.float32, device=device)

    def __call__(self) -> None:
        self.buf.fill_(1.0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_one(fn: Callable[[], object], device: torch.device, flush: _Flusher | None) -> float:
    """Seconds of one call of `fn`, caches flushed first."""
    if flush is not None:
        flush()
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def interleaved(
    fns: dict[str, Callable[[], object]],
    device: torch.device | str,
    reps: int = 50,
    warmup: int = 3,
    flush: bool = True,
) -> dict[str, float]:
    """Median seconds per call of each function, timed call by call in turn."""
    device = torch.device(device)
    flusher = _Flusher(device) if flush else None
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            times[name].append(time_one(fn, device, flusher))
    return {name: statistics.median(ts) for name, ts in times.items()}
