"""Composites: which rule each layer gets (equation 9 (book/equations.md); Montavon et al., 2019).

A :class:`Composite` sorts the layers of a canonised network by kind, in the order they
are registered (which, for every model here, is the order of the forward pass):

* the first weighted layer (the one reading the pixels): ``first``;
* the other convolutions: the first ``lower_share`` of them get ``lower``, the rest ``upper``;
* fully connected layers: ``dense``;
* average pooling and residual sums (no weights): ``norm``, a proportional split.

ReLU, dropout, flatten and max-pooling (winner-take-all) pass relevance through unchanged.
"""
from __future__ import annotations

import math

import torch.nn as nn

from .canonize import Add
from .. import _checks as checks
from .rules import Epsilon, Gamma, Pass, Rule, Zero, ZBox

__all__ = ["Composite", "chapter", "epsilon_gamma_box", "all_zero", "all_epsilon"]


def _check_rule(rule, key, none_ok):
    checks.instance(rule, key, Rule, "an LRP rule instance such as Zero(), Epsilon(0.25), Gamma(0.25) or "
                                     "ZBox(low, high)", none_ok=none_ok)
    if rule is not None and (isinstance(rule, Pass) or type(rule).propagate is Rule.propagate):
        raise TypeError(f"{key} must be a rule that redistributes relevance (Zero, Epsilon, Gamma, ZBox), got "
                        f"{rule!r}: {type(rule).__name__} has no redistribution for a weighted layer (Pass is "
                        "what ReLU, dropout and flatten get without asking)")


class Composite:
    """A rule schedule. Every argument is a :class:`~chapter6_utils.lrp.rules.Rule`
    (``first=None``: the first layer is treated like the others of its kind)."""

    def __init__(self, *, first: Rule | None, lower: Rule, upper: Rule, dense: Rule,
                 norm: Rule | None = None, lower_share: float = 0.5, name: str = "composite"):
        lower_share = checks.real(lower_share, "lower_share", low=0.0, high=1.0,
                                  hint="the share of convolutions after the first that get the lower rule")
        for key, rule in dict(first=first, lower=lower, upper=upper, dense=dense, norm=norm).items():
            _check_rule(rule, key, none_ok=key in ("first", "norm"))
        self.first, self.lower, self.upper, self.dense = first, lower, upper, dense
        self.norm = norm if norm is not None else Epsilon(1e-6)
        self.lower_share, self.name = lower_share, name

    def assign(self, named_layers):
        """``[(name, module)]`` -> ``{name: rule}`` for the layers that carry a rule."""
        weighted = [(n, m) for n, m in named_layers if isinstance(m, (nn.Conv2d, nn.Linear))]
        convs = [n for n, m in weighted if isinstance(m, nn.Conv2d)]
        rules = {}
        if weighted and self.first is not None:
            rules[weighted[0][0]] = self.first
        rest = [n for n in convs if n not in rules]
        n_lower = math.ceil(self.lower_share * len(rest) - 1e-9)
        for i, n in enumerate(rest):
            rules[n] = self.lower if i < n_lower else self.upper
        for n, _m in weighted:
            rules.setdefault(n, self.dense)
        for n, m in named_layers:
            if n not in rules and isinstance(m, (nn.AvgPool2d, nn.AdaptiveAvgPool2d, Add)):
                rules[n] = self.norm
        return rules

    def __repr__(self):
        return (f"{self.name}: first {self.first}, lower {self.lower} ({self.lower_share:.0%} of the other convs), "
                f"upper {self.upper}, dense {self.dense}, pools/sums {self.norm}")


def chapter(low=None, high=None, *, gamma: float = 0.25, epsilon: float = 0.25, dense_epsilon: float = 1e-6,
            lower_share: float = 0.5, stabiliser: float = 1e-6) -> Composite:
    """The chapter's composite: z^B on the first layer, LRP-gamma on the lower half of the
    convolutions, LRP-epsilon on the upper half, LRP-epsilon with a tiny epsilon
    (essentially LRP-0) on the dense head. ``low``/``high``: pixel bounds for z^B in
    the normalised space (None: ``data.pixel_bounds``)."""
    return Composite(first=ZBox(low, high, stabiliser), lower=Gamma(gamma, stabiliser), upper=Epsilon(epsilon),
                     dense=Epsilon(dense_epsilon), norm=Epsilon(stabiliser), lower_share=lower_share,
                     name="chapter")


def epsilon_gamma_box(low=None, high=None, *, epsilon: float = 1e-6, gamma: float = 0.25,
                      stabiliser: float = 1e-6) -> Composite:
    """Zennit's ``EpsilonGammaBox`` layout: z^B first, gamma on every other convolution,
    epsilon on the dense layers."""
    return Composite(first=ZBox(low, high, stabiliser), lower=Gamma(gamma, stabiliser), upper=Gamma(gamma, stabiliser),
                     dense=Epsilon(epsilon), norm=Epsilon(stabiliser), lower_share=1.0, name="epsilon-gamma-box")


def all_zero() -> Composite:
    """LRP-0 everywhere (pools and sums too)."""
    return Composite(first=None, lower=Zero(), upper=Zero(), dense=Zero(), norm=Zero(), name="all-zero")


def all_epsilon(epsilon: float = 0.25, norm_epsilon: float | None = None) -> Composite:
    """LRP-epsilon everywhere; ``norm_epsilon`` for pools and sums (default: ``epsilon``)."""
    eps = Epsilon(epsilon)
    return Composite(first=None, lower=eps, upper=eps, dense=eps,
                     norm=Epsilon(epsilon if norm_epsilon is None else norm_epsilon), name="all-epsilon")
