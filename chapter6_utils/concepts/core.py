"""Concept relevance: the part of an LRP explanation that flows through chosen channels.

Conditional LRP (Achtibat et al., 2023, "From attribution maps to human-understandable
explanations through concept relevance propagation", the zennit-crp library): run the
LRP backward pass (equations 4 to 9 (book/equations.md)) from the class score down to a
layer, keep the relevance of the chosen channels there and set every other channel's to
zero, and carry on to the pixels. Since every LRP rule is linear in the relevance it
receives, the conditional maps of all channels of a layer add up to the unconditional
map, and the relevance each channel receives (summed over its positions) is its share
of the explanation.

The LRP pass is :func:`chapter6_utils.lrp.lrp`'s own (the same canonised copy, rules and
composites); only a hook on the chosen layer is added (:mod:`._hooks`).
"""
from __future__ import annotations

import functools
import numbers

import torch
import torch.nn as nn

from .._guard import check_input, check_target, class_scores, model_guard
from ..lrp.core import _Context, _input_relevance, _prepare
from ..lrp.vit import is_transformer
from . import _hooks

__all__ = ["concept_relevance", "channel_relevance"]


def _method(fn):
    """``fn(model, x, target, layer, ...)`` run like every attribution method of the package
    (:func:`chapter6_utils._guard.attribution_method`, which passes options by keyword
    only): ``x`` and ``target`` checked, the model under :func:`model_guard` (left as
    found, on error too), gradients on even inside ``torch.no_grad()``."""
    @functools.wraps(fn)
    def wrapper(model, x, target, *args, **options):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        check_input(model, x)
        with torch.inference_mode(False), torch.enable_grad():
            if x.is_inference():
                x = x.clone()
            target = check_target(target, x.shape[0], device=x.device)
            with model_guard(model):
                return fn(model, x, target, *args, **options)
    return wrapper


def _layer_forward(model, x, target, layers, composite, maxpool):
    """One LRP forward pass of the canonised copy with the rules hooked in and the outputs
    of ``layers`` (a list of names or submodules) captured. Returns (scores with their
    graph, input leaves, the layers' outputs (N, K, h, w) with their graph, their names)."""
    if is_transformer(model):
        raise TypeError(f"{type(model).__name__} is a transformer: concept relevance here conditions on the "
                        "channels of a convolutional feature map (N, C, H, W); use a CNN such as lesion_cnn")
    names = [_hooks.resolve_layer(model, layer) for layer in layers]
    net, plan, rule_layers, composite = _prepare(model, x, composite, maxpool)
    x0 = x.detach().clone().requires_grad_(True)
    ctx = _Context(x0, False, composite=composite)

    def hook_for(rule):
        def hook(module, inputs, output):
            return rule.propagate(module, inputs, output, ctx)[0]
        return hook

    targets = dict(net.named_modules())
    for name in names:
        if name not in targets:  # canonisation replaced it (a BatchNorm merged away)
            raise ValueError(f"layer '{name}' does not exist in the canonised network LRP explains (a BatchNorm "
                             "merged into its convolution is gone); condition on the convolution or its ReLU")
    handles = [module.register_forward_hook(hook_for(rule)) for _, module, rule in rule_layers]
    stores = [[] for _ in names]
    # after the rule hooks: they see the rules' outputs, whose gradient is the relevance per unit
    handles += [_hooks.capture_output(targets[name], store) for name, store in zip(names, stores)]
    try:
        logits = net(x0)
    finally:
        for h in handles:
            h.remove()
    plan.verify(model, net, x, logits)
    outs = []
    for name, store in zip(names, stores):
        module = model.get_submodule(name)
        if not store:
            raise ValueError(f"layer '{name}' ({type(module).__name__}) is never called by the model's forward; "
                             "choose a layer on the path from input to output")
        if len(store) > 1:
            raise ValueError(f"layer '{name}' ({type(module).__name__}) is called {len(store)} times in one "
                             "forward pass: its channels are not one feature map; choose a layer called once")
        h = store[0]
        if not isinstance(h, torch.Tensor) or h.dim() != 4:
            shape = tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__
            raise ValueError(f"layer '{name}' ({type(module).__name__}) outputs {shape}, which has no channels: "
                             "concept relevance needs a feature map (N, C, H, W); choose a convolution, its "
                             "ReLU or a pooling layer (e.g. 'features.10' in lesion_cnn)")
        if not h.requires_grad:
            raise ValueError(f"layer '{name}' ({type(module).__name__}): no relevance reaches its output (the "
                             "output does not depend on the input through autograd)")
        outs.append(h)
    scores = class_scores(logits, target, int(target.max()))
    return scores, [ctx.input] + ctx.extra_leaves, outs, names


def _channel_list(channels, k: int, name: str) -> list:
    """``channels`` (an int or a non-empty sequence of ints) as a list of indices in [0, k)."""
    if isinstance(channels, torch.Tensor):
        if channels.is_floating_point() or channels.dtype == torch.bool or channels.dim() > 1:
            raise TypeError(f"channels must be an int or a 1-D sequence of ints, got a tensor of "
                            f"dtype {channels.dtype} and shape {tuple(channels.shape)}")
        channels = channels.reshape(-1).tolist()
    if isinstance(channels, numbers.Integral) and not isinstance(channels, bool):
        channels = [channels]
    try:
        items = list(channels)
    except TypeError:
        raise TypeError(f"channels must be an int or a sequence of ints, got {type(channels).__name__}") from None
    if not items:
        raise ValueError("channels is empty: give at least one channel index")
    for c in items:
        if isinstance(c, bool) or not isinstance(c, numbers.Integral):
            raise TypeError(f"channels must be integers, got {c!r} ({type(c).__name__})")
        if not 0 <= c < k:
            raise ValueError(f"channel {c} is out of range: layer '{name}' has {k} channels, indices 0 to {k - 1}")
    return sorted({int(c) for c in items})


@_method
def concept_relevance(model, x, target, layer, channels, *, composite=None, maxpool: str = "winner"):
    """The input relevance that flows through ``channels`` of ``layer`` (conditional LRP).

    The LRP pass of :func:`chapter6_utils.lrp.lrp` (same composite and pooling options),
    with the relevance at ``layer``'s output kept on the chosen channels and set to zero
    on the others before it is passed on to the pixels (Achtibat et al., 2023; zennit-crp's
    ``CondAttribution`` with ``ChannelConcept``). Summed over all channels of a layer, the
    conditional maps give the unconditional map (every rule is linear in the relevance it
    receives).

    Parameters
    ----------
    model : torch.nn.Module
        A CNN LRP can explain (see :func:`chapter6_utils.lrp.lrp`).
    x : torch.Tensor
        (N, C, H, W) normalised input.
    target : int or torch.Tensor
        An int or N class indices.
    layer : str or torch.nn.Module
        A module name (``'features.10'``) or submodule whose output is a feature map
        (N, K, h, w): a convolution (its output after the rule), its ReLU, a pooling.
    channels : int or sequence of int
        An int or a sequence of ints in [0, K): one concept, the union of them.
    composite, maxpool
        As in :func:`chapter6_utils.lrp.lrp` (None: ``lrp.chapter()``).

    Returns
    -------
    torch.Tensor
        (N, C, H, W) signed relevance, like ``x``.

    Raises
    ------
    ValueError
        A layer that is not a module, is never called, or has no channels (its
        output is not 4-D); channel indices out of range.
    TypeError
        Non-integer channels; a transformer.
    chapter6_utils.lrp.UnsupportedLayerError
        A model LRP cannot run (it names the module).
    """
    scores, leaves, (h,), (name,) = _layer_forward(model, x, target, [layer], composite, maxpool)
    idx = _channel_list(channels, h.shape[1], name)
    g_h, = torch.autograd.grad(scores.sum(), h, retain_graph=True)
    mask = torch.zeros(h.shape[1], dtype=h.dtype, device=h.device)
    mask[idx] = 1
    grads = torch.autograd.grad(h, leaves, grad_outputs=g_h * mask[None, :, None, None], allow_unused=True)
    return _input_relevance(leaves, grads)


@_method
def channel_relevance(model, x, target, layer, *, composite=None, maxpool: str = "winner",
                      normalise: bool = True):
    """Each channel's relevance at ``layer``: the LRP relevance at the layer's output
    summed over its positions, one number per channel (Achtibat et al., 2023).

    One forward pass and one backward pass down to ``layer`` (the pixels are not
    reached), so ranking channels costs less than an LRP map.

    Parameters
    ----------
    model, x, target, layer, composite, maxpool
        As in :func:`concept_relevance`.
    normalise : bool, default True
        True: each channel's relative relevance, ``R_k / sum_j |R_j|`` (in
        [-1, 1]; a channel that speaks against the class is negative), the
        normalisation zennit-crp uses, which stays bounded where the signed total is
        near zero; False: the relevance in units of the class score (a row sums to the
        relevance reaching the layer: the score less what the layers above absorbed).

    Returns
    -------
    torch.Tensor
        (N, K) float tensor.
    """
    if not isinstance(normalise, bool):
        raise TypeError(f"normalise must be True or False, got {normalise!r}")
    return _channel_relevance(model, x, target, [layer], composite, maxpool, normalise)[0]


def _channel_relevance(model, x, target, layers, composite, maxpool, normalise):
    """:func:`channel_relevance` for several layers from one forward and one backward pass
    (model already guarded): a list of (N, K_l) tensors."""
    scores, _, hs, _ = _layer_forward(model, x, target, layers, composite, maxpool)
    grads = torch.autograd.grad(scores.sum(), hs)
    out = []
    for h, g in zip(hs, grads):
        r = (h.detach() * g).sum((2, 3))
        if normalise:
            total = r.abs().sum(1, keepdim=True)
            if bool((total == 0).any()):
                raise ValueError("no relevance reaches this layer for some image (the class score is zero there), "
                                 "so shares are undefined; use normalise=False")
            r = r / total
        out.append(r)
    return out
