"""Attention maps and rollout on ViT-S/16 at 224x224 against a plain forward pass (issue 7).

Target: ``attention_maps`` + ``rollout`` in at most 1.5x the time of a forward pass
(fused attention, no gradients), both timed in this run, on one image and on a batch.
"""
from __future__ import annotations

import torch

from _common import benchmark, timeit
from chapter6_utils import attention, models


@benchmark("attention")
def bench_attention(device, repeat):
    model = models.load("vit_small_patch16_224", pretrained=False, device=device)
    torch.manual_seed(0)
    rows = []
    for n in (1, 8):
        x = torch.randn(n, 3, 224, 224, device=device)

        def forward():
            with torch.no_grad():
                model(x)

        def maps_and_rollout():
            attention.rollout(attention.attention_maps(model, x), head_fusion="mean")

        def maps_and_rollout_max():
            attention.rollout(attention.attention_maps(model, x), head_fusion="max", discard_ratio=0.9)

        base = timeit(forward, repeat=repeat, device=device)
        rows.append((f"ViT-S/16 forward pass (fused attention), batch {n}", base, None))
        rows.append((f"attention_maps + rollout (mean), batch {n}",
                     timeit(maps_and_rollout, repeat=repeat, device=device), base))
        rows.append((f"attention_maps + rollout (max, discard 0.9), batch {n}",
                     timeit(maps_and_rollout_max, repeat=repeat, device=device), base))
    return rows
