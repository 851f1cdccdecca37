"""The benchmark registry and timer shared by benchmarks/run.py and benchmarks/bench_*.py."""
from __future__ import annotations

import statistics
import time

import torch

BENCHMARKS: dict[str, callable] = {}


def benchmark(group):
    """Register ``fn(device, repeat) -> [(what, seconds, baseline_seconds_or_None), ...]``."""
    def register(fn):
        BENCHMARKS[group] = fn
        return fn
    return register


def timeit(fn, repeat=5, warmup=1, device=None) -> float:
    """Median wall time of ``fn()`` in seconds (synchronising CUDA around each call)."""
    sync = torch.cuda.synchronize if device is not None and device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)
