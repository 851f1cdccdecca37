"""Layer-wise Relevance Propagation (chapter 6, "Layer-wise Relevance Propagation").

* :func:`lrp` (``lrp(model, x, target, composite=..., maxpool=..., return_layers=...)``)
  and the audit :func:`conservation`: :mod:`.core`.
* Rules (equations 5 to 8 (book/equations.md)): :class:`Zero`, :class:`Epsilon`, :class:`Gamma`,
  :class:`ZBox`, :class:`Pass`: :mod:`.rules`.
* Composites: :func:`chapter` (the default), :func:`epsilon_gamma_box` (Zennit's
  layout), :func:`all_zero`, :func:`all_epsilon`, :class:`Composite`: :mod:`.composites`.
* Canonisation (BatchNorm merged, residual sums made explicit): :func:`canonize`,
  :class:`UnsupportedLayerError`: :mod:`.canonize`.
* Vision Transformers (timm): composites :func:`attn_lrp` (the default on a ViT) and
  :func:`cp_lrp`, rules :class:`LayerNormRule`, :class:`Identity`,
  :class:`GradientInput`, :class:`Constant`, :class:`Uniform`: :mod:`.transformer`;
  the attention written out as hookable modules: :func:`canonize_vit`, :mod:`.vit`.
"""
from .canonize import Add, UnsupportedLayerError, canonize
from .composites import Composite, all_epsilon, all_zero, chapter, epsilon_gamma_box
from .core import ConservationTable, conservation, lrp
from .rules import Epsilon, Gamma, Pass, Rule, ZBox, Zero
from .transformer import (Constant, GradientInput, Identity, LayerNormRule, TransformerComposite, Uniform,
                          attn_lrp, cp_lrp)
from .vit import canonize_vit

__all__ = ["lrp", "conservation", "ConservationTable", "Composite", "chapter", "epsilon_gamma_box", "all_zero",
           "all_epsilon", "Rule", "Zero", "Epsilon", "Gamma", "ZBox", "Pass", "canonize", "Add",
           "UnsupportedLayerError", "attn_lrp", "cp_lrp", "TransformerComposite", "LayerNormRule", "Identity",
           "GradientInput", "Constant", "Uniform", "canonize_vit"]
