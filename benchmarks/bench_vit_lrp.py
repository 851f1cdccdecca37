"""LRP through the Vision Transformer: AttnLRP and CP-LRP on ViT-S/16 at 224x224 against one
plain forward + backward of the same model (fused attention, as timm runs it), timed side by
side; Chefer et al.'s gradient-weighted rollout beside them.
Run: python benchmarks/run.py --only vit_lrp"""
from __future__ import annotations

from _common import benchmark, forward_backward, frozen_imagenet_model, timeit

from chapter6_utils import attention, lrp


@benchmark("vit_lrp")
def bench_vit_lrp(device, repeat):
    model, x = frozen_imagenet_model("vit_small_patch16_224", device)
    target = 258

    def plain():
        forward_backward(model, x, target)

    attn, cp = lrp.attn_lrp(), lrp.cp_lrp()
    # Interleaved rounds, so that a change of load hits every candidate alike
    t_plain, t_attn, t_cp, t_chefer = [], [], [], []
    for _ in range(3):
        t_plain.append(timeit(plain, repeat=repeat, device=device))
        t_attn.append(timeit(lambda: lrp.lrp(model, x, target, composite=attn), repeat=repeat, device=device))
        t_cp.append(timeit(lambda: lrp.lrp(model, x, target, composite=cp), repeat=repeat, device=device))
        t_chefer.append(timeit(lambda: attention.gradient_rollout_map(model, x, target), repeat=repeat, device=device))
    base = sorted(t_plain)[1]
    return [
        ("ViT-S/16 224x224: forward + backward to the input (baseline)", base, None),
        ("ViT-S/16: lrp, AttnLRP, vs forward + backward (target <= 3x)", sorted(t_attn)[1], base),
        ("ViT-S/16: lrp, CP-LRP, vs forward + backward", sorted(t_cp)[1], base),
        ("ViT-S/16: gradient-weighted rollout (Chefer 2021b), vs forward + backward", sorted(t_chefer)[1], base),
    ]
