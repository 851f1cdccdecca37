"""The rule road: a backward pass in which every ``nn.ReLU`` follows one of the three
rules of equation 3 (book/equations.md), and the two attribution methods built on it, :func:`deconvnet`
(Zeiler & Fergus, 2014) and :func:`guided_backprop` (Springenberg et al., 2015)."""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .. import _checks as checks
from .._guard import attribution_method, class_scores
from .._hooks import hooked

__all__ = ["RULES", "relu_backward", "relu_rule", "deconvnet", "guided_backprop"]

#: The three ReLU backward rules of equation 3 (book/equations.md).
RULES = ("backprop", "deconvnet", "guided")


def relu_backward(a: torch.Tensor, g: torch.Tensor, rule: str) -> torch.Tensor:
    """Equation 3 (book/equations.md): what a ReLU passes back, given its forward input ``a`` and the incoming
    signal ``g`` (same shape).

    * ``"backprop"``: ``g * [a > 0]`` (the chain rule);
    * ``"deconvnet"``: ``max(g, 0)`` (the forward mask is ignored; Zeiler & Fergus, 2014);
    * ``"guided"``: ``max(g, 0) * [a > 0]`` (both; Springenberg et al., 2015).
    """
    checks.choice(rule, "rule", RULES)
    checks.tensor(a, "a")
    checks.tensor(g, "g")
    if a.shape != g.shape:
        raise ValueError(f"g has shape {tuple(g.shape)} but a has {tuple(a.shape)}; the incoming signal g and the "
                         "ReLU's forward input a must have the same shape")
    if rule == "backprop":
        return g * (a > 0)
    if rule == "deconvnet":
        return g.clamp(min=0)
    if rule == "guided":
        return g.clamp(min=0) * (a > 0)
    raise ValueError(f"rule must be one of {RULES}, got {rule!r}")


class _ReLUWithRule(torch.autograd.Function):
    """A ReLU whose backward is :func:`relu_backward` with a chosen rule."""

    @staticmethod
    def forward(ctx, a, rule):
        ctx.rule = rule
        ctx.save_for_backward(a)
        return a.clamp(min=0)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        return relu_backward(a, g, ctx.rule), None


_FUNCTIONAL_RELUS = {torch.relu, torch.relu_, F.relu, F.relu_, torch.Tensor.relu, torch.Tensor.relu_}


def _qualname(func):
    mod = "torch.Tensor" if func in (torch.Tensor.relu, torch.Tensor.relu_) else (
        "torch.nn.functional" if func in (F.relu, F.relu_) else "torch")
    return f"{mod}.{getattr(func, '__name__', func)}"


class _FunctionalReLUDetector(TorchFunctionMode):
    """Raises when a ReLU is called outside an ``nn.ReLU`` module: the rule cannot reach
    it, and the map would silently be a plain gradient there."""

    def __init__(self, stack, rule):
        super().__init__()
        self.stack, self.rule = stack, rule

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _FUNCTIONAL_RELUS and not (self.stack and isinstance(self.stack[-1][1], nn.ReLU)):
            where = (f"in the forward of '{self.stack[-1][0]}' ({type(self.stack[-1][1]).__name__})"
                     if self.stack else "in the model's forward")
            raise TypeError(
                f"{_qualname(func)} is called {where} outside any nn.ReLU module: "
                f"the {self.rule!r} ReLU rule (equation 3 (book/equations.md)) hooks nn.ReLU modules only and cannot reach "  # noqa: E501
                "a functional ReLU, so the map would silently be a plain gradient there (Captum's "
                "GuidedBackprop and Deconvolution do exactly that). Replace the call with an nn.ReLU "
                "module (self.relu = nn.ReLU() in __init__).")
        return func(*args, **(kwargs or {}))


@contextmanager
def relu_rule(model: nn.Module, rule: str):
    """Within the block, every ``nn.ReLU`` of ``model`` passes signals back by ``rule``
    (equation 3 (book/equations.md), :func:`relu_backward`); everything else keeps its usual backward.

    The mechanism: a forward hook on each ``nn.ReLU`` replaces its output by the same
    values computed by a ReLU with the chosen backward (in-place ReLUs run out of place
    in the block, so that their input is still there). A ReLU called as a function in a
    forward (``F.relu``, ``torch.relu``, ``x.relu()``) raises ``TypeError`` naming the
    module whose forward calls it, and a model without any ``nn.ReLU`` raises
    ``ValueError``. Run it under :func:`~chapter6_utils._guard.model_guard` (the
    attribution methods here do): the hooks and ``inplace`` flags are then put back even
    on an error.
    """
    checks.instance(model, "model", nn.Module, "a torch.nn.Module")
    checks.choice(rule, "rule", RULES)
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    if not relus:
        raise ValueError(f"{type(model).__name__} has no nn.ReLU module: the {rule!r} rule of equation 3 (book/equations.md) "  # noqa: E501
                         "changes only ReLUs, so there is nothing to apply it to (the map would be a plain "
                         "gradient)")
    stack = []

    def pop(module, inputs, output):
        if stack and stack[-1][1] is module:
            stack.pop()

    def swap(module, inputs, output):
        return _ReLUWithRule.apply(inputs[0], rule)

    names = {m: name or type(m).__name__ for name, m in model.named_modules()}

    def push(module, inputs):
        stack.append((names[module], module))

    saved = [(m, m.inplace) for m in relus]
    try:
        for m in relus:
            m.inplace = False
        with hooked(relus, post=swap), hooked(names, pre=push, post=pop, always_call=True), \
                _FunctionalReLUDetector(stack, rule):
            yield model
    finally:
        for m, inplace in saved:
            m.inplace = inplace


def _rule_gradient(model, x, target, rule):
    x = x.detach().requires_grad_(True)
    with relu_rule(model, rule):
        # a non-leaf copy: a model whose first op is in place stays differentiable
        scores = class_scores(model(x.clone()), target, int(target.max()))
    (grad,) = torch.autograd.grad(scores.sum(), x)
    return grad


@attribution_method
def deconvnet(model, x, target):
    """Deconvnet attribution: dS_c/dx with every ReLU passing back ``max(g, 0)`` (equation 3 (book/equations.md),
    deconvnet rule), (N, C, H, W) like ``x``.

    Max-pooling routes the signal to its forward argmax and convolutions pass it back
    through their transposed weights, as in Zeiler & Fergus (2014), "Visualizing and
    understanding convolutional networks". Equals Captum's ``Deconvolution`` on models
    whose ReLUs are ``nn.ReLU`` modules; a functional ReLU raises ``TypeError``.
    """
    return _rule_gradient(model, x, target, "deconvnet")


@attribution_method
def guided_backprop(model, x, target):
    """Guided backpropagation: dS_c/dx with every ReLU passing back ``max(g, 0) * [a > 0]``
    (equation 3 (book/equations.md), guided rule), (N, C, H, W) like ``x``.

    Springenberg, Dosovitskiy, Brox & Riedmiller (2015), "Striving for simplicity: the all
    convolutional net". Sharp maps that depend little on the weights of the upper layers
    (Adebayo et al., 2018; equation 15 (book/equations.md)). Equals Captum's ``GuidedBackprop`` on models whose
    ReLUs are ``nn.ReLU`` modules; a functional ReLU raises ``TypeError``.
    """
    return _rule_gradient(model, x, target, "guided")
