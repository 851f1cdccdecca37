"""The one place where :mod:`chapter6_utils.concepts` hooks into a network.

Kept apart so that it can later be switched to the package's shared hook recorder
(``chapter6_utils._hooks``) without touching the methods.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .._hooks import find_layer

__all__ = ["resolve_layer", "capture_output", "set_channels"]


def resolve_layer(model: nn.Module, layer) -> str:
    """The name of ``layer`` (a module name such as ``'features.10'``, or a submodule of
    ``model``) in ``model``: the package's one lookup (:func:`chapter6_utils._hooks.find_layer`),
    whose error lists the modules with channels (convolutions, their ReLUs, poolings)."""
    return find_layer(model, layer, kinds=(nn.Conv2d, nn.ReLU, nn.MaxPool2d))[0]


def capture_output(module: nn.Module, store: list):
    """Register a forward hook that appends ``module``'s output to ``store`` (registered
    after the LRP rule hooks, it sees the output the rule returned, whose gradient is the
    relevance per unit of activation). Returns the handle."""
    def hook(mod, inputs, output):
        store.append(output)
    return module.register_forward_hook(hook)


def set_channels(module: nn.Module, channels, value=None):
    """Register a forward hook that sets ``channels`` of ``module``'s (N, C, H, W) output
    to zero (``value`` None) or to ``value`` ((len(channels), H, W) or (len(channels),),
    the same for every image: mean ablation). Used on a copy of the model. Returns the
    handle."""
    idx = list(channels)

    def hook(mod, inputs, output):
        if not isinstance(output, torch.Tensor) or output.dim() != 4:
            raise ValueError(f"{type(mod).__name__} outputs no (N, C, H, W) feature map: no channels to set")
        if max(idx) >= output.shape[1]:
            raise ValueError(f"channel {max(idx)} is out of range: the layer has {output.shape[1]} channels")
        out = output.clone()
        if value is None:
            out[:, idx] = 0
        else:
            v = value.to(out.device, out.dtype)
            v = v[:, None, None] if v.dim() == 1 else v
            if v.shape[1:] != out.shape[2:]:
                raise ValueError(f"fill is {tuple(value.shape[1:])} per channel, the layer's feature map is "
                                 f"{tuple(out.shape[2:])}: compute it on images of the same size")
            out[:, idx] = v.expand(len(idx), *out.shape[2:])
        return out
    return module.register_forward_hook(hook)
