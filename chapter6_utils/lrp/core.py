"""``lrp``: Layer-wise Relevance Propagation in one forward and one backward pass, and the
``conservation`` audit (Bach et al., 2015; Montavon et al., 2019; equations.md 4 to 9)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .._guard import attribution_method, class_scores
from .canonize import _canonize
from .composites import Composite, chapter
from .rules import MaxAsAverage, Rule

__all__ = ["lrp", "conservation", "ConservationTable"]


@dataclass
class _Record:
    name: str
    module: nn.Module
    rule: Rule
    inputs: tuple
    output: torch.Tensor
    branches: list


@dataclass
class _Context:
    input: torch.Tensor
    record: bool
    extra_leaves: list = field(default_factory=list)  # z^B's bounds
    records: list = field(default_factory=list)
    logits: torch.Tensor | None = None


def _prepare(model, x, composite, maxpool):
    if maxpool not in ("winner", "average"):
        raise ValueError(f"maxpool must be 'winner' (relevance to the maximum) or 'average' "
                         f"(split in proportion, as average pooling), got {maxpool!r}")
    if composite is None:
        composite = chapter()
    if not isinstance(composite, Composite):
        raise TypeError(f"composite must be a chapter6_utils.lrp.Composite (e.g. lrp.chapter()), got {composite!r}")
    net, plan = _canonize(model, x)
    # Forward order, not registration order: the composite's "first" layer is the one
    # that reads the pixels, and its lower/upper split follows the depth of the forward
    # pass (modules the forward never calls go last and never fire).
    named = sorted(net.named_modules(), key=lambda item: plan.order.get(item[0], len(plan.order)))
    rules = composite.assign(named)
    if maxpool == "average":
        stabiliser = getattr(composite.norm, "epsilon", 1e-6)  # the composite's pooling stabiliser
        rules.update({n: MaxAsAverage(stabiliser) for n, m in named if isinstance(m, nn.MaxPool2d)})
    return net, plan, [(n, m, rules[n]) for n, m in named if n in rules]


def _forward(model, x, target, composite, maxpool, record):
    """One forward pass of the canonised copy with every rule hooked in; returns the
    scores (with their graph), the input leaves and the context."""
    net, plan, layers = _prepare(model, x, composite, maxpool)
    x0 = x.detach().clone().requires_grad_(True)
    ctx = _Context(x0, record)

    def hook_for(name, rule: Rule):
        def hook(module, inputs, output):
            y, branches = rule.propagate(module, inputs, output, ctx)
            if ctx.record:
                ctx.records.append(_Record(name, module, rule, inputs, y, branches))
            return y
        return hook

    handles = [module.register_forward_hook(hook_for(name, rule))  # on the throwaway copy only
               for name, module, rule in layers]
    ctx.logits = net(x0)
    for h in handles:
        h.remove()  # the graph is built; the check below reruns the plain copy
    plan.verify(model, net, x, ctx.logits)  # the copy computes what the model computes, or an error
    scores = class_scores(ctx.logits, target, int(target.max()))
    return scores, ctx


def _input_relevance(leaves, grads):
    # x g_x (+ l g_l + h g_h under z^B): each leaf times the gradient of the score at it
    return sum(t.detach() * g for t, g in zip(leaves, grads))


@attribution_method
def lrp(model, x, target, *, composite: Composite | None = None, maxpool: str = "winner",
        return_layers: bool = False):
    """Layer-wise Relevance Propagation: the class score split over the input values.

    The score ``S_c`` (pre-softmax) is passed backward layer by layer with the rule the
    composite gives each layer (equations 5 to 8); the input relevance sums to ``S_c``
    minus what biases and stabilisers absorbed (equation 4; exact for LRP-0 on a
    bias-free ReLU network, where it equals gradient x input). Bach et al. (2015), "On
    pixel-wise explanations ... by layer-wise relevance propagation"; composites:
    Montavon et al. (2019), "Layer-wise relevance propagation: an overview".

    Args:
        model: a network of Conv2d, Linear, ReLU, dropout, flatten, max/average pooling,
            BatchNorm next to a linear layer and torchvision ResNet blocks (canonised on a
            light copy: the model itself is not touched; see ``lrp.canonize``). The copy
            must reproduce the model's output on ``x`` to ``sqrt(eps)`` of the dtype, or
            ``UnsupportedLayerError`` names the module where the two part.
        x: (N, C, H, W) normalised input; target: an int or N class indices.
        composite: the rule schedule; None is the chapter's (``lrp.chapter()``: z^B with
            ImageNet pixel bounds, gamma 0.25 on the lower half of the convolutions,
            epsilon 0.25 on the upper half, epsilon 1e-6 on the dense head).
        maxpool: ``"winner"`` (all relevance to the maximum, the gradient's route) or
            ``"average"`` (split in proportion to the inputs of the window).
        return_layers: also return ``{layer name: relevance at that layer's input}``
            (the shape of that input, forward order; a tensor read by two layers, as a
            residual block's input, shows its total relevance under both) and
            ``"output"``: (N, classes), ``S_c`` at the target, zero elsewhere.

    Returns:
        (N, C, H, W) like ``x``, signed; with ``return_layers=True`` a pair
        ``(relevance, layers)``.

    Conventions where implementations differ (this one matches Zennit 0.5.1; details in
    :mod:`chapter6_utils.lrp.rules`): stabiliser ``eps * sign`` with ``sign(0) = +1``;
    gamma modifies the bias like the weights; z^B has no bias in its denominator; the
    output relevance is ``S_c`` itself (Zennit starts from whatever it is given);
    max-pooling is winner-take-all unless ``maxpool="average"``; a merged BatchNorm
    becomes the identity (Zennit leaves ``x / sqrt(1 + eps)``: see ``lrp.canonize``).
    """
    if not isinstance(return_layers, bool):
        raise TypeError(f"return_layers must be True or False, got {return_layers!r}")
    scores, ctx = _forward(model, x, target, composite, maxpool, return_layers)
    leaves = [ctx.input] + ctx.extra_leaves
    if not return_layers:
        return _input_relevance(leaves, torch.autograd.grad(scores.sum(), leaves))
    hidden = [r for r in ctx.records if r.inputs[0] is not ctx.input]
    flat = [t for r in hidden for t in r.inputs]
    grads = torch.autograd.grad(scores.sum(), leaves + flat)
    relevance = _input_relevance(leaves, grads[:len(leaves)])
    layers, i = {}, len(leaves)
    for r in ctx.records:
        if r.inputs[0] is ctx.input:
            layers[r.name] = relevance
        else:
            layers[r.name] = _input_relevance(r.inputs, grads[i:i + len(r.inputs)])
            i += len(r.inputs)
    out = torch.zeros_like(ctx.logits.detach())
    layers["output"] = out.scatter_(1, target[:, None], scores.detach()[:, None])
    return relevance, layers


@dataclass
class ConservationTable:
    """Per layer (forward order), summed over the batch: the relevance reaching the layer
    from above (``r_out``), what it passes to its input (``r_in``), and what its rule
    absorbed: in the bias, in the stabiliser/epsilon, and any rest (``leak``: rounding,
    or mass lost elsewhere). ``score`` is sum S_c, ``input`` the input relevance sum."""
    rows: list
    score: float
    input: float

    def __str__(self):
        head = f"{'layer':<24}{'type':<18}{'rule':<16}{'R out':>12}{'R in':>12}{'bias':>11}{'eps/stab':>11}{'leak':>10}"
        lines = [head, "-" * len(head)]
        for r in self.rows:
            lines.append(f"{r['layer']:<24}{r['type']:<18}{r['rule']:<16}{r['r_out']:>12.5g}{r['r_in']:>12.5g}"
                         f"{r['bias']:>11.3g}{r['stabiliser']:>11.3g}{r['leak']:>10.2g}")
        absorbed = sum(r["bias"] + r["stabiliser"] for r in self.rows)
        lines.append(f"score {self.score:.6g} = input relevance {self.input:.6g} + absorbed {absorbed:.6g} "
                     f"(+ rest {self.score - self.input - absorbed:.2g})")
        return "\n".join(lines)

    _repr_pretty_ = lambda self, p, cycle: p.text(str(self))  # noqa: E731  (IPython display)


@attribution_method
def conservation(model, x, target, composite: Composite | None = None, *, maxpool: str = "winner"):
    """The conservation audit (equation 4): for each layer with a rule, the relevance it
    receives and passes on and what its bias and stabiliser absorbed, as a
    :class:`ConservationTable`. Between these layers relevance passes unchanged
    (ReLU, flatten, winner-take-all max-pooling), so ``score = input + absorbed``."""
    scores, ctx = _forward(model, x, target, composite, maxpool, True)
    leaves = [ctx.input] + ctx.extra_leaves
    outs = [r.output for r in ctx.records]
    grads = torch.autograd.grad(scores.sum(), leaves + outs)
    relevance = _input_relevance(leaves, grads[:len(leaves)])
    rows = []
    for r, g_out in zip(ctx.records, grads[len(leaves):]):
        r_out_map = r.output.detach() * g_out  # relevance of each output neuron, R = z g
        # The layer's own share of its inputs' relevance: its rule rerun on detached
        # inputs (a residual block's input also collects relevance through the branch).
        local = tuple(t.detach().requires_grad_(True) for t in r.inputs)
        local_ctx = _Context(local[0], False)
        y, _ = r.rule.propagate(r.module, local, r.module.forward(*local), local_ctx)
        ins = list(local) + local_ctx.extra_leaves
        g_in = torch.autograd.grad(y, ins, grad_outputs=g_out, allow_unused=True)
        r_in = sum((t.detach() * g).sum() for t, g in zip(ins, g_in) if g is not None)
        bias = stab = 0.0
        for b in r.branches:
            share = r_out_map if b.mask is None else torch.where(b.mask, r_out_map, torch.zeros_like(r_out_map))
            safe = torch.where(b.stabilised == 0, torch.ones_like(b.stabilised), b.stabilised)
            u = torch.where(b.stabilised == 0, torch.zeros_like(share), share / safe)
            stab += float((u * (b.stabilised - b.raw)).sum())
            if b.bias is not None:
                bias += float((u * b.bias).sum())
        r_out, r_in = float(r_out_map.sum()), float(r_in)
        rows.append(dict(layer=r.name, type=type(r.module).__name__, rule=r.rule.name, r_out=r_out, r_in=r_in,
                         bias=bias, stabiliser=stab, leak=r_out - r_in - bias - stab))
    return ConservationTable(rows, float(scores.detach().sum()), float(relevance.sum()))
