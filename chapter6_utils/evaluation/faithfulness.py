"""Faithfulness (deletion and insertion, equation 14 (book/equations.md)) and localisation against the
ground-truth masks of the lesion world."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import _checks as checks
from .._guard import check_input, check_target, model_guard
from ..data import gaussian_blur, normalize

__all__ = ["Curve", "deletion_curve", "insertion_curve", "random_map", "relevance_mass",
           "relevance_rank_accuracy", "pointing_game", "CURVE_BATCH_VALUES"]

#: How many input values (steps x N x C x H x W) a deletion or insertion curve puts
#: through one forward pass when ``batch_size=None``, by device type. Measured on the
#: project's 2-core CPU (lesion_cnn, 32 images of 64x64, 17 points): one or two steps
#: per pass (32-64 images) took half the time of eight (256 images, out of cache); the
#: ViT did not care. A GPU wants large batches.
CURVE_BATCH_VALUES = {"cpu": 64 * 3 * 64 * 64, "cuda": 64 * 3 * 224 * 224}


# --------------------------------------------------------------------------- faithfulness
@dataclass
class Curve:
    """A deletion or insertion curve.

    Attributes
    ----------
    fractions : torch.Tensor
        (S + 1,) share of pixels removed (deletion) or inserted (insertion).
    scores : torch.Tensor
        (N, S + 1) the target's probability (or logit) at each step.
    auc : torch.Tensor
        (N,) area under each curve (trapezoid rule over ``fractions`` in [0, 1]).
    """

    kind: str
    baseline: str
    fractions: torch.Tensor
    scores: torch.Tensor
    auc: torch.Tensor


def _baseline(x: torch.Tensor, kind: str, blur_sigma: float | None) -> torch.Tensor:
    if kind == "zero":  # black, in the normalised space the model sees
        return normalize(torch.zeros_like(x)).expand_as(x)
    if kind == "mean":  # each image's own mean colour
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    return gaussian_blur(x, blur_sigma if blur_sigma is not None else x.shape[-1] / 16, padding="replicate")


def _curve(kind, model, x, target, ranking, baseline, steps, score, batch_size, blur_sigma):
    check_input(model, x)
    n, _, h, w = x.shape
    checks.tensor(ranking, "attribution", shape_hint="(N, H, W)")
    if ranking.shape != (n, h, w):
        raise ValueError(f"attribution has shape {tuple(ranking.shape)}; expected (N, H, W) = {(n, h, w)} "
                         "(reduce channels first, e.g. Method.__call__ or .sum(1))")
    checks.finite(ranking, "attribution", cause="a NaN has no place in a ranking of pixels; check the method's map")
    checks.choice(baseline, "baseline", ("blur", "mean", "zero"))
    checks.choice(score, "score", ("probability", "logit"))
    steps = checks.integer(steps, "steps", low=1, hint="the curve has steps + 1 points")
    batch_size = checks.integer(batch_size, "batch_size", low=1, none_ok=True, hint="steps evaluated per forward pass")
    if batch_size is None:
        budget = CURVE_BATCH_VALUES.get(x.device.type, CURVE_BATCH_VALUES["cpu"])
        batch_size = max(1, budget // x.numel())
    # blur_sigma 0 would make the baseline the image itself: a flat curve that measures nothing
    blur_sigma = checks.real(blur_sigma, "blur_sigma", low=0.0, low_open=True, none_ok=True,
                             hint="the blurred baseline's std in pixels; None: W / 16")
    target = check_target(target, n, device=x.device)
    base = _baseline(x, baseline, blur_sigma)
    # position[i, p]: where pixel p of image i comes in the map's order (0 = most important).
    order = ranking.detach().flatten(1).argsort(dim=1, descending=True, stable=True)
    position = torch.empty_like(order)
    position.scatter_(1, order, torch.arange(h * w, device=x.device).expand(n, -1))
    position = position.view(n, 1, h, w)
    fractions = torch.linspace(0, 1, steps + 1, device=x.device)
    counts = (fractions * h * w).round().long()
    scores = torch.empty(n, steps + 1, device=x.device)
    with model_guard(model), torch.no_grad():
        for start in range(0, steps + 1, batch_size):
            ks = range(start, min(start + batch_size, steps + 1))
            chosen = torch.cat([position < counts[k] for k in ks])  # pixels removed / inserted
            xs, bs = x.repeat(len(ks), 1, 1, 1), base.repeat(len(ks), 1, 1, 1)
            batch = torch.where(chosen, bs, xs) if kind == "deletion" else torch.where(chosen, xs, bs)
            logits = model(batch)
            out = logits.softmax(1) if score == "probability" else logits
            picked = out.gather(1, target.repeat(len(ks))[:, None]).view(len(ks), n)
            scores[:, start:start + len(ks)] = picked.T
    auc = torch.trapezoid(scores, fractions, dim=1)
    return Curve(kind, baseline, fractions, scores, auc)


def deletion_curve(model, x, target, attribution, baseline: str = "blur", steps: int = 32,
                   score: str = "probability", batch_size: int | None = None,
                   blur_sigma: float | None = None) -> Curve:
    """Deletion (equation 14 (book/equations.md); Samek et al., 2017; Petsiuk et al., 2018): replace pixels by
    ``baseline`` in the order ``attribution`` ranks them, most important first, and track
    the target's score. A faithful map makes it fall fast: a small area under the curve.

    Parameters
    ----------
    attribution : torch.Tensor
        (N, H, W) ranking, most important = largest (for a registered
        method, :meth:`Method.ranking` of its map; a random map gives the reference).
    baseline : str, default "blur"
        What a removed pixel becomes: ``"blur"`` (the image blurred with a
        Gaussian of std ``blur_sigma``, default W / 16 pixels), ``"mean"`` (the image's
        mean colour) or ``"zero"`` (black).
    steps : int, default 32
        The curve has ``steps + 1`` points, 0 to 100% of the pixels removed.
    score : str, default "probability"
        ``"probability"`` (softmax of the target, bounded: areas compare across
        images) or ``"logit"`` (S_c).
    batch_size : int, optional
        Steps evaluated per forward pass (each holds N images); None: as many as
        :data:`CURVE_BATCH_VALUES` allows for x's device, at least one. It changes
        speed and memory, not the curve (beyond float rounding).
    """
    return _curve("deletion", model, x, target, attribution, baseline, steps, score, batch_size, blur_sigma)


def insertion_curve(model, x, target, attribution, baseline: str = "blur", steps: int = 32,
                    score: str = "probability", batch_size: int | None = None,
                    blur_sigma: float | None = None) -> Curve:
    """Insertion, the mirror of :func:`deletion_curve`: start from the ``baseline`` image
    and put the original pixels back, most important first. A faithful map makes the
    score rise fast: a large area under the curve. Arguments as for :func:`deletion_curve`."""
    return _curve("insertion", model, x, target, attribution, baseline, steps, score, batch_size, blur_sigma)


def random_map(x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """An (N, H, W) map of uniform noise: the order deletion is compared with."""
    checks.tensor(x, "x", dim=4, shape_hint="(N, C, H, W)")
    gen = torch.Generator().manual_seed(checks.seed(seed))
    return torch.rand((x.shape[0],) + tuple(x.shape[2:]), generator=gen).to(x.device)


# --------------------------------------------------------------------------- ground truth
def _check_mask(evidence: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    checks.tensor(evidence, "evidence", shape_hint="(N, H, W)")
    checks.tensor(mask, "mask", shape_hint="(N, H, W)")
    if evidence.shape != mask.shape or evidence.dim() != 3:
        raise ValueError(f"evidence {tuple(evidence.shape)} and mask {tuple(mask.shape)} must both be (N, H, W)")
    checks.finite(evidence, "evidence", cause="check the method's map before scoring it")
    if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("mask must be boolean (or 0/1): LesionSet.ruler_mask, .lesion_mask")
    if (evidence < 0).any():
        raise ValueError("the map has negative values: pass evidence (Method.evidence: |map| for "
                         "sensitivity maps, the positive part for signed relevance)")
    return mask.to(device=evidence.device, dtype=torch.bool)


def relevance_mass(evidence: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Share of the evidence inside ``mask``, (N,): ``sum_mask E / sum E`` (Arras et al.,
    2022, relevance mass accuracy, on the positive part of a signed map). NaN for an
    all-zero map. ``evidence`` (N, H, W) non-negative (:meth:`Method.evidence`); ``mask``
    (N, H, W) bool (``LesionSet.ruler_mask``, ``.lesion_mask``)."""
    mask = _check_mask(evidence, mask)
    total = evidence.flatten(1).sum(1)
    inside = (evidence * mask).flatten(1).sum(1)
    return torch.where(total > 0, inside / total.clamp_min(torch.finfo(evidence.dtype).tiny),
                       torch.full_like(total, float("nan")))


def relevance_rank_accuracy(evidence: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Share of the K highest-evidence pixels that lie in ``mask``, K = the mask's pixel
    count, (N,) (Arras et al., 2022). NaN for an empty mask."""
    mask = _check_mask(evidence, mask)
    flat, m = evidence.flatten(1), mask.flatten(1)
    out = []
    for e, mk in zip(flat, m):
        k = int(mk.sum())
        out.append(mk[e.topk(k).indices].float().mean() if k else torch.tensor(float("nan"), device=e.device))
    return torch.stack(out)


def pointing_game(evidence: torch.Tensor, mask: torch.Tensor, tolerance: int = 0) -> torch.Tensor:
    """Whether each map's maximum falls on ``mask`` (grown by ``tolerance`` pixels), (N,)
    bool (Zhang et al., 2018). Ties for the maximum count as a hit if any tied pixel hits.

    Values within float32 rounding of the maximum (relative 1e-5) count as tied: upsampled
    maps such as rollout's have plateaus whose pixels differ only by rounding, and which
    of them is largest then depends on the thread count and the BLAS, not on the method."""
    mask = _check_mask(evidence, mask)
    tolerance = checks.integer(tolerance, "tolerance", low=0, hint="pixels the mask is grown by")
    if tolerance > 0:
        k = 2 * tolerance + 1
        mask = F.max_pool2d(mask[:, None].float(), k, stride=1, padding=tolerance)[:, 0] > 0
    top = evidence.flatten(1).amax(1).view(-1, 1, 1)
    tied = evidence >= top - 1e-5 * top.abs()
    return (tied & mask).flatten(1).any(1)
