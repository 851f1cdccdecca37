"""Layer-wise Relevance Propagation (chapter 6, "Layer-wise Relevance Propagation").

* :func:`lrp` (``lrp(model, x, target, composite=..., maxpool=..., return_layers=...)``)
  and the audit :func:`conservation`: :mod:`.core`.
* Rules (equations 5 to 8 (book/equations.md)): :class:`Zero`, :class:`Epsilon`, :class:`Gamma`,
  :class:`ZBox`, :class:`Pass`: :mod:`.rules`.
* Composites: :func:`chapter` (the default), :func:`epsilon_gamma_box` (Zennit's
  layout), :func:`all_zero`, :func:`all_epsilon`, :class:`Composite`: :mod:`.composites`.
* Canonisation (BatchNorm merged, residual sums made explicit): :func:`canonize`,
  :class:`UnsupportedLayerError`: :mod:`.canonize`.
"""
from .canonize import Add, UnsupportedLayerError, canonize
from .composites import Composite, all_epsilon, all_zero, chapter, epsilon_gamma_box
from .core import ConservationTable, conservation, lrp
from .rules import Epsilon, Gamma, Pass, Rule, ZBox, Zero

__all__ = ["lrp", "conservation", "ConservationTable", "Composite", "chapter", "epsilon_gamma_box", "all_zero",
           "all_epsilon", "Rule", "Zero", "Epsilon", "Gamma", "ZBox", "Pass", "canonize", "Add",
           "UnsupportedLayerError"]
