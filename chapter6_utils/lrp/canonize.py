"""Canonisation: rewrite a network into layers LRP has rules for, on a light copy.

What the chapter calls bespoke handling, done once here:

* BatchNorm after a convolution or linear layer is merged into it (an exact rewrite of
  an eval-mode network: ``w' = w * s``, ``b' = (b - mean) * s + beta``,
  ``s = gamma / sqrt(var + eps)``), so its affine shift is treated as the bias it is.
* torchvision's residual blocks (``BasicBlock``, ``Bottleneck``) are rebuilt around an
  explicit :class:`Add` module, whose relevance is split between the two branches in
  proportion to what each contributed (the ``norm`` rule of the composite). The
  ``out += identity`` inside torchvision's forward is invisible to module hooks.
* ReLUs are made non-inplace (the relevance pass reads activations after the fact).

Zennit's canonizers do the same rewrites with one difference: after merging, Zennit keeps
the BatchNorm module with unit statistics, so it still computes ``x / sqrt(1 + eps)``, a
shrink of about ``5e-6`` per BatchNorm at the default ``eps = 1e-5``; here the BatchNorm
is replaced by the identity. With ``eps = 0`` the two agree to float precision (this is
how ``tests/test_lrp.py`` compares them on ResNet-18); on ``lesion_resnet`` with its own
``eps`` the maps differ by about 3e-5 relative.

The copy shares every parameter and buffer with the user's model (nothing is copied but
the module objects, about a millisecond for VGG-16), its merged layers get new tensors,
and its hooks are cleared; the user's model is never written to. Anything outside the
supported layers raises :class:`UnsupportedLayerError` naming the module and its type.
Functional operations inside a custom ``forward`` (``x + y``, ``torch.cat``) cannot be
seen by hooks: such models need their own canonisation.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

__all__ = ["Add", "canonize", "UnsupportedLayerError", "SUPPORTED"]


class UnsupportedLayerError(TypeError):
    """LRP has no rule for a layer of the model."""


class Add(nn.Module):
    """``a + b`` as a module, so that the residual sum can carry an LRP rule."""

    def forward(self, a, b):
        return a + b


class _BasicBlock(nn.Module):
    """torchvision's BasicBlock with its sum made explicit (same children, same output)."""

    def __init__(self, block):
        super().__init__()
        self.conv1, self.bn1, self.relu = block.conv1, block.bn1, nn.ReLU()
        self.conv2, self.bn2, self.downsample = block.conv2, block.bn2, block.downsample
        self.add, self.relu_out = Add(), nn.ReLU()

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu_out(self.add(out, identity))


class _Bottleneck(nn.Module):
    """torchvision's Bottleneck with its sum made explicit."""

    def __init__(self, block):
        super().__init__()
        self.conv1, self.bn1, self.relu1 = block.conv1, block.bn1, nn.ReLU()
        self.conv2, self.bn2, self.relu2 = block.conv2, block.bn2, nn.ReLU()
        self.conv3, self.bn3, self.downsample = block.conv3, block.bn3, block.downsample
        self.add, self.relu_out = Add(), nn.ReLU()

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn3(self.conv3(self.relu2(self.bn2(self.conv2(out)))))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu_out(self.add(out, identity))


#: Layers LRP handles after canonisation (rules or pass-through).
SUPPORTED = (nn.Conv2d, nn.Linear, nn.ReLU, nn.Dropout, nn.Flatten, nn.Identity, nn.MaxPool2d,
             nn.AvgPool2d, nn.AdaptiveAvgPool2d, Add)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


def _blocks():
    from torchvision.models.resnet import BasicBlock, Bottleneck

    return {BasicBlock: _BasicBlock, Bottleneck: _Bottleneck}


def _light_copy(model: nn.Module) -> nn.Module:
    # The memo maps every tensor to itself: deepcopy then copies module objects only.
    memo = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    net = copy.deepcopy(model, memo)
    for m in net.modules():
        for key, value in vars(m).items():
            if "hook" in key and isinstance(value, dict):
                value.clear()  # the copy's dicts: the user's hooks stay on the user's model
    return net


def _replace(root, name, new):
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, new)


def _merge(layer, bn):
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1 / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
    bias = layer.bias if layer.bias is not None else torch.zeros_like(bn.running_mean)
    with torch.no_grad():
        layer.weight = nn.Parameter(layer.weight * scale.view(-1, *[1] * (layer.weight.dim() - 1)),
                                    requires_grad=False)
        layer.bias = nn.Parameter((bias - bn.running_mean) * scale + shift, requires_grad=False)


def canonize(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (sharing its tensors) rewritten for LRP; see the module docstring.
    Raises :class:`UnsupportedLayerError` for a layer without a rule. A timm Vision
    Transformer (or any model with transformer parts) goes to :func:`.vit.canonize_vit`."""
    from .vit import canonize_vit, is_transformer

    if is_transformer(model):
        return canonize_vit(model)
    net = _light_copy(model)
    blocks = _blocks()
    for name, m in list(net.named_modules()):
        if type(m) in blocks and name:
            _replace(net, name, blocks[type(m)](m))
    leaves = [(n, m) for n, m in net.named_modules() if not list(m.children())]
    previous = (None, None)
    for name, m in leaves:
        if isinstance(m, _BN):
            if not isinstance(previous[1], (nn.Conv2d, nn.Linear)):
                raise UnsupportedLayerError(
                    f"LRP cannot handle module '{name}' of type {type(m).__name__}: a BatchNorm is merged into the "
                    f"convolution or linear layer right before it, but it follows '{previous[0]}' "
                    f"({type(previous[1]).__name__})")
            _merge(previous[1], m)
            _replace(net, name, nn.Identity())
        elif isinstance(m, nn.ReLU):
            m.inplace = False
        elif not isinstance(m, SUPPORTED):
            raise UnsupportedLayerError(
                f"LRP cannot handle module '{name}' of type {type(m).__name__}: supported are "
                f"{', '.join(t.__name__ for t in SUPPORTED)}, BatchNorm after a linear layer, and torchvision's "
                "ResNet blocks; canonise the model into these first")
        previous = (name, m)
    return net
