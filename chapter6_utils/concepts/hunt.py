"""Finding a shortcut's channels without masks, then checking them with masks and by
intervention (chapter 6's opening story: the classifier that learned rulers).

1. :func:`rank_channels`: rank the channels of some layers by their mean relevance share
   (:func:`~.core.channel_relevance`) for a class over a data set. No mask is used.
2. :func:`mask_share`: only then, score chosen channels with the ground truth: the share
   of each channel's positive conditional relevance (:func:`~.core.concept_relevance`)
   that falls inside a mask (relevance mass, Arras et al., 2022).
3. :func:`ablate_channels` and :func:`intervene`: zero the channels on a copy of the model
   and measure what changes: the malignant log-odds a pasted ruler adds, and accuracy on
   the swapped and unbiased splits.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from .. import _checks as checks
from .._guard import check_input
from ..data import normalize
from ..synthetic import EVAL_SEED, make_lesions, paste_rulers
from . import _hooks
from .core import _channel_list, _channel_relevance, _input_relevance, _layer_forward, _method

__all__ = ["ChannelRanking", "rank_channels", "mask_share", "ablate_channels", "Intervention", "intervene"]


@dataclass
class ChannelRanking:
    """A layer's channels ranked by mean relevance share (strongest first).

    ``share``: (K,) mean over the images of each channel's share ``R_k / sum_j |R_j|``;
    ``sem``: (K,) its standard error; ``order``: channel indices, highest mean share first;
    ``n``: images."""
    layer: str
    share: torch.Tensor
    sem: torch.Tensor
    order: list
    n: int

    def top(self, k: int = 1) -> list:
        """The ``k`` channels with the highest mean share."""
        return self.order[:k]

    def __str__(self):
        head = ", ".join(f"{c} ({self.share[c]:.3f} ± {self.sem[c]:.3f})" for c in self.order[:5])
        return f"{self.layer}: top channels by mean relevance share over {self.n} images: {head}"


@_method
def rank_channels(model, x, target, layers, *, batch_size: int = 128, composite=None,
                  maxpool: str = "winner") -> dict:
    """Rank the channels of each layer in ``layers`` by their mean relevance share for
    ``target`` over the images ``x``, without masks (Achtibat et al., 2023).

    One forward and one backward pass per batch serve every layer (the pixels are not
    reached). Returns ``{layer name: ChannelRanking}``.

    Parameters
    ----------
    model, x, target
        As for :func:`~.core.channel_relevance` (x: (N, C, H, W)
        normalised; target: an int or N class indices).
    layers : str or torch.nn.Module or list
        A layer name or a list of names (feature maps (N, K, h, w)).
    batch_size : int, default 128
        Images per pass.
    """
    if isinstance(layers, (str, nn.Module)):
        layers = [layers]
    layers = list(layers)
    if not layers:
        raise ValueError("layers is empty: name at least one layer, e.g. ['features.10']")
    batch_size = checks.integer(batch_size, "batch_size", low=1, hint="images per pass")
    parts = [[] for _ in layers]
    names = [_hooks.resolve_layer(model, layer) for layer in layers]
    for start in range(0, x.shape[0], batch_size):
        sl = slice(start, start + batch_size)
        for store, r in zip(parts, _channel_relevance(model, x[sl], target[sl], layers, composite, maxpool, True)):
            store.append(r.detach())
    out = {}
    for name, store in zip(names, parts):
        s = torch.cat(store)
        mean = s.mean(0)
        sem = s.std(0) / math.sqrt(len(s)) if len(s) > 1 else torch.full_like(mean, float("nan"))
        out[name] = ChannelRanking(name, mean.cpu(), sem.cpu(), mean.argsort(descending=True).tolist(), len(s))
    return out


@_method
def mask_share(model, x, target, layer, channels, mask, *, composite=None, maxpool: str = "winner"):
    """For each channel in ``channels`` separately: the share of its positive conditional
    relevance (summed over colour) that lies inside ``mask``, per image.

    Parameters
    ----------
    channels : int or list of int
        An int or a list of channel indices of ``layer``, each scored alone.
    mask : torch.Tensor
        (N, H, W) bool, e.g. ``LesionSet.ruler_mask`` (images without anything in
        the mask give NaN-free zeros; choose the images that have one).

    Returns
    -------
    torch.Tensor
        (len(channels), N) float tensor in [0, 1]; NaN where a channel carries no positive
        relevance for an image.
    """
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != (x.shape[0], *x.shape[2:]):
        got = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a bool tensor (N, H, W) = ({x.shape[0]}, {x.shape[2]}, {x.shape[3]}) like "
                         f"LesionSet.ruler_mask, got {got}")
    scores, leaves, (h,), (name,) = _layer_forward(model, x, target, [layer], composite, maxpool)
    _channel_list(channels, h.shape[1], name)  # checked; scored below in the caller's order
    idx = [int(c) for c in (channels.tolist() if isinstance(channels, torch.Tensor) else
                            channels if isinstance(channels, (list, tuple)) else [channels])]
    g_h, = torch.autograd.grad(scores.sum(), h, retain_graph=True)
    m = mask.to(x.device)
    out = []
    for i, c in enumerate(idx):
        keep = torch.zeros(h.shape[1], dtype=h.dtype, device=h.device)
        keep[c] = 1
        grads = torch.autograd.grad(h, leaves, grad_outputs=g_h * keep[None, :, None, None],
                                    retain_graph=i < len(idx) - 1, allow_unused=True)
        pos = _input_relevance(leaves, grads).sum(1).clamp(min=0)
        total = pos.flatten(1).sum(1)
        inside = (pos * m).flatten(1).sum(1)
        out.append(torch.where(total > 0, inside / total.clamp(min=torch.finfo(total.dtype).tiny),
                               torch.full_like(total, float("nan"))))
    return torch.stack(out)


def ablate_channels(model: nn.Module, layer, channels) -> nn.Module:
    """A copy of ``model`` (eval mode) whose ``layer`` outputs zeros on ``channels``
    (a forward hook on the copy; the model itself is not touched)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    name = _hooks.resolve_layer(model, layer)
    module = model.get_submodule(name)
    # a convolution says how many channels it has; a ReLU or pooling is checked at its first call
    idx = _channel_list(channels, getattr(module, "out_channels", 2 ** 62), name)
    copy_ = copy.deepcopy(model).eval()
    _hooks.zero_channels(copy_.get_submodule(name), idx)
    return copy_


def _log_odds(model, images):
    z = model(normalize(images))
    return z[:, 1] - z[:, 0]


@dataclass
class Intervention:
    """What zeroing channels changed. Per quantity a pair (before, after) and the paired
    standard error of the change: ``gain``: the mean malignant log-odds ``z_1 - z_0``
    added by pasting a ruler onto ruler-free images; ``swapped``, ``unbiased``:
    accuracies on those splits. ``n``: images per measurement."""
    gain: tuple
    gain_se: float
    swapped: tuple
    swapped_se: float
    unbiased: tuple
    unbiased_se: float
    n: dict

    def __str__(self):
        g, s, u = self.gain, self.swapped, self.unbiased
        return (f"ruler's log-odds gain {g[0]:.2f} -> {g[1]:.2f} (ratio {g[1] / g[0]:.2f}); "
                f"swapped accuracy {s[0]:.3f} -> {s[1]:.3f} (± {self.swapped_se:.3f}); "
                f"unbiased accuracy {u[0]:.3f} -> {u[1]:.3f} (± {self.unbiased_se:.3f})")


def _paired_se(a: torch.Tensor, b: torch.Tensor) -> float:
    d = (b - a).double()
    return float(d.std() / math.sqrt(len(d))) if len(d) > 1 else float("nan")


@torch.no_grad()
def intervene(model: nn.Module, layer, channels, *, n: int = 1000, seed: int = EVAL_SEED,
              unbiased=None, swapped=None) -> Intervention:
    """Zero ``channels`` of ``layer`` on a copy (:func:`ablate_channels`) and measure, on
    fresh lesions (``seed``, ``n`` per split), the ruler's log-odds gain (rulers of the
    unbiased split's ruler images pasted onto its ruler-free ones, :func:`paste_rulers`)
    and the accuracy on the swapped and unbiased splits, before and after.

    ``unbiased``, ``swapped``: LesionSets to use instead of fresh ones (to compare several
    interventions on the same images without generating them again)."""
    n = checks.integer(n, "n", low=4, hint="lesions per split")
    ablated = ablate_channels(model, layer, channels)
    p = next(model.parameters())
    unbiased = make_lesions(n, "unbiased", seed=seed) if unbiased is None else unbiased
    swapped = make_lesions(n, "swapped", seed=seed + 1) if swapped is None else swapped
    for name, d in (("unbiased", unbiased), ("swapped", swapped)):
        if not hasattr(d, "images") or not hasattr(d, "has_ruler"):
            raise TypeError(f"{name} must be a LesionSet (synthetic.make_lesions), got {type(d).__name__}")
    free, donor = unbiased.select(ruler=False), unbiased.select(ruler=True)
    k = min(len(free), len(donor))
    free, donor = free[:k], donor[:k]
    pasted = paste_rulers(free, donor)
    was = model.training
    model.eval()
    try:
        out = {}
        for tag, net in (("before", model), ("after", ablated)):
            check_input(net, normalize(free.images[:1]).to(p.device, p.dtype))
            to = lambda t: t.to(p.device, p.dtype)  # noqa: E731
            gain = (_log_odds(net, to(pasted.images)) - _log_odds(net, to(free.images))).cpu()
            right = {name: (net(normalize(to(d.images))).argmax(1).cpu() == d.labels).float()
                     for name, d in (("swapped", swapped), ("unbiased", unbiased))}
            out[tag] = (gain, right)
    finally:
        model.train(was)
    (g0, r0), (g1, r1) = out["before"], out["after"]
    return Intervention(
        gain=(float(g0.mean()), float(g1.mean())), gain_se=_paired_se(g0, g1),
        swapped=(float(r0["swapped"].mean()), float(r1["swapped"].mean())),
        swapped_se=_paired_se(r0["swapped"], r1["swapped"]),
        unbiased=(float(r0["unbiased"].mean()), float(r1["unbiased"].mean())),
        unbiased_se=_paired_se(r0["unbiased"], r1["unbiased"]),
        n={"pasted": k, "swapped": len(swapped), "unbiased": len(unbiased)})
