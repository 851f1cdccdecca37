"""Speed of the companion, measured side by side in one run: python benchmarks/run.py

Each benchmark is a function registered with ``@benchmark(group)`` that returns rows
``(what, seconds, baseline_seconds_or_None)``. A ratio is printed only against a
baseline timed in the same run, on the same machine and device, because absolute times
move with the machine and its load; ratios move much less. Later notebooks' methods add
their own groups in ``benchmarks/bench_<topic>.py`` (loaded automatically).

Options: ``--only GROUP`` (repeatable), ``--device cpu|cuda`` (default: CUDA if present),
``--repeat N`` (timing repetitions; the median is reported).
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a clone without installing
sys.path.insert(0, str(HERE))

import chapter6_utils  # noqa: E402
from chapter6_utils import models, synthetic  # noqa: E402
from chapter6_utils.data import normalize  # noqa: E402
from _common import BENCHMARKS, benchmark, timeit  # noqa: E402

@benchmark("synthetic")
def bench_synthetic(device, repeat):
    """make_lesions at 1,000 and 10,000 images. 10,000 was a test once ("under 10 s"); it
    failed on a busy machine (40 s), so it is a row here: about 7 s on an idle 2-core CPU,
    and a ratio near 10 against the 1,000-image run says the cost stays linear."""
    small = timeit(lambda: synthetic.make_lesions(1000, "biased", seed=1), repeat=max(1, repeat // 2))
    big = timeit(lambda: synthetic.make_lesions(10_000, "biased", seed=1), repeat=1, warmup=0)
    return [("make_lesions: 1,000 images (baseline)", small, small),
            (f"make_lesions: 10,000 images (goal: under 10 s idle; {10_000 / big:,.0f} images/s)", big, small)]


@benchmark("forward")
def bench_forward(device, repeat):
    rows = []
    x64 = normalize(synthetic.make_lesions(64, "biased", seed=0).images).to(device)
    base = None
    for name in ["lesion_cnn", "lesion_cnn_clean", "lesion_resnet", "lesion_vit"]:
        m = models.load(name, device=device)
        with torch.no_grad():
            t = timeit(lambda: m(x64), repeat=repeat, device=device)
        base = base or t
        rows.append((f"{name}: forward, batch of 64 at 64x64", t, base))
    return rows


@benchmark("smoothgrad")
def bench_smoothgrad(device, repeat):
    """SmoothGrad, n = 25, sigma = 0.15, ResNet-18 (random weights) at 224x224, one image."""
    from captum.attr import NoiseTunnel, Saliency

    from chapter6_utils import saliency

    model = models.load("resnet18", pretrained=False, device=device)
    torch.manual_seed(0)
    x = torch.randn(1, 3, 224, 224, device=device)
    target, n, sigma = 258, 25, 0.15

    # (a) The chapter's code as printed: one noisy copy per forward/backward, parameters
    # still requiring gradients, a NumPy round trip per copy.
    def vanilla_saliency(model, input_tensor, class_idx):
        x = input_tensor.clone().detach().requires_grad_(True)
        logits = model(x)
        score = logits[0, class_idx]
        model.zero_grad()
        score.backward()
        sal = x.grad.abs().squeeze(0)
        sal, _ = sal.max(dim=0)
        return sal.cpu().numpy()

    def chapter_smoothgrad(model, input_tensor, class_idx, n_samples=25, sigma=0.15):
        accumulated = torch.zeros_like(input_tensor[0, 0]).cpu()  # .cpu(): adapted to run on CUDA too
        std = sigma * (input_tensor.max() - input_tensor.min()).item()
        for _ in range(n_samples):
            noise = torch.randn_like(input_tensor) * std
            noisy_x = (input_tensor + noise).clamp(input_tensor.min(), input_tensor.max())
            accumulated += torch.from_numpy(vanilla_saliency(model, noisy_x, class_idx))
        return (accumulated / n_samples).cpu().numpy()

    nt = NoiseTunnel(Saliency(model))
    stdevs = sigma * (x.max() - x.min()).item()  # Captum's stdevs is absolute, and it does not clamp

    def captum(bs):
        return lambda: nt.attribute(x, target=target, nt_type="smoothgrad", nt_samples=n, stdevs=stdevs,
                                    nt_samples_batch_size=bs).abs().amax(1)

    default = saliency.default_batch_size(x)
    cases = [("chapter's loop: one copy per pass, numpy round trip (baseline)",
              lambda: chapter_smoothgrad(model, x, target, n, sigma)),
             (f"saliency.smoothgrad, default batch_size (= {default} on {device.type})",
              lambda: saliency.smoothgrad(model, x, target, n_samples=n, sigma=sigma, seed=0))]
    cases += [(f"saliency.smoothgrad, batch_size={bs}",
               lambda bs=bs: saliency.smoothgrad(model, x, target, n_samples=n, sigma=sigma, batch_size=bs, seed=0))
              for bs in (1, 5, 13, 25) if bs != default]
    cases += [("captum NoiseTunnel(Saliency), nt_samples_batch_size=None (all 25)", captum(None)),
              (f"captum NoiseTunnel(Saliency), nt_samples_batch_size={default}", captum(default))]
    rows, base = [], None
    for what, fn in cases:
        t = timeit(fn, repeat=repeat, device=device)
        base = base or t
        rows.append((what, t, base))
    return rows


def _load_groups() -> None:
    # One file per notebook's methods (bench_deconvnet.py, bench_lrp.py, ...), each
    # registering its groups with @benchmark; run.py keeps the shared ones.
    for path in sorted(HERE.glob("bench_*.py")):
        importlib.import_module(path.stem)


def main(argv=None) -> int:
    _load_groups()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", action="append", choices=list(BENCHMARKS))
    p.add_argument("--device", default=None)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args(argv)
    device = torch.device(args.device) if args.device else chapter6_utils.device()
    print(f"device: {device}; torch {torch.__version__}; {torch.get_num_threads()} CPU threads")
    print(f"{'benchmark':<72}{'median s':>10}{'ratio':>9}")
    for group in args.only or list(BENCHMARKS):
        print(f"-- {group}")
        for what, seconds, baseline in BENCHMARKS[group](device, args.repeat):
            ratio = f"{seconds / baseline:8.2f}x" if baseline else f"{'':>9}"
            print(f"{what:<72}{seconds:>10.4f}{ratio}")
    print("ratio: time relative to the first row of its group, timed in this same run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
