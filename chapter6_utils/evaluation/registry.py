"""The registry of attribution methods the evaluations loop over, and the measured
columns of the chapter's Table 1 that need nothing else (compute cost, conservation)."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn

# The methods the registry runs, imported by name so that a reader (and an import-graph
# tool) sees what evaluation depends on; none of them imports evaluation, so no cycle.
from .. import _checks as checks
from .. import attention, deconvnet, lrp, saliency
from . import controls
from .._guard import check_target, model_guard

__all__ = ["Method", "METHODS", "CONTROLS", "GRADIENT_BASED", "get_method", "available_methods", "method_maps",
           "is_vit",
           "conservation_error", "relative_cost"]


# --------------------------------------------------------------------------- registry
def is_vit(model: nn.Module) -> bool:
    """True for a timm Vision Transformer (it has ``patch_embed`` and ``blocks``)."""
    return hasattr(model, "patch_embed") and hasattr(model, "blocks")


@dataclass(frozen=True)
class Method:
    """One attribution method as the evaluations see it.

    Attributes
    ----------
    name : str
        The registry key.
    target : callable
        The function, called as ``target(model, x, target, **options)``.
    signed : bool
        Whether the 2-D map keeps a sign.
    evidence_rule : {"abs", "positive", "value"}
        How the map is read as evidence for the class: ``"abs"`` (sensitivity: a large
        change either way), ``"positive"`` (signed relevance: only what supports the class)
        or ``"value"`` (an unsigned map as it is).
    reduce : {"sum", None}
        How an (N, C, H, W) result becomes (N, H, W): ``"sum"`` over channels (keeps the
        sign; LRP's conservation is over the sum) or ``None`` (already 2-D).
    defaults : dict
        Options passed to the function unless the caller overrides them.
    architecture : {"any", "cnn", "vit"}
        ``"cnn"`` needs ReLU modules or LRP rules.
    label : str
        The name in figures and tables.
    """

    name: str
    target: Callable
    signed: bool
    evidence_rule: str
    reduce: str | None = "sum"
    defaults: dict = field(default_factory=dict)
    architecture: str = "any"
    label: str = ""

    def __post_init__(self):
        if not callable(self.target):
            raise TypeError(f"Method {self.name!r}: target must be the method's function "
                            f"(e.g. saliency.gradient), got {self.target!r:.80}")

    def function(self) -> Callable:
        return self.target

    def applies_to(self, model: nn.Module) -> bool:
        return self.architecture == "any" or (self.architecture == "vit") == is_vit(model)

    def raw(self, model, x, target, **options):
        """The function's own output, with :attr:`defaults` filled in."""
        return self.function()(model, x, target, **{**self.defaults, **options})

    def __call__(self, model, x, target, **options) -> torch.Tensor:
        """The (N, H, W) map of ``x``."""
        out = self.raw(model, x, target, **options)
        if out.dim() == 4 and self.reduce == "sum":
            out = out.sum(1)
        if out.dim() != 3:
            raise ValueError(f"method {self.name!r} returned shape {tuple(out.shape)}; expected (N, H, W)")
        return out.detach()

    def evidence(self, m: torch.Tensor) -> torch.Tensor:
        """The map as non-negative evidence for the class (ranking, localisation)."""
        if self.evidence_rule == "abs":
            return m.abs()
        if self.evidence_rule == "positive":
            return m.clamp(min=0)
        return m

    def ranking(self, m: torch.Tensor) -> torch.Tensor:
        """What deletion and insertion sort by, most important first: the signed value for
        signed relevance (most supporting first, most opposing last), else the evidence."""
        return m if self.evidence_rule == "positive" else self.evidence(m)


def _m(name, target, signed, rule, label, **kw):
    return name, Method(name, target, signed, rule, label=label, **kw)


#: The methods of the chapter, by name. SmoothGrad's default keeps evaluations quick
#: (n_samples=10 instead of the chapter's 25; pass ``n_samples=25`` to match it).
METHODS: dict[str, Method] = dict([
    _m("gradient", saliency.gradient, True, "abs", "Gradient"),
    _m("saliency", saliency.saliency_map, False, "value", "Saliency", reduce=None),
    _m("smoothgrad", saliency.smoothgrad, False, "value", "SmoothGrad", reduce=None,
       defaults={"n_samples": 10, "sigma": 0.15, "seed": 0}),
    _m("gradient_x_input", saliency.gradient_x_input, True, "positive", "Gradient × input"),
    _m("deconvnet", deconvnet.deconvnet, True, "abs", "Deconvnet", architecture="cnn"),
    _m("guided_backprop", deconvnet.guided_backprop, True, "abs", "Guided backprop", architecture="cnn"),
    _m("lrp", lrp.lrp, True, "positive", "LRP (composite)", architecture="cnn"),
    _m("rollout", attention.rollout_map, False, "value", "Attention rollout", reduce=None,
       architecture="vit"),
])


def _lrp_with(composite: str) -> Callable:
    """``lrp.lrp`` with one of the ViT composites (a fresh composite per call)."""
    def method(model, x, target, **options):
        return lrp.lrp(model, x, target, composite=getattr(lrp, composite)(), **options)

    method.__name__ = method.__qualname__ = f"lrp_{composite}"
    return method


# Methods for Vision Transformers (gradient and gradient x input above apply to them too).
METHODS.update([
    _m("cls_attention", attention.cls_attention_map, False, "value", "Raw CLS attention (last block)",
       reduce=None, architecture="vit"),
    _m("rollout_max", attention.rollout_map, False, "value", "Rollout (max, 90% discarded)", reduce=None,
       defaults={"head_fusion": "max", "discard_ratio": 0.9}, architecture="vit"),
    _m("gradient_rollout", attention.gradient_rollout_map, False, "value", "Gradient-weighted rollout",
       reduce=None, architecture="vit"),
    _m("attn_lrp", _lrp_with("attn_lrp"), True, "positive", "AttnLRP", architecture="vit"),
    _m("cp_lrp", _lrp_with("cp_lrp"), True, "positive", "CP-LRP", architecture="vit"),
])


#: Maps that ignore the model (``evaluation.controls``), called as methods are and run
#: through every test as reference rows: a verdict rule that one of them passes is no rule.
CONTROLS: dict[str, Method] = dict([
    _m("edge", controls.edge_map, False, "value", "Control: input edges", reduce=None),
    _m("constant", controls.constant_map, False, "value", "Control: constant", reduce=None),
    _m("noise", controls.noise_map, False, "value", "Control: uniform noise", reduce=None),
])

#: Methods that compute a gradient of the model (a backward pass, or one per sample).
GRADIENT_BASED = ("gradient", "saliency", "smoothgrad", "gradient_x_input", "deconvnet", "guided_backprop", "lrp",
                  "gradient_rollout", "attn_lrp", "cp_lrp")


def get_method(method) -> Method:
    """A :class:`Method` from a registry name, a control's name (:data:`CONTROLS`) or a
    Method (returned as it is)."""
    if isinstance(method, Method):
        return method
    if method in METHODS:
        return METHODS[method]
    if method in CONTROLS:
        return CONTROLS[method]
    raise ValueError(f"unknown method {method!r}; registered methods: {', '.join(METHODS)}; "
                     f"controls: {', '.join(CONTROLS)}")


def available_methods(model: nn.Module | None = None) -> list[str]:
    """Registered methods (that apply to ``model``, when one is given)."""
    return [n for n, m in METHODS.items() if model is None or m.applies_to(model)]


def method_maps(model, x, target, methods=None, options=None) -> dict[str, torch.Tensor]:
    """{name: (N, H, W) map} for ``methods`` (default: :func:`available_methods` of the
    model); ``options`` maps a name to extra options for that method."""
    if isinstance(methods, (str, Method)):
        methods = [methods]  # one method by name
    names = available_methods(model) if methods is None else [get_method(m).name for m in methods]
    options = _check_options(options, names)
    return {n: get_method(n)(model, x, target, **options.get(n, {})) for n in names}


def _resolve_methods(methods, options) -> tuple[list, list, dict]:
    """The methods a sweep runs, as (Method objects, their names, checked options).

    ``methods``: one method or control (a name or a :class:`Method`) or a non-empty list of
    them; ``options``: as in :func:`_check_options`. The randomisation sweeps share this.
    """
    if isinstance(methods, (str, Method)):
        methods = [methods]
    if not isinstance(methods, (list, tuple)) or not methods:
        raise TypeError("methods must be a non-empty list of method or control names (evaluation.METHODS, "
                        f"evaluation.CONTROLS), got {methods!r}")
    chosen = [get_method(m) for m in methods]
    names = [m.name for m in chosen]
    return chosen, names, _check_options(options, names)


def _check_options(options, names) -> dict:
    """``options``: None or {method name: {option: value}} for methods among ``names``."""
    if options is None:
        return {}
    if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
        raise TypeError(f"options must be a dict {{method name: {{option: value}}}}, got {options!r:.80}")
    # a typo, not a method for another model
    unknown = [k for k in options if k not in names and k not in METHODS and k not in CONTROLS]
    if unknown:
        raise ValueError(f"options names {unknown}, which are no methods (run: {', '.join(names)}; registered: "
                         f"{', '.join(METHODS)})")
    return options


# --------------------------------------------------------------------------- Table 1 columns
def conservation_error(model, method, x, target, **options) -> torch.Tensor:
    """``|sum_i R_i - S_c(x)| / |S_c(x)|`` per image, (N,): how far the sum of the method's
    raw output (over channels and pixels) is from the class score, equation 4 (book/equations.md). Zero for a
    method that conserves; for a gradient the sum has other units and the number only
    says that nothing is conserved."""
    method = get_method(method)
    if not method.signed:
        raise ValueError(f"method {method.name!r} gives an unsigned map; conservation "
                         "(equation 4 (book/equations.md)) is a property of signed relevance, and a sum of "
                         "magnitudes says nothing about it (Table 1 prints n/a)")
    raw = method.raw(model, x, target, **options)
    total = raw.flatten(1).sum(1)
    target = check_target(target, x.shape[0], device=x.device)
    with model_guard(model), torch.no_grad():
        s = model(x).gather(1, target[:, None])[:, 0]
    return ((total - s).abs() / s.abs()).detach()


def relative_cost(model, method, x, target, repeat: int = 7, *, timer=time.perf_counter, **options) -> float:
    """Wall time of ``method`` on ``x`` over that of one plain forward and backward pass of
    the same model to the input, the two timed in turn in one loop (interleaved, so
    that a machine that slows down or speeds up mid-way slows both alike): the median of
    ``repeat`` (at least 7) method timings over the median of as many baseline timings,
    after one untimed call of each. A ratio carries over between machines better than
    seconds do, though still only roughly; it is a timing, so a benchmark reads it, never
    a test's exact assertion. ``timer`` is the clock read around each call (seconds,
    monotonic); a test hands in a counter to check the arithmetic without timing anything."""
    repeat = checks.integer(repeat, "repeat", low=7, hint="interleaved timings of each (the median counts); "
                            "fewer than 7 give a median that one slow call moves")
    m = get_method(method)
    target_t = check_target(target, x.shape[0], device=x.device)

    def forward_backward():
        with model_guard(model):
            xx = x.detach().clone().requires_grad_(True)
            torch.autograd.grad(model(xx).gather(1, target_t[:, None]).sum(), xx)

    def timed(fn):
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        t = timer()
        fn()
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        return timer() - t

    def run_method():
        m(model, x, target, **options)

    run_method(), forward_backward()  # first calls pay for allocations and lazy initialisation
    base, own = [], []
    for _ in range(repeat):
        base.append(timed(forward_backward))
        own.append(timed(run_method))
    return statistics.median(own) / statistics.median(base)
