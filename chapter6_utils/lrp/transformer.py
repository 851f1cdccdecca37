"""LRP through a Vision Transformer: rules for its LayerNorms, its activation, the attention
softmax and the two products of attention, and the composites AttnLRP and CP-LRP.

The rules run as modified gradients, like the CNN rules (see :mod:`.rules`): every
tensor ``a`` carries ``g = R / a`` backward and its relevance is ``R = a * g``. In this
form a plain gradient through a *linear* operation without bias (a reshape, a sum of
residual branches, the mean of LayerNorm's centring, token pooling) is exactly LRP-0,
so only the non-linear and multiplicative operations need a rule:

* :class:`LayerNormRule`: ``y = (x - mean x) / std(x) * w + b`` with ``std`` held
  constant (Ali et al., 2022, the LN-rule; Achtibat et al., 2024, the identity rule on
  ``1 / std``); the centring then conserves, the affine part is LRP-epsilon and ``b``
  absorbs its share.
* :class:`Identity`: an element-wise activation (GELU) passes relevance unchanged,
  ``R_x = R_y`` (AttnLRP's identity rule).
* :class:`GradientInput`: gradient x input of the softmax, ``R_i = s_i-input * (R_i -
  s_i sum_j R_j)`` per attention row (AttnLRP, Proposition 3.1). The softmax is not
  homogeneous: this rule does not conserve, and the audit shows how much it leaks.
* :class:`Constant`: the layer's output is held constant, no relevance passes through
  it (CP-LRP holds the softmax output constant: Ali et al., 2022).
* :class:`Uniform`: a product of two activations (``q k^T``, ``A v``): LRP-epsilon on the
  product, its relevance split equally between the operands that carry relevance
  (AttnLRP's uniform rule); with one operand held constant it is plain LRP-epsilon.

Composites: :func:`attn_lrp` (Achtibat et al., 2024, "AttnLRP: attention-aware
layer-wise relevance propagation for transformers", ICML) and :func:`cp_lrp` (Ali et
al., 2022, "XAI for transformers: better explanations through conservative
propagation", ICML). Both use LRP-epsilon on every linear layer and on the patch
embedding, as the papers and LXT do. z^B on the patch embedding (the chapter's choice for
a CNN's first layer, ``box=True``) is available but measured worse on ``lesion_vit``: with
it, removing the most relevant pixels first hurts the accuracy less than removing a random
order does (notebook 06, "Beyond attention").
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .rules import Branch, Epsilon, Rule, ZBox, _check_number, ratio, relay, stabilise

__all__ = ["LayerNormRule", "Identity", "GradientInput", "Constant", "Uniform", "Embedding",
           "TransformerComposite", "attn_lrp", "cp_lrp", "LAYER_NORMS", "ACTIVATIONS"]


def _layer_norms():
    norms = [nn.LayerNorm]
    try:  # timm's LayerNorm subclasses nn.LayerNorm with its own (fast) forward
        from timm.layers import LayerNorm as TimmLayerNorm

        norms.append(TimmLayerNorm)
    except ImportError:
        pass
    return tuple(norms)


#: LayerNorm classes over the last dimension (exact types: timm's LayerNorm2d, which
#: normalises channels first, is another operation).
LAYER_NORMS = _layer_norms()
#: Element-wise activations the identity rule applies to.
ACTIVATIONS = (nn.GELU, nn.ReLU, nn.SiLU, nn.Tanh)


class LayerNormRule(Rule):
    """LayerNorm with its standard deviation held constant (Ali et al., 2022, LN-rule).

    ``y = n * w + b`` with ``n = (x - mean x) / std(x)``: the division by ``std`` passes
    relevance unchanged, the centring ``x - mean x`` is linear without bias (exact
    LRP-0: it conserves), and the element-wise affine part is LRP-epsilon,
    ``R_n = n w / (y + eps sign y) R_y``, so the bias ``b`` and ``eps`` absorb a share.
    """

    def __init__(self, epsilon: float = 1e-6):
        self.epsilon = _check_number(epsilon, "epsilon")
        self.name = f"ln-rule({self.epsilon:g})"

    def propagate(self, layer, inputs, z, ctx):
        x = inputs[0]
        dims = tuple(range(-len(layer.normalized_shape), 0))
        std = torch.sqrt(x.detach().var(dims, keepdim=True, unbiased=False) + layer.eps)  # held constant
        part = (x - x.mean(dims, keepdim=True)) / std
        if layer.weight is not None:
            part = part * layer.weight
        zd = z.detach()
        d = stabilise(zd, self.epsilon)
        return relay(z, [(part, ratio(zd, d))]), [Branch(None, zd, d, layer.bias)]


class Identity(Rule):
    """The identity rule for an element-wise activation: ``R_x = R_y`` (Achtibat et al.,
    2024). As a modified gradient, ``dy/dx := y / x`` (0 where ``x = 0``, where ``y``
    and its relevance are 0 too). For ReLU this is the ordinary gradient."""
    name = "identity"

    def propagate(self, layer, inputs, z, ctx):
        x = inputs[0]
        return relay(z, [(x, ratio(z.detach(), x.detach()))]), []


class GradientInput(Rule):
    """Gradient x input through the layer: the plain gradient, nothing modified. For the
    softmax this is AttnLRP's rule (Achtibat et al., 2024, Proposition 3.1), per row
    ``R_i = x_i (R_i^out - s_i sum_j R_j^out)``; it does not conserve (the audit's leak)."""
    name = "gradient×input"

    def propagate(self, layer, inputs, z, ctx):
        return z, []


class Constant(Rule):
    """The layer's output is held constant: no relevance reaches its input. CP-LRP's
    softmax (Ali et al., 2022): the attention weights become fixed coefficients, so
    ``A v`` is linear in ``v`` and conserves."""
    name = "constant"

    def propagate(self, layer, inputs, z, ctx):
        return z.detach(), []


class Uniform(Rule):
    """The uniform rule for a product of two activations, ``z = a @ b`` (Achtibat et al.,
    2024): LRP-epsilon on the product, ``R_(a_ik b_kj) = a_ik b_kj / (z_ij + eps sign z_ij)
    R_ij``, each term's share split equally between ``a_ik`` and ``b_kj``. An operand
    held constant (it carries no gradient, as CP-LRP's attention) gets nothing and the
    other gets the whole share: plain LRP-epsilon."""

    def __init__(self, epsilon: float = 1e-6):
        self.epsilon = _check_number(epsilon, "epsilon")
        self.name = f"uniform({self.epsilon:g})"

    def propagate(self, layer, inputs, z, ctx):
        # Gradient x input of a bilinear product gives each operand the whole product's
        # relevance; splitting it over the operands that carry relevance conserves.
        live = sum(bool(t.requires_grad) for t in inputs)
        zd = z.detach()
        d = stabilise(zd, self.epsilon)
        return relay(z, [(z, ratio(zd, d) / max(live, 1))]), [Branch(None, zd, d, None)]


class Embedding(Rule):
    """The class token, register tokens and position embeddings (timm's ``_pos_embed``):
    added and concatenated parameters, so the plain gradient is LRP-0 and they absorb
    relevance as a bias does. The audit shows their share as this layer's bias."""
    name = "embedding"

    def propagate(self, layer, inputs, z, ctx):
        zd = z.detach()
        patches = inputs[0].detach().reshape(zd.shape[0], -1, zd.shape[-1])
        prefix = zd.new_zeros(zd.shape[0], zd.shape[1] - patches.shape[1], zd.shape[-1])
        return z, [Branch(None, zd, zd, zd - torch.cat([prefix, patches], dim=1))]


class TransformerComposite:
    """A rule schedule for a canonised Vision Transformer (see :mod:`.vit`).

    Parameters
    ----------
    first : Rule
        The patch embedding (the convolution that reads the pixels).
    linear : Rule
        Every linear layer inside the transformer blocks (qkv, proj, fc1, fc2).
    head : Rule
        Linear layers outside the blocks (the classifier).
    norm : Rule
        Every LayerNorm.
    activation : Rule
        The MLP's activation.
    softmax : Rule
        The attention softmax.
    product : Rule
        ``q k^T`` and ``A v``.
    """

    def __init__(self, *, first: Rule, linear: Rule, head: Rule, norm: Rule, activation: Rule,
                 softmax: Rule, product: Rule, name: str = "transformer"):
        rules = dict(first=first, linear=linear, head=head, norm=norm, activation=activation, softmax=softmax,
                     product=product)
        for key, rule in rules.items():
            if not isinstance(rule, Rule):
                raise TypeError(f"{key} must be an LRP rule (e.g. lrp.Epsilon(), lrp.LayerNormRule()), got {rule!r}")
        self.first, self.linear, self.head, self.norm = first, linear, head, norm
        self.activation, self.softmax, self.product = activation, softmax, product
        self.embedding, self.name = Embedding(), name

    def assign(self, named_layers):
        """``[(name, module)]`` of a canonised ViT -> ``{name: rule}``."""
        from .vit import MatMul, Softmax, TokenEmbedding

        rules = {}
        for n, m in named_layers:
            if isinstance(m, nn.Conv2d):
                rules[n] = self.first
            elif isinstance(m, nn.Linear):
                rules[n] = self.linear if n.startswith("blocks.") else self.head
            elif type(m) in LAYER_NORMS:
                rules[n] = self.norm
            elif type(m) in ACTIVATIONS:
                rules[n] = self.activation
            elif isinstance(m, Softmax):
                rules[n] = self.softmax
            elif isinstance(m, MatMul):
                rules[n] = self.product
            elif isinstance(m, TokenEmbedding):
                rules[n] = self.embedding
        return rules

    def __repr__(self):
        return (f"{self.name}: patch embedding {self.first}, linear {self.linear}, head {self.head}, "
                f"LayerNorm {self.norm}, activation {self.activation}, softmax {self.softmax}, "
                f"products {self.product}")


def _first(low, high, box, epsilon, stabiliser):
    return ZBox(low, high, stabiliser) if box else Epsilon(epsilon)


def attn_lrp(low=None, high=None, *, epsilon: float = 1e-6, box: bool = False,
             stabiliser: float = 1e-6) -> TransformerComposite:
    """AttnLRP (Achtibat et al., 2024): LRP-epsilon on the patch embedding and the linear
    layers, the LN-rule on LayerNorm, the identity rule on the activation, gradient x
    input on the softmax and the uniform rule on ``q k^T`` and ``A v``: relevance also
    flows through the attention weights to the queries and keys. The softmax rule does
    not conserve: see ``lrp.conservation``. ``box=True``: z^B on the patch embedding
    instead, with pixel bounds ``low``/``high`` (None: ImageNet's, ``data.pixel_bounds``)
    and denominators pushed off zero by ``stabiliser``.
    """
    return TransformerComposite(first=_first(low, high, box, epsilon, stabiliser), linear=Epsilon(epsilon),
                                head=Epsilon(epsilon), norm=LayerNormRule(epsilon), activation=Identity(),
                                softmax=GradientInput(), product=Uniform(epsilon), name="AttnLRP")


def cp_lrp(low=None, high=None, *, epsilon: float = 1e-6, box: bool = False,
           stabiliser: float = 1e-6) -> TransformerComposite:
    """CP-LRP, conservative propagation (Ali et al., 2022): AttnLRP's rules except that
    the softmax output is held constant, so relevance flows through the values only
    and every block conserves up to biases and epsilon.

    Where we depart from Ali et al.: they pass the plain gradient through the MLP's
    GELU (gradient x input, which does not conserve); here it gets the identity rule,
    as in AttnLRP and in LXT's CP-LRP for ViTs, so that the two composites differ in the
    attention only. ``box``, ``low``, ``high``, ``stabiliser``: as for :func:`attn_lrp`."""
    return TransformerComposite(first=_first(low, high, box, epsilon, stabiliser), linear=Epsilon(epsilon),
                                head=Epsilon(epsilon), norm=LayerNormRule(epsilon), activation=Identity(),
                                softmax=Constant(), product=Uniform(epsilon), name="CP-LRP")
