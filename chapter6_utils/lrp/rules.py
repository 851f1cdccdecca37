"""LRP rules as small objects (equations 5 to 8 (book/equations.md)).

How a rule runs. LRP is computed here as a *modified gradient*: in one forward pass every
hooked layer returns its own output ``z`` unchanged in value, but with a gradient that the
rule chooses; one backward pass then carries ``g = R / a`` (relevance over activation)
from the class score down to the pixels, and the relevance of any tensor ``a`` is
``R = a * g``. For a layer with input ``x`` and output ``z = layer(x)``, a rule builds
one or more modified outputs ``p_k`` (same layer, modified weights or inputs) and
returns

    y = z  (value)        dy/dx = sum_k s_k * dp_k/dx,   s_k = mask_k * z / stabilise(d_k)

so that the incoming ``g = R_out / z`` turns into ``x * sum_k J_k^T (mask_k R_out / d_k)``
at the input: the rule's redistribution, with ``d_k`` its denominator. ``relay`` does
this with ``detach``: no per-layer autograd call, no Python loop over layers.

Conventions (chosen to match Zennit 0.5.1, the reference the tests compare against):

* ``stabilise(d) = d + eps * sign(d)`` with ``sign(0) = +1`` (Zennit, Captum).
* LRP-0 (``eps = 0``) sends nothing through a neuron with ``z = 0`` exactly (its
  relevance ``R = z * g`` is zero anyway); Zennit would divide by zero there.
* Gamma is the generalised rule of Zennit (Andeol et al., 2021): positive outputs are
  explained by ``x+ (w + g w+)`` and ``x- (w + g w-)``, negative outputs by
  ``x+ (w + g w-)`` and ``x- (w + g w+)``; the bias is modified like the weights
  (``b + g b+`` in the positive, ``b + g b-`` in the negative denominator), so it
  absorbs relevance. For non-negative inputs (after a ReLU) it is equation 7 (book/equations.md).
* z^B leaves the bias out of its denominator (Zennit's three biases cancel), so it
  conserves up to the stabiliser.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import _checks as checks

__all__ = ["Rule", "Zero", "Epsilon", "Gamma", "ZBox", "Pass", "MaxAsAverage", "Branch", "stabilise", "relay", "ratio"]


def stabilise(d: torch.Tensor, eps: float) -> torch.Tensor:
    """``d + eps * sign(d)``, with ``sign(0) = +1``: pushes a denominator away from zero."""
    return torch.where(d >= 0, d + eps, d - eps)  # one pass over d (a ViT has ~100 of these)


def relay(z: torch.Tensor, parts) -> torch.Tensor:
    """A tensor with the value of ``z`` and the gradient ``sum_k scale_k * d part_k``.

    ``parts``: pairs ``(part, scale)``; ``part - part.detach()`` is exactly zero in value,
    so the forward pass of the network is untouched (bit for bit)."""
    out = z.detach()
    for part, scale in parts:
        out = out + (part - part.detach()) * scale.detach()
    return out


def ratio(z: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """``z / d``, and 0 where ``d == 0`` (only with a zero stabiliser, where ``z`` is 0 too:
    such a neuron holds no relevance, so it sends none)."""
    # The quotient's inf/nan where d == 0 is discarded by the where (no gradient flows here)
    return torch.where(d == 0, 0.0, z / d)


@dataclass
class Branch:
    """One denominator of a rule, for the conservation audit: relevance ``mask * R`` is
    divided by ``stabilised``; ``raw - bias`` of it reaches the layer's input, so ``bias``
    and ``stabilised - raw`` are what the bias and the stabiliser absorb."""
    mask: torch.Tensor | None
    raw: torch.Tensor
    stabilised: torch.Tensor
    bias: torch.Tensor | None


def _check_number(value, name, minimum=0.0):
    return checks.real(value, name, low=minimum)


def _check_bound(value, name):
    """A z^B bound: None, a finite number, or a finite tensor (broadcastable to x)."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        checks.tensor(value, name, floating=True, shape_hint="(a pixel bound broadcastable to x)")
        return checks.finite(value.detach(), name, cause="z^B bounds are the lowest and highest input values")
    return checks.real(value, name, hint="the lowest / highest value an input can take, in the normalised space")


def _bias_view(layer, bias, z):
    if bias is None:
        return None
    if isinstance(layer, nn.Linear):
        return bias  # a Linear's outputs are the last dimension, also on (N, tokens, features)
    return bias.view(1, -1, *([1] * (z.dim() - 2)))


def layer_forward(layer: nn.Module, x, weight, bias):
    """``layer`` applied to ``x`` with other weights (Conv2d or Linear)."""
    if isinstance(layer, nn.Conv2d):
        return layer._conv_forward(x, weight, bias)
    return F.linear(x, weight, bias)


class Rule:
    """Base class: ``propagate(layer, inputs, z, ctx) -> (y, branches)``."""
    name = "rule"

    def propagate(self, layer, inputs, z, ctx):
        raise NotImplementedError

    def __repr__(self):
        return self.name


class Pass(Rule):
    """Pass-through for element-wise and shape layers (ReLU, dropout, flatten): no hook,
    the plain gradient carries ``R = a * g`` through unchanged."""
    name = "pass"


class Epsilon(Rule):
    """LRP-epsilon, equation 6 (book/equations.md): ``R_i = sum_j a_i w_ij / (z_j + eps sign z_j) R_j``
    (Bach et al., 2015). ``z_j`` includes the bias, so bias and epsilon absorb relevance.
    Also used (no weights) for average pooling and residual sums: the proportional split
    ``R_i = a_i / z_j R_j`` with a small stabiliser."""

    def __init__(self, epsilon: float = 1e-6):
        self.epsilon = _check_number(epsilon, "epsilon")
        self.name = f"epsilon({self.epsilon:g})"

    def propagate(self, layer, inputs, z, ctx):
        zd = z.detach()
        d = stabilise(zd, self.epsilon)
        return relay(z, [(z, ratio(zd, d))]), [Branch(None, zd, d, _bias_view(layer, getattr(layer, "bias", None), z))]


class Zero(Epsilon):
    """LRP-0, equation 5 (book/equations.md): ``R_i = sum_j a_i w_ij / z_j R_j`` (Bach et al., 2015)."""

    def __init__(self):
        super().__init__(0.0)
        self.name = "zero"


class Gamma(Rule):
    """LRP-gamma, equation 7 (book/equations.md): ``R_i = sum_j a_i (w_ij + g w+_ij) / sum_i' a_i' (w_i'j + g w+_i'j) R_j``
    (Montavon et al., 2019), in Zennit's generalised form for signed inputs and outputs
    (see the module docstring). ``stabiliser`` only keeps denominators off zero."""  # noqa: E501

    def __init__(self, gamma: float = 0.25, stabiliser: float = 1e-6):
        self.gamma = _check_number(gamma, "gamma")
        self.stabiliser = _check_number(stabiliser, "stabiliser")
        self.name = f"gamma({self.gamma:g})"

    def propagate(self, layer, inputs, z, ctx):
        x, w, b, g = inputs[0], layer.weight, layer.bias, self.gamma
        w_up, w_down = w + g * w.clamp(min=0), w + g * w.clamp(max=0)
        b_up = b_down = None
        if b is not None:
            b_up, b_down = b + g * b.clamp(min=0), b + g * b.clamp(max=0)
        x_pos = x.clamp(min=0)  # its gradient is the mask [x > 0]: x * mask * v = x+ * v
        up = layer_forward(layer, x_pos, w_up, b_up)        # explains positive outputs
        down = layer_forward(layer, x_pos, w_down, b_down)  # explains negative outputs
        if bool((x < 0).any()):  # signed inputs (not after a ReLU): the x- halves
            x_neg = x.clamp(max=0)
            up = up + layer_forward(layer, x_neg, w_down, None)
            down = down + layer_forward(layer, x_neg, w_up, None)
        zd = z.detach()
        branches, parts = [], []
        for part, mask, bias in ((up, zd > 0, b_up), (down, zd < 0, b_down)):
            d = stabilise(part.detach(), self.stabiliser)
            parts.append((part, torch.where(mask, ratio(zd, d), torch.zeros_like(zd))))
            branches.append(Branch(mask, part.detach(), d, _bias_view(layer, bias, z)))
        return relay(z, parts), branches


class ZBox(Rule):
    """The z^B rule for the input layer, equation 8 (book/equations.md) (Montavon et al., 2017):
    ``R_i = sum_j (x_i w_ij - l_i w+_ij - h_i w-_ij) / sum_i' (...) R_j`` for pixels with
    ``l_i <= x_i <= h_i``. ``low``/``high``: floats or tensors broadcastable to x, in
    the space the network sees (normalised: see ``data.pixel_bounds``); None takes
    ``data.pixel_bounds`` (ImageNet normalisation) on x's device.

    The bounds become leaves of the graph, so the backward pass also yields
    ``-w+^T u`` at ``l`` and ``-w-^T u`` at ``h``; the input relevance is then
    ``x g_x + l g_l + h g_h``. Valid only on the layer that reads the model's input."""

    def __init__(self, low=None, high=None, stabiliser: float = 1e-6):
        self.low, self.high = _check_bound(low, "low"), _check_bound(high, "high")
        if isinstance(self.low, float) and isinstance(self.high, float) and not self.low < self.high:
            raise ValueError(f"low must be below high (z^B's pixel bounds), got low={self.low:g}, high={self.high:g}")
        self.stabiliser = _check_number(stabiliser, "stabiliser")
        self.name = "zB"

    def bounds(self, x):
        """``(low, high)`` as full-size copies shaped like ``x`` (leaves for the gradient)."""
        from ..data import pixel_bounds

        default = pixel_bounds(device=x.device, dtype=x.dtype)
        low, high = (torch.as_tensor(v if v is not None else d, device=x.device, dtype=x.dtype)
                     for v, d in zip((self.low, self.high), default))
        try:
            low, high = low.expand_as(x).clone(), high.expand_as(x).clone()
        except RuntimeError as err:
            raise ValueError(f"z^B bounds of shapes {tuple(low.shape)}, {tuple(high.shape)} do not broadcast "
                             f"to the input {tuple(x.shape)}") from err
        if bool((low >= high).any()):
            raise ValueError(f"low must be below high everywhere (z^B's pixel bounds); low >= high at "
                             f"{int((low >= high).sum())} of {low.numel()} input values")
        return low, high

    def propagate(self, layer, inputs, z, ctx):
        x = inputs[0]
        if x is not ctx.input:
            raise ValueError("the z^B rule applies only to a layer that reads the model's input; "
                             "use Epsilon or Gamma on hidden layers")
        low, high = (t.requires_grad_(True) for t in self.bounds(x))
        ctx.extra_leaves += [low, high]
        w = layer.weight
        part = (layer_forward(layer, x, w, None) - layer_forward(layer, low, w.clamp(min=0), None)
                - layer_forward(layer, high, w.clamp(max=0), None))
        d = stabilise(part.detach(), self.stabiliser)
        return relay(z, [(part, ratio(z.detach(), d))]), [Branch(None, part.detach(), d, None)]


class MaxAsAverage(Rule):
    """Max-pooling explained as average pooling (equation 9 (book/equations.md)): the forward value
    stays the maximum, relevance is split over the window in proportion to the inputs,
    ``R_i = sum_j a_i / sum_{i' in window j} a_i' R_j``."""

    def __init__(self, stabiliser: float = 1e-6):
        self.stabiliser = _check_number(stabiliser, "stabiliser")
        self.name = "max-as-average"

    def propagate(self, layer, inputs, z, ctx):
        if layer.dilation not in (1, (1, 1)) or layer.return_indices:
            raise ValueError(f"maxpool='average' supports MaxPool2d without dilation or indices, got {layer}")
        avg = F.avg_pool2d(inputs[0], layer.kernel_size, layer.stride, layer.padding, layer.ceil_mode,
                           count_include_pad=True)
        d = stabilise(avg.detach(), self.stabiliser)
        return relay(z, [(avg, ratio(z.detach(), d))]), [Branch(None, avg.detach(), d, None)]
