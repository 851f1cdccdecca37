"""Controls, uncertainty and verdicts: what every measured cell of Table 1 rests on.

* Controls (:func:`edge_map`, :func:`constant_map`, :func:`noise_map`): maps that ignore
  the model. They take the arguments a method takes, ``(model, x, target, **options)``,
  and are registered as methods (``evaluation.CONTROLS``), so every test runs them as
  reference rows. Binder et al. (2023) showed that maps which ignore the model can score
  well on randomisation checks; a rule that a control passes is not a rule.
* :func:`bootstrap`: a mean over images x randomisation seeds with a 95% percentile
  bootstrap interval (images and seeds resampled independently).
* :func:`verdict`: ``"pass"``, ``"fail"`` or ``"inconclusive"`` from an interval and a
  stated threshold: a verdict only where the interval clears the threshold.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import _checks as checks
from .._guard import check_input, check_target
from ..data import denormalize

__all__ = ["edge_map", "constant_map", "noise_map", "Estimate", "bootstrap", "verdict", "MIN_IMAGES", "MIN_SEEDS",
           "VERDICTS"]

#: The fewest images and randomisation seeds an interval is computed from.
MIN_IMAGES, MIN_SEEDS = 32, 3
VERDICTS = ("pass", "fail", "inconclusive")


# --------------------------------------------------------------------------- controls
def _check(model, x, target):
    check_input(model, x)
    check_target(target, x.shape[0], device=x.device)  # refused like a method refuses it, then ignored


def edge_map(model, x, target, **_) -> torch.Tensor:
    """The input's edge magnitude, (N, H, W): Sobel gradients of each channel of the
    de-normalised image in [0, 1], ``sqrt(gx^2 + gy^2)`` summed over channels (replicated
    border). It ignores ``model`` and ``target``: a map any random network drawn from
    edge detectors resembles (Adebayo et al., 2018; Sixt et al., 2020)."""
    _check(model, x, target)
    img = denormalize(x.detach())
    k = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=x.dtype, device=x.device)
    kernels = torch.stack([k, k.T])[:, None].repeat(img.shape[1], 1, 1, 1)  # (2C, 1, 3, 3): gx, gy per channel
    g = F.conv2d(F.pad(img, (1, 1, 1, 1), mode="replicate"), kernels, groups=img.shape[1])
    g = g.view(img.shape[0], img.shape[1], 2, *img.shape[-2:])
    return g.square().sum(2).sqrt().sum(1)


def constant_map(model, x, target, **_) -> torch.Tensor:
    """A map of ones, (N, H, W): it ranks no pixel above another (rank correlations with
    it are undefined, NaN; a deletion in its order removes pixels row by row)."""
    _check(model, x, target)
    return torch.ones(x.shape[0], *x.shape[-2:], dtype=x.dtype, device=x.device)


def noise_map(model, x, target, seed: int = 0, **_) -> torch.Tensor:
    """Uniform noise in [0, 1), (N, H, W), drawn on the CPU from ``seed`` alone: the same
    map for a trained and a randomised model, as a map that ignores the model is. (Noise
    drawn afresh on every call would change with the model and so pass every
    randomisation test; that is Binder et al.'s (2023) objection to those tests, and why
    Table 1 reads them beside deletion and the ground truth, where noise loses.)"""
    _check(model, x, target)
    gen = torch.Generator().manual_seed(checks.seed(seed))
    return torch.rand((x.shape[0],) + tuple(x.shape[-2:]), generator=gen, dtype=torch.float64).to(x)


# --------------------------------------------------------------------------- uncertainty
@dataclass(frozen=True)
class Estimate:
    """A mean with its 95% bootstrap interval.

    Attributes
    ----------
    value : float
        The mean over every image (and seed); NaN where nothing was defined.
    low, high : float
        The 2.5th and 97.5th percentiles of the bootstrap means.
    n_images, n_seeds : int
        What it was computed from (``n_seeds`` 1: no randomisation).
    """

    value: float
    low: float
    high: float
    n_images: int
    n_seeds: int = 1

    def __format__(self, spec: str) -> str:
        spec = spec or ".2f"
        if self.value != self.value:  # NaN
            return "n/a"
        return f"{self.value:{spec}} [{self.low:{spec}}, {self.high:{spec}}]"

    def __str__(self) -> str:
        return format(self, ".2f")


def bootstrap(values, *, n_boot: int = 1000, seed: int = 0, min_images: int = MIN_IMAGES,
              min_seeds: int = MIN_SEEDS) -> Estimate:
    """The mean of ``values`` with a 95% percentile-bootstrap interval.

    Parameters
    ----------
    values : torch.Tensor or array_like
        (S, N) one value per randomisation seed and image, or (N,) for a measure
        with no randomisation (one value per image). NaN entries (an undefined value,
        e.g. the rank correlation of a constant map) are left out of each mean.
    n_boot : int, default 1000
        Resamples. Images and seeds are resampled independently (a two-way
        bootstrap): the interval covers both the choice of images and of the draw.
    min_images, min_seeds : int, default MIN_IMAGES, MIN_SEEDS
        The fewest images and seeds accepted (32 and 3): fewer
        give intervals too rough to decide anything, and are refused.
    """
    v = torch.as_tensor(values).detach().to("cpu", torch.float64)
    if v.dim() == 1:
        v = v[None]
        seeded = False
    elif v.dim() == 2:
        seeded = True
    else:
        raise ValueError(f"values must be (S seeds, N images) or (N images,), got shape {tuple(v.shape)}")
    s, n = v.shape
    if n < min_images:
        raise ValueError(f"values hold {n} images; an interval needs at least {min_images}: evaluate more images")
    if seeded and s < min_seeds:
        raise ValueError(f"values hold {s} randomisation seeds; an interval needs at least {min_seeds}: pass more "
                         "seeds (or a 1-D tensor for a measure with no randomisation)")
    n_boot = checks.integer(n_boot, "n_boot", low=100, hint="bootstrap resamples")
    gen = torch.Generator().manual_seed(checks.seed(seed))
    rows = torch.randint(s, (n_boot, s, 1), generator=gen)
    cols = torch.randint(n, (n_boot, 1, n), generator=gen)
    means = v[rows, cols].flatten(1).nanmean(1)
    value = float(v.nanmean())
    means = means[~means.isnan()]
    if value != value or len(means) < n_boot // 2:
        return Estimate(float("nan"), float("nan"), float("nan"), n, s)
    lo, hi = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return Estimate(value, lo, hi, n, s)


def verdict(estimate: Estimate, threshold: float, better: str = "below") -> str:
    """The rule behind every verdict: ``"pass"`` where the whole 95% interval lies on the
    good side of ``threshold`` (strictly), ``"fail"`` where it lies on the other side
    (the threshold itself counts as failing: no change is no evidence), and
    ``"inconclusive"`` where it straddles the threshold or is undefined (NaN)."""
    checks.instance(estimate, "estimate", Estimate, "an Estimate (evaluation.bootstrap)")
    checks.choice(better, "better", ("below", "above"))
    lo, hi = estimate.low, estimate.high
    if lo != lo or hi != hi:
        return "inconclusive"
    if better == "below":
        return "pass" if hi < threshold else "fail" if lo >= threshold else "inconclusive"
    return "pass" if lo > threshold else "fail" if hi <= threshold else "inconclusive"
