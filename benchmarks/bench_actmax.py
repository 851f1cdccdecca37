"""Activation maximisation: 256 ascent steps in pixel space and in the generator's latent
space (the issue's budget: each at most 10 s on the project's 2-core CPU, quiet).
The baseline is 256 plain forward+backward passes of the same network on one 64x64 image:
what the search cannot go below."""
import torch

from _common import benchmark, timeit
from chapter6_utils import actmax, models
from chapter6_utils.data import normalize


@benchmark("actmax")
def bench_actmax(device, repeat):
    cnn = models.load("lesion_cnn", device=device)
    gen = models.load("lesion_generator", device=device)
    x = normalize(torch.rand(1, 3, 64, 64)).to(device)

    def bare():
        xx = x.clone().requires_grad_(True)
        for _ in range(256):
            (g,) = torch.autograd.grad(cnn(xx)[0, 1], xx)

    base = timeit(bare, repeat=repeat, warmup=1, device=device)
    obj = actmax.class_logit(1)
    t_pix = timeit(lambda: actmax.maximize(cnn, obj, steps=256, seed=0), repeat=repeat, warmup=1, device=device)
    t_reg = timeit(lambda: actmax.maximize(cnn, obj, steps=256, seed=0, l2=1.0, tv=0.5, blur_every=4, jitter=2),
                   repeat=repeat, warmup=1, device=device)
    t_dgn = timeit(lambda: actmax.dgn_am(cnn, gen, obj, steps=256, seed=0), repeat=repeat, warmup=1, device=device)
    return [("256 forward+backward passes of lesion_cnn, 64x64 (baseline)", base, None),
            ("maximize: 256 steps on lesion_cnn, 64x64, no regulariser", t_pix, base),
            ("maximize: 256 steps, L2 + TV + blur every 4 + jitter 2", t_reg, base),
            ("dgn_am: 256 steps, lesion_generator -> lesion_cnn", t_dgn, base)]
