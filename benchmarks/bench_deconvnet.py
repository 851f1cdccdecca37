"""Deconvnet: the Zeiler-Fergus projection against one plain backward pass (issue: at most 2x).

The baseline is ``saliency.gradient``: one forward and one backward pass to the input,
parameters frozen. ``project`` runs the forward only up to the chosen layer and inverts
from there, so the deepest convolutional layer is its slowest case; the rule road
(``deconvnet``, ``guided_backprop``: hooks on every ReLU) is timed beside them.
"""
from __future__ import annotations

import torch

from _common import benchmark, timeit
from chapter6_utils import data, deconvnet, models, saliency, synthetic


def _per_call(fn, calls):
    # A 64x64 pass of the lesion CNN takes a few milliseconds: one call per timing is
    # dominated by scheduler noise, so small cases time a loop and divide.
    def run():
        for _ in range(calls):
            fn()
    return run


@benchmark("deconvnet")
def bench_deconvnet(device, repeat):
    rows = []
    cases = [("lesion_cnn, 1 image 64x64", models.load("lesion_cnn", device=device),
              data.normalize(synthetic.make_lesions(1, "biased", seed=0).images).to(device), 1,
              ["features.14", "features.8"], 50),
             ("VGG-16 (random weights), 1 image 224x224", models.load("vgg16", pretrained=False, device=device),
              torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(device), 258,
              ["features.29", "features.15"], 1)]
    for what, model, x, target, layers, calls in cases:
        def time_it(fn):
            return timeit(_per_call(fn, calls), repeat=repeat, device=device) / calls

        base = time_it(lambda: saliency.gradient(model, x, target))
        rows.append((f"{what}: gradient (one forward+backward; baseline)", base, base))
        for layer in layers:
            t = time_it(lambda: deconvnet.project(model, x, layer, 0))
            rows.append((f"{what}: project from {layer}", t, base))
        for fn in (deconvnet.deconvnet, deconvnet.guided_backprop):
            t = time_it(lambda: fn(model, x, target))
            rows.append((f"{what}: {fn.__name__}", t, base))
    return rows
