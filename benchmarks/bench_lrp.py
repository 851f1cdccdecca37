"""LRP benchmarks: the chapter's composite on VGG-16 at 224x224, against Zennit's
EpsilonGammaBox on the same model and input, and against one plain forward + backward.
Run: python benchmarks/run.py --only lrp"""
from __future__ import annotations

import torch
from _common import benchmark, forward_backward, frozen_imagenet_model, timeit

from chapter6_utils import data, lrp
from chapter6_utils.lrp._dataflow import Flow


@benchmark("lrp")
def bench_lrp(device, repeat):
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonGammaBox
    from zennit.torchvision import VGGCanonizer

    model, x = frozen_imagenet_model("vgg16", device)
    target = 258
    low, high = data.pixel_bounds_like(x)

    def plain():
        forward_backward(model, x, target)

    def zennit():
        composite = EpsilonGammaBox(low=low, high=high, canonizers=[VGGCanonizer()])
        with Gradient(model=model, composite=composite) as attributor:
            attributor(x, lambda out: torch.eye(out.shape[1], device=device)[[target]] * out)

    chapter = lrp.chapter()
    box = lrp.epsilon_gamma_box()
    t_plain = timeit(plain, repeat=repeat, device=device)
    t_zennit = timeit(zennit, repeat=repeat, device=device)
    t_ours = timeit(lambda: lrp.lrp(model, x, target, composite=chapter), repeat=repeat, device=device)
    t_box = timeit(lambda: lrp.lrp(model, x, target, composite=box), repeat=repeat, device=device)
    # What the canonisation proof adds to every call: one forward pass of the model with
    # the dataflow recorded (the canonised copy's own pass is lrp's relevance pass).
    t_proof = timeit(lambda: Flow().run(model, x), repeat=repeat, device=device)
    return [
        ("VGG-16 224x224: forward + backward to the input (baseline)", t_plain, None),
        ("VGG-16: Zennit EpsilonGammaBox (with VGGCanonizer)", t_zennit, None),
        ("VGG-16: lrp, chapter composite, vs Zennit (target <= 1.0x)", t_ours, t_zennit),
        ("VGG-16: lrp, chapter composite, vs forward + backward (target <= 4x)", t_ours, t_plain),
        ("VGG-16: lrp, epsilon_gamma_box (Zennit's layout), vs Zennit", t_box, t_zennit),
        ("VGG-16: lrp's canonisation proof (recorded forward), share of lrp", t_proof, t_ours),
    ]
