"""Benchmarks of the evaluations (notebook 07): the sanity-check sweep and deletion curves.

The issue's budget: the whole cascading randomisation sweep, every method registered for
a CNN, on ``lesion_cnn`` for 8 images, in at most 60 s on the project's 2-core CPU.
"""
from __future__ import annotations

from _common import benchmark, timeit

from chapter6_utils import evaluation as ev
from chapter6_utils import models, synthetic
from chapter6_utils.data import normalize


@benchmark("randomization")
def bench_randomization(device, repeat):
    model = models.load("lesion_cnn", device=device)
    data = synthetic.make_lesions(64, "biased", seed=0).select(label=1)
    x = normalize(data.images[:8]).to(device)
    methods = ev.available_methods(model)
    reps = max(1, repeat // 3)  # each sweep is seconds long
    base = timeit(lambda: ev.randomization_sweep(model, ["gradient"], x, 1), repeat=reps, device=device)
    full = timeit(lambda: ev.randomization_sweep(model, methods, x, 1), repeat=reps, device=device)
    rows = [("cascading sweep, gradient only, lesion_cnn, 8 images, 9 steps", base, None),
            (f"cascading sweep, all {len(methods)} methods ({', '.join(methods)}), 8 images "
             "(budget 60 s on the 2-core CPU)", full, base)]
    for name in methods:
        t = timeit(lambda: ev.randomization_sweep(model, [name], x, 1), repeat=reps, device=device)
        rows.append((f"  of which {name}", t, base))
    return rows


@benchmark("deletion")
def bench_deletion(device, repeat):
    model = models.load("lesion_cnn", device=device)
    x = normalize(synthetic.make_lesions(8, "biased", seed=0).images).to(device)
    rank = ev.random_map(x)
    t = timeit(lambda: ev.deletion_curve(model, x, 1, rank, steps=32), repeat=repeat, device=device)
    return [("deletion curve, 33 points, lesion_cnn, 8 images", t, None)]
