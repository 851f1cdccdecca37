"""Regularisers and the measures that check what they claim to change: total variation,
high-frequency energy, ruler-tick energy in a lesion image, and realism as the distance to
the nearest real image in a network's feature space."""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import _checks as checks
from .._guard import model_guard
from ..data import normalize
from .objectives import _layer_act, _Recorder, _resolve_layers, channel

__all__ = ["total_variation", "high_frequency_energy", "ruler_tick_energy", "pooled_features",
           "nearest_neighbour_distance"]


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between neighbouring pixels, per image (N,): the TV of
    equation 10 (book/equations.md) divided by the number of differences, so that it does not grow with size."""
    checks.tensor(x, "x", dim=(3, 4), floating=True, shape_hint="(N, C, H, W) or (N, H, W)")
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1)
    return dy + dx


def high_frequency_energy(x: torch.Tensor, cutoff: float = 0.25) -> torch.Tensor:
    """Share of each image's spectral power (mean removed) at spatial frequencies above
    ``cutoff`` cycles per pixel (0.5 is the Nyquist limit), per image (N,)."""
    checks.tensor(x, "x", dim=(2, 3, 4), floating=True, shape_hint="(..., H, W)")
    cutoff = checks.real(cutoff, "cutoff", low=0.0, high=0.5, high_open=True,
                         hint="cycles per pixel below the Nyquist limit 0.5")
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    p = torch.fft.fft2(x).abs() ** 2
    fy = torch.fft.fftfreq(x.shape[-2], device=x.device).abs().view(-1, 1)
    fx = torch.fft.fftfreq(x.shape[-1], device=x.device).abs().view(1, -1)
    high = (torch.maximum(fy, fx) > cutoff).to(p.dtype)
    return (p * high).flatten(1).sum(1) / p.flatten(1).sum(1).clamp_min(1e-12)


def ruler_tick_energy(x: torch.Tensor, band: int = 3, periods=(3.0, 4.0)) -> torch.Tensor:
    """How strongly an image shows ruler-like ticks anywhere, per image (N,), in pixel units.

    The lesion world's rulers carry ticks every 3 or 4 pixels across a light strip. We
    average the grey image over ``band`` adjacent rows (and, separately, columns), take
    the Fourier amplitude of each such line at the tick frequencies (1/4 to 1/3 cycles per
    pixel, widened by one frequency bin), and keep the strongest line: the RMS amplitude
    of the tick-frequency component, in [0, 1] pixel units. On the lesion world's test
    images, those with a ruler score about ten times those without one.
    """
    checks.tensor(x, "x", dim=(3, 4), floating=True, shape_hint="(N, 3, H, W) or (N, H, W)")
    band = checks.integer(band, "band", low=1, high=min(x.shape[-2:]),
                          hint="adjacent rows (columns) averaged, at most the image side")
    if not isinstance(periods, (tuple, list)) or len(periods) == 0:
        raise TypeError(f"periods must be a tuple of tick periods in pixels, got {periods!r}")
    periods = tuple(checks.real(p, "periods", low=2.0, hint="tick periods in pixels, >= 2 (the Nyquist limit)")
                    for p in periods)
    g = x.mean(1) if x.dim() == 4 else x  # (N, H, W) grey
    best = []
    for lines in (g, g.transpose(1, 2)):  # rows, then columns
        lines = F.avg_pool2d(lines.unsqueeze(1), (band, 1), stride=1).squeeze(1)
        lines = lines - lines.mean(-1, keepdim=True)
        length = lines.shape[-1]
        f = torch.fft.rfftfreq(length, device=x.device)
        sel = ((f >= 1 / max(periods) - 1 / length) & (f <= 1 / min(periods) + 1 / length)).to(lines.dtype)
        power = (torch.fft.rfft(lines, dim=-1).abs() ** 2 * sel).sum(-1)
        best.append((power.sqrt() * math.sqrt(2) / length).amax(1))  # RMS of the selected sinusoids
    return torch.stack(best, 1).amax(1)


def pooled_features(model: nn.Module, layer: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """A feature map for realism measures: images in [0, 1] (N, 3, H, W) -> the
    spatially averaged activations (N, C) of ``layer`` of ``model`` (normalised input)."""
    modules = _resolve_layers(model, channel(layer, 0))

    @torch.no_grad()
    def features(images):
        with model_guard(model):
            rec = _Recorder(modules)
            try:
                acts = rec.run(model, normalize(images))
            finally:
                rec.close()
        a = _layer_act(acts, layer, "pooled_features")
        return a.mean(dim=(2, 3))

    return features


@torch.no_grad()
def nearest_neighbour_distance(images: torch.Tensor, reference: torch.Tensor,
                               features: Optional[Callable] = None) -> torch.Tensor:
    """Distance from each image to its nearest reference image, (N,).

    In the space of ``features(images)`` (default: the pixels, flattened). A search
    result that looks like real data lies as close to some real image as real images lie
    to each other; one that does not, lies far from all of them.
    """
    f = features or (lambda t: t.flatten(1))
    a, b = f(images).flatten(1), f(reference).flatten(1)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"reference gives {b.shape[1]} features per image but images give {a.shape[1]}: "
                         "images and reference must have the same shape after the first dimension")
    if len(b) == 0:
        raise ValueError("reference holds no images")
    return torch.cdist(a, b).amin(1)
