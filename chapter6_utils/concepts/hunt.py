"""Finding a shortcut's channels without masks, then checking them with masks and by
intervention (chapter 6's opening story: the classifier that learned rulers).

1. :func:`rank_channels`: rank the channels of some layers by their mean relevance share
   (:func:`~.core.channel_relevance`) for a class over a data set. No mask is used.
   :func:`contrast_channels`: rank them instead by how much larger their mean share is on
   a suspicious group of images (e.g. SpRAy's edge clusters) than on the rest; no mask
   either.
2. :func:`mask_share`: only then, score chosen channels with the ground truth: the share
   of each channel's positive conditional relevance (:func:`~.core.concept_relevance`)
   that falls inside a mask (relevance mass, Arras et al., 2022).
3. :func:`ablate_channels` and :func:`intervene`: zero the channels on a copy of the model
   (or set them to their mean activation, :func:`mean_activation`) and measure what
   changes: the malignant log-odds a pasted ruler adds, and accuracy on the swapped and
   unbiased splits; :func:`intervene_sweep` does it for the first k channels of a
   ranking, for several k.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from .. import _checks as checks
from .._guard import check_input, model_guard
from ..data import normalize
from ..synthetic import EVAL_SEED, make_lesions, paste_rulers
from . import _hooks
from .core import _channel_list, _channel_relevance, _input_relevance, _layer_forward, _method

__all__ = ["ChannelRanking", "rank_channels", "contrast_channels", "mask_share", "mean_activation",
           "ablate_channels", "Intervention", "intervene",
           "intervene_sweep"]


@dataclass
class ChannelRanking:
    """A layer's channels ranked by a score (strongest first).

    ``share``: (K,) each channel's score: for :func:`rank_channels` the mean over the
    images of its share ``R_k / sum_j |R_j|``; for :func:`contrast_channels` the mean
    share inside the group less the mean share outside it (or that difference over its
    standard error); ``sem``: (K,) the standard error of ``share`` (NaN for a
    standardised score); ``order``: channel indices, highest score first; ``n``: images;
    ``measure``: what ``share`` is, in words."""
    layer: str
    share: torch.Tensor
    sem: torch.Tensor
    order: list
    n: int
    measure: str = "mean relevance share"

    def top(self, k: int = 1) -> list:
        """The ``k`` channels with the highest score."""
        return self.order[:k]

    def __str__(self):
        def one(c):
            return f"{c} ({self.share[c]:.3f})" if math.isnan(self.sem[c]) else \
                f"{c} ({self.share[c]:.3f} ± {self.sem[c]:.3f})"
        head = ", ".join(one(c) for c in self.order[:5])
        return f"{self.layer}: top channels by {self.measure} over {self.n} images: {head}"


def _shares(model, x, target, layers, batch_size, composite, maxpool):
    """Per-image channel shares (:func:`~.core.channel_relevance`) of every layer in
    ``layers``, one forward and one backward pass per batch (model already guarded).
    Returns (layer names, list of (N, K_l) tensors on the CPU)."""
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
            store.append(r.detach().cpu())
    return names, [torch.cat(store) for store in parts]


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
    names, shares = _shares(model, x, target, layers, batch_size, composite, maxpool)
    out = {}
    for name, s in zip(names, shares):
        mean = s.mean(0)
        sem = s.std(0) / math.sqrt(len(s)) if len(s) > 1 else torch.full_like(mean, float("nan"))
        out[name] = ChannelRanking(name, mean, sem, mean.argsort(descending=True).tolist(), len(s))
    return out


def _group(group, n: int) -> torch.Tensor:
    """``group`` as a (n,) bool CPU tensor with members on both sides, or a clear error."""
    if isinstance(group, torch.Tensor):
        g = group.detach().cpu()
    else:
        try:
            g = torch.as_tensor(group)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"group must be a bool tensor with one entry per image, "
                            f"got {type(group).__name__}") from None
    if g.dtype != torch.bool:
        raise TypeError(f"group must be a bool tensor (True: the image is in the suspicious group), got dtype "
                        f"{g.dtype}; e.g. in_edge = edge[spray.labels], or labels == j for cluster j")
    if g.dim() != 1 or g.shape[0] != n:
        raise ValueError(f"group must have one entry per image, shape ({n},), got {tuple(g.shape)}")
    inside = int(g.sum())
    if inside == 0:
        raise ValueError("group is empty (no image is True): a contrast needs images in the group")
    if inside == n:
        raise ValueError("group holds every image: a contrast needs images outside the group as well")
    return g


@_method
def contrast_channels(model, x, target, layers, group, *, statistic: str = "difference", batch_size: int = 128,
                      composite=None, maxpool: str = "winner") -> dict:
    """Rank the channels of each layer in ``layers`` by how much more of the relevance for
    ``target`` they carry on a group of images than on the rest, without masks.

    The per-image share of channel ``k`` is ``s_k = R_k / sum_j |R_j|`` (the relevance at
    the layer summed over positions, :func:`~.core.channel_relevance`; Achtibat et al.,
    2023). A plain ranking (:func:`rank_channels`) averages ``s_k`` over all images and so
    favours what matters on every image; here the score is

    ``c_k = mean_{group} s_k - mean_{rest} s_k``

    which lifts the channels that matter where the group differs: with ``group`` from
    SpRAy's suspicious clusters (Lapuschkin et al., 2019), the features of the strategy
    the clusters isolate.

    Parameters
    ----------
    model, x, target
        As for :func:`~.core.channel_relevance` (x: (N, C, H, W) normalised; target: an
        int or N class indices).
    layers : str or torch.nn.Module or list
        A layer name or a list of names (feature maps (N, K, h, w)); one pass serves all.
    group : torch.Tensor
        (N,) bool: True for the images of the group (at least one True and one False).
    statistic : {"difference", "welch"}, default "difference"
        "difference": ``c_k`` itself, with its standard error
        ``sqrt(var_group / n_group + var_rest / n_rest)`` in ``sem``; "welch": ``c_k``
        divided by that standard error (Welch's t), which prefers channels whose shift
        is consistent over ones that move a lot on a few images (``sem`` is then NaN).
    batch_size : int, default 128
        Images per pass.
    composite, maxpool
        As in :func:`chapter6_utils.lrp.lrp`.

    Returns
    -------
    dict
        ``{layer name: ChannelRanking}`` with the score in ``share``, highest first in
        ``order``.

    Raises
    ------
    TypeError
        ``group`` not bool.
    ValueError
        ``group`` of the wrong length, empty, or holding every image; an unknown
        ``statistic``; the errors of :func:`~.core.channel_relevance`.
    """
    if statistic not in ("difference", "welch"):
        raise ValueError(f"statistic must be 'difference' or 'welch', got {statistic!r}")
    g = _group(group, x.shape[0])
    names, shares = _shares(model, x, target, layers, batch_size, composite, maxpool)
    out = {}
    for name, s in zip(names, shares):
        a, b = s[g], s[~g]
        diff = a.mean(0) - b.mean(0)
        var = sum(t.var(0) / len(t) if len(t) > 1 else torch.full_like(diff, float("nan")) for t in (a, b))
        se = var.sqrt()
        if statistic == "welch":
            if bool(torch.isnan(se).any()):
                raise ValueError("statistic='welch' needs at least two images inside and two outside the group")
            score = diff / se.clamp(min=torch.finfo(se.dtype).tiny)
            se = torch.full_like(diff, float("nan"))
            measure = f"Welch t of the share, {len(a)} in the group vs {len(b)} outside"
        else:
            score = diff
            measure = f"mean share in the group ({len(a)}) minus outside ({len(b)})"
        out[name] = ChannelRanking(name, score, se, score.argsort(descending=True).tolist(), len(s), measure)
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


@torch.no_grad()
def mean_activation(model: nn.Module, x: torch.Tensor, layer, *, batch_size: int = 256) -> torch.Tensor:
    """The mean output of ``layer`` over the images ``x``, position by position: a (K, h, w)
    tensor, the value :func:`ablate_channels` can put in place of a channel (mean
    ablation) instead of zero. Use images without the feature under test (e.g. the
    ruler-free images of the training distribution), so the mean carries none of it.

    Parameters
    ----------
    x : torch.Tensor
        (N, C, H, W) normalised input.
    layer : str or torch.nn.Module
        A layer whose output is a feature map (N, K, h, w).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_input(model, x)
    batch_size = checks.integer(batch_size, "batch_size", low=1, hint="images per pass")
    name = _hooks.resolve_layer(model, layer)
    store = []
    with model_guard(model):
        model.eval()
        handle = _hooks.capture_output(model.get_submodule(name), store)
        try:
            for start in range(0, x.shape[0], batch_size):
                model(x[start:start + batch_size])
        finally:
            handle.remove()
    if not store or not isinstance(store[0], torch.Tensor) or store[0].dim() != 4:
        raise ValueError(f"layer '{name}' outputs no (N, K, h, w) feature map: it has no channels to average")
    total = sum(h.double().sum(0) for h in store)
    return (total / x.shape[0]).to(store[0].dtype)


def ablate_channels(model: nn.Module, layer, channels, *, fill=None) -> nn.Module:
    """A copy of ``model`` (eval mode) whose ``layer`` outputs zeros on ``channels``, or
    their values in ``fill`` (a forward hook on the copy; the model itself is not touched).

    Parameters
    ----------
    fill : torch.Tensor, optional
        None: zero the channels. A (K, h, w) or (K,) tensor over all K channels of the
        layer (e.g. :func:`mean_activation`): each chosen channel is set to its entry,
        the same for every image (mean ablation).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    name = _hooks.resolve_layer(model, layer)
    module = model.get_submodule(name)
    # a convolution says how many channels it has; a ReLU or pooling is checked at its first call
    k = getattr(module, "out_channels", None)
    if fill is not None:
        if not isinstance(fill, torch.Tensor) or not fill.is_floating_point() or fill.dim() not in (1, 3):
            got = f"{fill.dtype} {tuple(fill.shape)}" if isinstance(fill, torch.Tensor) else type(fill).__name__
            raise ValueError(f"fill must be a float tensor (K, h, w) or (K,) over the layer's channels, e.g. "
                             f"concepts.mean_activation(model, x, '{name}'), got {got}")
        if k is not None and fill.shape[0] != k:
            raise ValueError(f"fill has {fill.shape[0]} channels, layer '{name}' has {k}")
        if not bool(torch.isfinite(fill).all()):
            raise ValueError("fill has non-finite values (NaN or inf); recompute the mean activation")
        k = fill.shape[0]
    idx = _channel_list(channels, k if k is not None else 2 ** 62, name)
    copy_ = copy.deepcopy(model).eval()
    _hooks.set_channels(copy_.get_submodule(name), idx, None if fill is None else fill[idx].detach().clone())
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
              unbiased=None, swapped=None, fill=None) -> Intervention:
    """Zero ``channels`` of ``layer`` on a copy (:func:`ablate_channels`) and measure, on
    fresh lesions (``seed``, ``n`` per split), the ruler's log-odds gain (rulers of the
    unbiased split's ruler images pasted onto its ruler-free ones, :func:`paste_rulers`)
    and the accuracy on the swapped and unbiased splits, before and after.

    ``unbiased``, ``swapped``: LesionSets to use instead of fresh ones (to compare several
    interventions on the same images without generating them again). ``fill``: as in
    :func:`ablate_channels` (None: zero; :func:`mean_activation`: mean ablation)."""
    return _interventions(model, layer, [channels], n, seed, unbiased, swapped, fill)[0]


@torch.no_grad()
def intervene_sweep(model: nn.Module, layer, order, ks=(1, 2, 4, 8), *, n: int = 1000, seed: int = EVAL_SEED,
                    unbiased=None, swapped=None, fill=None) -> dict:
    """:func:`intervene` for the first ``k`` channels of ``order`` (a ranking, e.g.
    ``ChannelRanking.order``), for each ``k`` in ``ks``, on the same images; the
    unablated model is measured once. Returns ``{k: Intervention}``.

    Parameters
    ----------
    order : sequence of int
        Channel indices of ``layer``, the most suspect first.
    ks : sequence of int
        How many channels to switch off in each trial, each in [1, len(order)].
    n, seed, unbiased, swapped, fill
        As in :func:`intervene`.
    """
    order = [int(c) for c in (order.tolist() if isinstance(order, torch.Tensor) else order)]
    ks = [checks.integer(k, "k", low=1, hint="channels to switch off") for k in ks]
    if not ks:
        raise ValueError("ks is empty: give at least one number of channels, e.g. (1, 2, 4, 8)")
    if max(ks) > len(order):
        raise ValueError(f"k = {max(ks)} exceeds the {len(order)} channels in order; use k <= {len(order)}")
    if len(set(order)) != len(order):
        raise ValueError("order lists a channel twice: give each channel once, the most suspect first")
    results = _interventions(model, layer, [order[:k] for k in ks], n, seed, unbiased, swapped, fill)
    return dict(zip(ks, results))


def _interventions(model, layer, channel_sets, n, seed, unbiased, swapped, fill):
    """One Intervention per set of channels, the unablated model measured once."""
    n = checks.integer(n, "n", low=4, hint="lesions per split")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    ablated = [ablate_channels(model, layer, channels, fill=fill) for channels in channel_sets]
    p = next(model.parameters())
    unbiased = make_lesions(n, "unbiased", seed=seed) if unbiased is None else unbiased
    swapped = make_lesions(n, "swapped", seed=seed + 1) if swapped is None else swapped
    for name, d in (("unbiased", unbiased), ("swapped", swapped)):
        if not hasattr(d, "images") or not hasattr(d, "has_ruler"):
            raise TypeError(f"{name} must be a LesionSet (synthetic.make_lesions), got {type(d).__name__}")
    free_at = torch.nonzero(~unbiased.has_ruler.bool()).flatten()
    free, donor = unbiased[free_at], unbiased.select(ruler=True)
    k = min(len(free), len(donor))
    free_at, free, donor = free_at[:k], free[:k], donor[:k]
    pasted = paste_rulers(free, donor)
    to = lambda t: t.to(p.device, p.dtype)  # noqa: E731

    def measure(net):
        check_input(net, normalize(free.images[:1]).to(p.device, p.dtype))
        splits = (("swapped", swapped), ("unbiased", unbiased))
        z = {name: net(normalize(to(d.images))).cpu() for name, d in splits}
        right = {name: (z[name].argmax(1) == d.labels).float() for name, d in splits}
        # the ruler-free images are among the unbiased ones: their log-odds come from that pass
        z_free = z["unbiased"][free_at]
        gain = _log_odds(net, to(pasted.images)).cpu() - (z_free[:, 1] - z_free[:, 0])
        return gain, right

    with model_guard(model):  # eval mode, the per-model lock, and the model left as found
        g0, r0 = measure(model)
    out = []
    for net in ablated:
        g1, r1 = measure(net)
        out.append(Intervention(
            gain=(float(g0.mean()), float(g1.mean())), gain_se=_paired_se(g0, g1),
            swapped=(float(r0["swapped"].mean()), float(r1["swapped"].mean())),
            swapped_se=_paired_se(r0["swapped"], r1["swapped"]),
            unbiased=(float(r0["unbiased"].mean()), float(r1["unbiased"].mean())),
            unbiased_se=_paired_se(r0["unbiased"], r1["unbiased"]),
            n={"pasted": k, "swapped": len(swapped), "unbiased": len(unbiased)}))
    return out
