"""The guard's cost per call (issue 20, item 7): ``saliency.gradient`` on a tiny CNN beside
the bare forward + backward it wraps, timed interleaved (bare, guarded, bare, guarded...)
so that a load change on a shared machine hits both alike; the median of each is
reported, and their difference is the guard's overhead (goal: at most 0.3 ms per call on
a CPU). Run alone: ``python benchmarks/bench_guard.py [--repeat N]``, or through
``benchmarks/run.py --only guard``."""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _common import benchmark  # noqa: E402
from chapter6_utils import saliency  # noqa: E402


def tiny_model(device):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).to(device).eval()


def bare_gradient(model, x, target):
    """What a user writes without the package: forward, pick S_c, backward to the input."""
    xx = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(xx)[:, target].sum(), xx)
    return g


def interleaved(fns, repeat, device):
    """Median seconds of each of ``fns``, timed in turns so that they share the load."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = [[] for _ in fns]
    for fn in fns:  # warm-up
        for _ in range(20):
            fn()
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            sync()
            t = time.perf_counter()
            fn()
            sync()
            times[i].append(time.perf_counter() - t)
    return [statistics.median(t) for t in times]


@benchmark("guard")
def bench_guard(device, repeat):
    model = tiny_model(device)
    x = torch.randn(1, 3, 32, 32, device=device)
    assert torch.allclose(saliency.gradient(model, x, 3), bare_gradient(model, x, 3), atol=1e-6)
    bare, guarded = interleaved([lambda: bare_gradient(model, x, 3), lambda: saliency.gradient(model, x, 3)],
                                max(200, repeat), device)
    return [("bare forward + backward, tiny CNN 1x3x32x32 (baseline)", bare, bare),
            (f"saliency.gradient (guarded): overhead {1e3 * (guarded - bare):.3f} ms per call "
             "(goal: <= 0.3 ms on a CPU)", guarded, bare)]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=2000)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load = os.getloadavg()
    rows = bench_guard(torch.device(args.device), args.repeat)
    for what, sec, base in rows:
        print(f"{what:<95} {1e3 * sec:8.3f} ms  x{sec / base:5.2f}")
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, at end: "
          f"{os.getloadavg()[0]:.2f} (torch threads: {torch.get_num_threads()})")
