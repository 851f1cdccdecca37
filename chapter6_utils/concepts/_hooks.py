"""The one place where :mod:`chapter6_utils.concepts` hooks into a network.

Kept apart so that it can later be switched to the package's shared hook recorder
(``chapter6_utils._hooks``) without touching the methods.
"""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["resolve_layer", "capture_output", "zero_channels"]


def resolve_layer(model: nn.Module, layer) -> str:
    """The name of ``layer`` (a module name such as ``'features.10'``, or a submodule of
    ``model``) in ``model``; a clear error otherwise."""
    named = dict(model.named_modules())
    if isinstance(layer, str):
        if layer == "" or layer not in named:
            convs = [n for n, m in named.items() if isinstance(m, (nn.Conv2d, nn.ReLU, nn.MaxPool2d)) and n]
            raise ValueError(f"layer {layer!r} is not a module of {type(model).__name__}; modules with "
                             f"channels (convolutions, their ReLUs, poolings): {', '.join(convs[:40])}")
        return layer
    if isinstance(layer, nn.Module):
        for n, m in named.items():
            if m is layer and n:
                return n
        raise ValueError(f"layer {type(layer).__name__} is not a submodule of {type(model).__name__}; "
                         "pass one of its modules or its name (e.g. 'features.10')")
    raise TypeError(f"layer must be a module name (e.g. 'features.10') or a submodule, got {type(layer).__name__}")


def capture_output(module: nn.Module, store: list):
    """Register a forward hook that appends ``module``'s output to ``store`` (registered
    after the LRP rule hooks, it sees the output the rule returned, whose gradient is the
    relevance per unit of activation). Returns the handle."""
    def hook(mod, inputs, output):
        store.append(output)
    return module.register_forward_hook(hook)


def zero_channels(module: nn.Module, channels):
    """Register a forward hook that sets ``channels`` of ``module``'s (N, C, H, W) output
    to zero (an ablation; used on a copy of the model). Returns the handle."""
    idx = list(channels)

    def hook(mod, inputs, output):
        if not isinstance(output, torch.Tensor) or output.dim() != 4:
            raise ValueError(f"{type(mod).__name__} outputs no (N, C, H, W) feature map: no channels to zero")
        if max(idx) >= output.shape[1]:
            raise ValueError(f"channel {max(idx)} is out of range: the layer has {output.shape[1]} channels")
        out = output.clone()
        out[:, idx] = 0
        return out
    return module.register_forward_hook(hook)
