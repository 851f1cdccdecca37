"""Benchmarks of the evaluations (notebook 07): the whole evaluation behind Table 1, the
sanity-check sweep and deletion curves.

Budgets on the project's 2-core CPU: the whole evaluation (8 methods and 3 controls, 32
images, 3 seeds, every test: ``evaluation.evaluate()``) in at most 120 s; the cascading
sweep of every CNN method for 8 images in at most 60 s. Each row names the load average
when it was taken: other work on the two cores slows torch 3-6 times.
"""
from __future__ import annotations

import os
import time

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


def _load() -> str:
    return "load average " + " ".join(f"{v:.1f}" for v in os.getloadavg())


@benchmark("evaluation")
def bench_evaluation(device, repeat):
    """``evaluation.evaluate()`` as Table 1 runs it: 7 CNN methods on lesion_cnn and rollout
    on lesion_vit, the 3 controls on each, 32 images, seeds 0-2, every test (cascading,
    bottom-up, independent, eMPRT, sMPRT with 3 noisy copies, data randomisation,
    deletion, insertion, shortcut, conservation, cost). Timed once (it takes a minute or
    more), against one gradient sweep of the same images as the baseline."""
    x = normalize(synthetic.make_lesions(600, "biased", seed=0).select(label=1, ruler=True).images[:32]).to(device)
    model = models.load("lesion_cnn", device=device)
    base = timeit(lambda: ev.METHODS["gradient"](model, x, 1), repeat=max(3, repeat), device=device)
    before = _load()
    t = time.perf_counter()
    result = ev.evaluate(device=device)
    full = time.perf_counter() - t
    cells = sum(result.verdict(k, m) != "n/a" for k in ev.MEASURES for m in result.methods + result.controls)
    # Table 1's cost column: no gradient-based method should come out cheaper than 0.8 of the
    # forward and backward it is built on (a timing, so read here, not asserted in a test)
    costs = {m: c for m, c in result.cost.items() if m in ev.GRADIENT_BASED}
    low = min(costs, key=costs.get) if costs else None
    floor = f"; lowest gradient-based cost {costs[low]:.2f}x ({low}), floor 0.8" if low else ""
    return [("one gradient of lesion_cnn, 32 images (baseline)", base, None),
            (f"evaluation.evaluate(): 8 methods + 3 controls, 32 images, 3 seeds, {cells} verdict cells "
             f"(budget 120 s on the 2-core CPU; {before} before, {_load()} after{floor})", full, base)]
