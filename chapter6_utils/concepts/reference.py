"""Reference images of a channel: the image patches where it is most active (ActMax) or
carries most relevance for a class (RelMax), cropped to the receptive field of the
strongest position (Achtibat et al., 2023, section on reference sampling).

ActMax shows what drives a channel; RelMax shows what it is *used for* when the model
decides the class, which can differ: a channel may fire hardest on lesion borders and
still earn its relevance for "malignant" on ruler ticks.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import _checks as checks
from ..deconvnet.projection import receptive_field
from .core import _channel_list, _layer_forward, _method

__all__ = ["ReferenceImages", "reference_images"]


@dataclass
class ReferenceImages:
    """What :func:`reference_images` returns, strongest first (k entries each).

    ``mode``: ``"activation"`` or ``"relevance"``; ``index``: (k,) image indices;
    ``value``: (k,) the maximum activation, or relevance, of the channel in that image;
    ``position``: (k, 2) its row and column in the layer's output; ``box``: (top, left,
    bottom, right) input boxes (bottom/right exclusive); ``patch``: the input crops
    (C, h, w), normalised like the input."""
    layer: str
    channel: int
    mode: str
    index: torch.Tensor
    value: torch.Tensor
    position: torch.Tensor
    box: list
    patch: list


@_method
def reference_images(model, x, target, layer, channel, *, k: int = 9, mode: str = "relevance",
                     batch_size: int = 128, composite=None, maxpool: str = "winner") -> ReferenceImages:
    """The ``k`` images (one patch each) where ``channel`` of ``layer`` is most active
    (``mode="activation"``, ActMax) or carries the most relevance for ``target``
    (``mode="relevance"``, RelMax: the LRP relevance at the layer's output, activation
    times its relevance per unit, at the best position), cropped to the receptive field.

    Parameters
    ----------
    model, x, target, layer
        As for :func:`~.core.concept_relevance` (x: the pool of
        candidate images, (N, C, H, W) normalised).
    channel : int
        One channel index of ``layer``.
    k : int, default 9
        How many (at most N).
    batch_size : int, default 128
        Images per pass.
    """
    if mode not in ("activation", "relevance"):
        raise ValueError(f"mode must be 'activation' (ActMax) or 'relevance' (RelMax), got {mode!r}")
    k = min(checks.integer(k, "k", low=1, hint="how many reference images"), x.shape[0])
    batch_size = checks.integer(batch_size, "batch_size", low=1, hint="images per pass")
    values, positions, name = [], [], None
    for start in range(0, x.shape[0], batch_size):
        sl = slice(start, start + batch_size)
        scores, _, (h,), (name,) = _layer_forward(model, x[sl], target[sl], [layer], composite, maxpool)
        c = _channel_list(channel, h.shape[1], name)
        if len(c) != 1:
            raise ValueError(f"channel must be one index, got {channel!r}")
        c = c[0]
        if mode == "relevance":
            g, = torch.autograd.grad(scores.sum(), h)
            m = (h.detach() * g)[:, c]
        else:
            m = h.detach()[:, c]
        v, p = m.flatten(1).max(1)
        values.append(v)
        positions.append(p)
    v, p = torch.cat(values), torch.cat(positions)
    width = h.shape[-1]
    value, index = v.topk(k)
    position = torch.stack([p[index] // width, p[index] % width], dim=1)
    boxes = [receptive_field(model, x[i:i + 1], name, int(r), int(col))
             for i, (r, col) in zip(index.tolist(), position.tolist())]
    patch = [x[i, :, t:b, lft:rt].detach() for i, (t, lft, b, rt) in zip(index.tolist(), boxes)]
    return ReferenceImages(name, c, mode, index.cpu(), value.cpu(), position.cpu(), boxes, patch)
