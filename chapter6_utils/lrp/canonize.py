"""Canonisation: rewrite a network into layers LRP has rules for, on a light copy, and
prove on the actual input that the copy still computes what the model computes.

What the chapter calls bespoke handling, done once here:

* Each BatchNorm is merged into the layer whose output it actually normalises in the
  forward pass (read off a recorded forward pass on the input, never off the order in
  which modules are registered): after a convolution or linear layer it is merged into
  it, ``w' = w * s``, ``b' = (b - mean) * s + beta``, ``s = gamma / sqrt(var + eps)``,
  so its affine shift is treated as the bias it is. A BatchNorm that reads the model's
  input or a pooling output and whose only reader is an unpadded convolution or a linear
  layer is merged forward into that reader (``w' = w * s`` over input channels, ``b' = b +
  w t``, ``t = beta - mean * s``: exact, since no zero padding meets the shift).
* Any other BatchNorm has no exact merge and raises :class:`UnsupportedLayerError`
  naming it and what it reads: after a residual sum or a ReLU (pre-activation ResNets),
  after a padded convolution's input, a BatchNorm whose input or merge partner is also
  read elsewhere, a module called twice, a BatchNorm using batch statistics
  (``track_running_stats=False``). LRP would otherwise explain another network.
* torchvision's residual blocks (``BasicBlock``, ``Bottleneck``) are rebuilt around an
  explicit :class:`Add` module, whose relevance is split between the two branches in
  proportion to what each contributed (the ``norm`` rule of the composite). The
  ``out += identity`` inside torchvision's forward is invisible to module hooks.
* ReLUs are made non-inplace (the relevance pass reads activations after the fact).

The proof: the canonised copy and the model run on the same input and their outputs must
agree, per image, to ``sqrt(eps)`` of the dtype relative to the largest output (3.5e-4
in float32, 1.5e-8 in float64); otherwise :class:`UnsupportedLayerError` names the first
module (in forward order) whose output differs between the two. :func:`canonize` runs
both passes; :func:`~chapter6_utils.lrp.lrp` compares its own relevance forward pass
(which computes the copy's values bit for bit) with one pass of the model.

Zennit's canonizers do the same rewrites with one difference: after merging, Zennit keeps
the BatchNorm module with unit statistics, so it still computes ``x / sqrt(1 + eps)``, a
shrink of about ``5e-6`` per BatchNorm at the default ``eps = 1e-5``; here the BatchNorm
is replaced by the identity. With ``eps = 0`` the two agree to float precision (this is
how ``tests/test_lrp.py`` compares them on ResNet-18); on ``lesion_resnet`` with its own
``eps`` the maps differ by about 3e-5 relative.

The copy shares every parameter and buffer with the user's model (nothing is copied but
the module objects, about a millisecond for VGG-16), its merged layers get new tensors,
and its hooks are cleared; the user's model is never written to. A module the forward
pass calls that is outside the supported layers (or a subclass of one with its own
``forward``, such as a weight-standardised convolution) raises
:class:`UnsupportedLayerError` naming the module and its type; modules the forward never
calls are ignored. Functional operations inside a custom ``forward`` cannot be seen by
hooks: a sum or a concatenation passes relevance in proportion (LRP-0), which is sound;
a product of two activations (gating, attention) is not, and needs its own rule.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn

from .._guard import guarded
from ._dataflow import Flow, outputs, parting, tolerance

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
_WEIGHTED = (nn.Conv2d, nn.Linear)


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


def _describe(name, m):
    return f"'{name}' ({type(m).__name__})"


def _count_calls(flow):
    counts = {}
    for c in flow.calls:
        counts[c.name] = counts.get(c.name, 0) + 1
    return counts


def _plain(m) -> bool:
    """A supported layer whose forward is the library's (a Conv2d subclass with its own
    forward, as a weight-standardised convolution, computes something the rules do not see)."""
    base = next((t for t in SUPPORTED + _BN if isinstance(m, t)), None)
    return base is not None and type(m).forward is base.forward


def _unpadded(m) -> bool:
    if isinstance(m, nn.Linear):
        return True
    return m.padding == "valid" or all(p == 0 for p in ((m.padding,) * 2 if isinstance(m.padding, int) else m.padding))


# --------------------------------------------------------------------------- merging
def _affine(bn):
    """``(s, t)`` with ``bn(x) = s x + t`` per channel, eval mode."""
    scale = 1 / torch.sqrt(bn.running_var + bn.eps)
    if bn.affine:
        scale = bn.weight * scale
    shift = -bn.running_mean * scale + (bn.bias if bn.affine else 0)
    return scale.detach(), shift.detach()


def _merge_into_producer(layer, bn):
    s, t = _affine(bn)
    bias = layer.bias.detach() if layer.bias is not None else torch.zeros_like(t)
    layer.weight = nn.Parameter(layer.weight.detach() * s.view(-1, *[1] * (layer.weight.dim() - 1)),
                                requires_grad=False)
    layer.bias = nn.Parameter(bias * s + t, requires_grad=False)


def _merge_into_reader(layer, bn):
    s, t = _affine(bn)
    w = layer.weight.detach()
    if isinstance(layer, nn.Conv2d):
        out, per_group = w.shape[:2]
        group = torch.arange(out, device=w.device) // (out // layer.groups)
        channel = group[:, None] * per_group + torch.arange(per_group, device=w.device)  # (out, in/groups)
        s_w, t_w = s[channel][..., None, None], t[channel][..., None, None]
        extra = (w * t_w).sum((1, 2, 3))
    else:
        s_w, t_w = s[None, :], t[None, :]
        extra = (w * t_w).sum(1)
    bias = layer.bias.detach() if layer.bias is not None else torch.zeros_like(extra)
    layer.weight = nn.Parameter(w * s_w, requires_grad=False)
    layer.bias = nn.Parameter(bias + extra, requires_grad=False)


def _plan_merges(flow, counts):
    """``[(bn name, partner name, "producer" | "reader")]``, or UnsupportedLayerError naming
    the first BatchNorm (in forward order) that has no exact merge."""
    merges, partners = [], set()
    for index, c in enumerate(flow.calls):
        if not isinstance(c.module, _BN):
            continue
        bn = _describe(c.name, c.module)

        def refuse(why):
            raise UnsupportedLayerError(
                f"LRP cannot merge BatchNorm {bn}: {why}. LRP merges a BatchNorm into the convolution or linear "  # noqa: B023 (called in this iteration)
                "layer whose output it normalises (or forward into an unpadded convolution or linear layer that "
                "alone reads it), so that its shift becomes that layer's bias; without an exact merge LRP would "
                "explain another network. Fold it into a neighbouring layer yourself, or use a method without "
                "rules per layer (saliency.gradient_x_input, deconvnet.guided_backprop)")

        if not c.module.track_running_stats or c.module.running_var is None:
            refuse("it normalises with the statistics of each batch (track_running_stats=False), so it is no "
                   "fixed affine map")
        if counts[c.name] > 1:
            refuse(f"the forward pass calls it {counts[c.name]} times")
        src = c.sources[0] if c.sources else None
        producer = flow.calls[src] if src is not None and src >= 0 else None
        if producer is not None and isinstance(producer.module, _WEIGHTED) and _plain(producer.module):
            if counts[producer.name] > 1 or producer.name in partners:
                refuse(f"it normalises the output of {_describe(producer.name, producer.module)}, which the "
                       "forward pass uses more than once")
            if len(producer.readers) > 1:
                others = ", ".join(f"'{flow.calls[r].name}'" for r in producer.readers if flow.calls[r] is not c)
                refuse(f"it normalises the output of {_describe(producer.name, producer.module)}, which "
                       f"{others} also read(s): merging would change their input too")
            merges.append((c.name, producer.name, "producer"))
            partners.add(producer.name)
            continue
        what = ("the model's input" if src == -1 else
                f"the output of {_describe(producer.name, producer.module)}" if producer is not None else
                "a tensor no module produced (a functional operation in a forward, such as x + y or F.relu, "
                "or an in-place change)")
        readers = [flow.calls[r] for r in c.readers]
        reader = readers[0] if len(readers) == 1 else None
        if (reader is not None and isinstance(reader.module, _WEIGHTED) and _plain(reader.module)
                and _unpadded(reader.module) and counts[reader.name] == 1 and reader.name not in partners
                and flow.output_source != index):
            merges.append((c.name, reader.name, "reader"))
            partners.add(reader.name)
            continue
        if reader is not None and isinstance(reader.module, _WEIGHTED) and not _unpadded(reader.module):
            refuse(f"it reads {what}, and the convolution reading it, {_describe(reader.name, reader.module)}, "
                   "pads with zeros, where the BatchNorm's shift would be missing after a merge")
        if producer is not None and isinstance(producer.module, (Add, nn.ReLU)):
            kind = "a residual sum" if isinstance(producer.module, Add) else "a ReLU"
            refuse(f"it reads {what}: a BatchNorm after {kind} (a pre-activation block) is not preceded by a "
                   "convolution or linear layer to merge into")
        refuse(f"it reads {what}, and its output goes to "
               f"{', '.join(_describe(r.name, r.module) for r in readers) or 'no module'}")
    return merges


@dataclass
class Plan:
    """What :func:`canonize` did and what the copy must reproduce (used by ``lrp``)."""

    order: dict      # leaf name -> index of its first call in the model's forward pass
    changed: set     # layers whose own output the merges changed (by design)
    reference: torch.Tensor  # the model's output on the input

    def verify(self, model, net, x, output) -> None:
        """Raise :class:`UnsupportedLayerError` unless ``output`` (the canonised copy's
        output on ``x``) agrees with :attr:`reference` to the dtype's tolerance, naming
        the first module where the two networks part."""
        ref = self.reference
        dtype = ref.dtype if isinstance(ref, torch.Tensor) and ref.is_floating_point() else torch.float32
        err, tol = parting(output, ref), tolerance(dtype)
        if err <= tol:
            return
        mine, theirs = outputs(net, x.detach().clone()), outputs(model, x.detach().clone())
        where = "their outputs"
        for name in sorted(mine, key=lambda n: self.order.get(n, len(self.order))):
            if name in self.changed or name not in theirs or len(mine[name]) != len(theirs[name]):
                continue
            if any(parting(a, b) > tol for a, b in zip(mine[name], theirs[name])):
                m = net.get_submodule(name)
                where = f"module {_describe(name, m)}"
                break
        raise UnsupportedLayerError(
            f"canonising {type(model).__name__} for LRP changed what it computes: on this input the canonised "
            f"copy's output differs from the model's by {err:.3g} relative (tolerance {tol:.2g} for {dtype}); "
            f"the two networks part at {where}. LRP would explain another network. Likely causes: an "
            "operation in a custom forward that module hooks cannot see acting on a merged layer's output, a "
            "forward hook on the model, or a module subclass computing more than its type says")


def _canonize(model: nn.Module, x: torch.Tensor):
    """The canonised copy and its :class:`Plan`; the model must be in eval mode and guarded.
    A timm Vision Transformer (or any model with transformer parts) is rewritten by
    :func:`.vit.canonize_vit`; its copy is proven on ``x`` the same way (output against
    output), with no BatchNorm to merge."""
    from .vit import canonize_vit, is_transformer

    if is_transformer(model):
        net = canonize_vit(model)
        with torch.no_grad():
            reference = model(x.detach().clone())
        return net, Plan({}, set(), reference)
    net = _light_copy(model)
    blocks = _blocks()
    for name, m in list(net.named_modules()):
        if type(m) in blocks and name:
            _replace(net, name, blocks[type(m)](m))
    flow = Flow()
    reference = flow.run(model, x.detach().clone())
    counts = _count_calls(flow)
    for c in flow.calls:
        if not _plain(c.module):
            kind = "a subclass with its own forward of a supported" if isinstance(c.module, SUPPORTED + _BN) \
                else "not a supported"
            raise UnsupportedLayerError(
                f"LRP cannot handle module {_describe(c.name, c.module)}: it is {kind} layer; supported are "
                f"{', '.join(t.__name__ for t in SUPPORTED)}, BatchNorm merged into an adjacent linear layer, and "
                "torchvision's ResNet blocks; canonise the model into these first")
    merges = _plan_merges(flow, counts)
    changed = set()
    with torch.no_grad():
        for bn_name, partner, side in merges:
            layer, bn = net.get_submodule(partner), net.get_submodule(bn_name)
            (_merge_into_producer if side == "producer" else _merge_into_reader)(layer, bn)
            _replace(net, bn_name, nn.Identity())
            changed.add(partner if side == "producer" else bn_name)
    for m in net.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    order = {}
    for i, c in enumerate(flow.calls):
        order.setdefault(c.name, i)
    return net, Plan(order, changed, reference)


@guarded(x="x", grad=None)
def canonize(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """A copy of ``model`` (sharing its tensors) rewritten for LRP and checked on ``x``; see
    the module docstring.

    Parameters
    ----------
    model : torch.nn.Module
        The network (left exactly as found, eval mode is used for the passes).
    x : torch.Tensor
        (N, C, H, W) input on which the forward pass is recorded and the copy is
        proven to compute what the model computes.

    Raises
    ------
    UnsupportedLayerError
        For a called layer without a rule, a BatchNorm without an
        exact merge, or a copy whose output parts from the model's (naming where).
    """
    net, plan = _canonize(model, x)
    with torch.no_grad():
        out = net(x.clone())
    plan.verify(model, net, x.clone(), out)
    return net
