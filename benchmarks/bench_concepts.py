"""Concept benchmarks: ranking the channels of lesion_cnn over 512 lesions
(``concepts.rank_channels``), timed beside one LRP map per image (``lrp.lrp``) on the
same images and batches (target: ranking <= 2x the LRP maps). The load average is
printed beside the rows: on a shared machine every time rises with it, ratios less.
Run: python benchmarks/run.py --only concepts"""
from __future__ import annotations

import os

from _common import benchmark, timeit

from chapter6_utils import concepts, data, lrp, models, synthetic

N, BATCH = 512, 128
LAYERS = ["features.2", "features.7", "features.10", "features.13"]


def _load() -> str:
    try:
        return "load avg " + " ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "load avg n/a"


@benchmark("concepts")
def bench_concepts(device, repeat):
    model = models.load("lesion_cnn", device=device)
    x = data.normalize(synthetic.make_lesions(N, "biased", seed=synthetic.EVAL_SEED).images).to(device)
    batches = [x[i:i + BATCH] for i in range(0, N, BATCH)]

    def lrp_maps():
        for b in batches:
            lrp.lrp(model, b, 1)

    repeat = max(1, min(repeat, 3))
    t_lrp = timeit(lrp_maps, repeat=repeat, device=device)
    t_one = timeit(lambda: concepts.rank_channels(model, x, 1, "features.10", batch_size=BATCH),
                   repeat=repeat, device=device)
    t_all = timeit(lambda: concepts.rank_channels(model, x, 1, LAYERS, batch_size=BATCH),
                   repeat=repeat, device=device)
    t_cond = timeit(lambda: [concepts.concept_relevance(model, b, 1, "features.10", 3) for b in batches],
                    repeat=repeat, device=device)
    return [
        (f"lesion_cnn, {N} lesions: one LRP map per image, batches of {BATCH} ({_load()})", t_lrp, None),
        ("rank_channels, one layer (features.10), vs the LRP maps (target <= 2x)", t_one, t_lrp),
        (f"rank_channels, four layers in one pass, vs the LRP maps ({_load()})", t_all, t_lrp),
        ("concept_relevance, one channel of features.10, vs the LRP maps", t_cond, t_lrp),
    ]
