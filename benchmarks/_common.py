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


def frozen_imagenet_model(name, device):
    """``models.load(name)`` with random weights and parameters frozen (a method needs
    gradients at the input only), and one fixed random (1, 3, 224, 224) input."""
    from chapter6_utils import models

    model = models.load(name, pretrained=False, device=device)
    for p in model.parameters():
        p.requires_grad_(False)
    torch.manual_seed(0)
    return model, torch.randn(1, 3, 224, 224, device=device)


def forward_backward(model, x, target):
    """One plain forward + backward to the input: the baseline LRP's ratios divide by."""
    xx = x.clone().requires_grad_(True)
    model(xx)[0, target].backward()
