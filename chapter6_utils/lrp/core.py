"""``lrp``: Layer-wise Relevance Propagation in one forward and one backward pass, and the
``conservation`` audit (Bach et al., 2015; Montavon et al., 2019; equations 4 to 9 (book/equations.md))."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .._guard import attribution_method, class_scores
from .._hooks import hooked
from .canonize import _canonize
from .composites import Composite, chapter
from .rules import MaxAsAverage, Rule
from .transformer import TransformerComposite, attn_lrp
from .vit import is_transformer

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
class _Stage:
    name: str
    input: torch.Tensor
    output: torch.Tensor


@dataclass
class _Context:
    input: torch.Tensor
    record: bool
    extra_leaves: list = field(default_factory=list)  # z^B's bounds
    records: list = field(default_factory=list)
    stages: list = field(default_factory=list)  # a ViT's blocks: relevance at their boundaries
    logits: torch.Tensor | None = None
    composite: object = None


def _prepare(model, x, composite, maxpool):
    if maxpool not in ("winner", "average"):
        raise ValueError(f"maxpool must be 'winner' (relevance to the maximum) or 'average' "
                         f"(split in proportion, as average pooling), got {maxpool!r}")
    if is_transformer(model):
        composite = attn_lrp() if composite is None else composite
        if not isinstance(composite, TransformerComposite):
            raise TypeError(f"{type(model).__name__} is a transformer: its LayerNorms, softmax and attention "
                            f"products need a transformer composite, lrp.attn_lrp() or lrp.cp_lrp(); got {composite!r}")
        net, plan = _canonize(model, x)
        named = list(net.named_modules())
        rules = composite.assign(named)
    else:
        composite = chapter() if composite is None else composite
        if isinstance(composite, TransformerComposite):
            raise TypeError(f"composite {composite.name} is for Vision Transformers; for {type(model).__name__} "
                            "use a CNN composite such as lrp.chapter()")
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
    return net, plan, [(n, m, rules[n]) for n, m in named if n in rules], composite


def _grads(total, tensors):
    """``d total / d t`` for each tensor; None for one that carries no gradient (a
    rule held it constant, or nothing above it depends on it)."""
    live = [i for i, t in enumerate(tensors) if t.requires_grad]
    got = torch.autograd.grad(total, [tensors[i] for i in live], allow_unused=True) if live else ()
    out = [None] * len(tensors)
    for i, g in zip(live, got):
        out[i] = g
    return out


def _forward(model, x, target, composite, maxpool, record):
    """One forward pass of the canonised copy with every rule hooked in; returns the
    scores (with their graph), the input leaves and the context."""
    net, plan, layers, composite = _prepare(model, x, composite, maxpool)
    x0 = x.detach().clone().requires_grad_(True)
    ctx = _Context(x0, record, composite=composite)

    rule_of = {module: (name, rule) for name, module, rule in layers}
    stage_of = {net.get_submodule(name): name for name in (getattr(net, "lrp_stages", ()) if record else ())}

    def rule_hook(module, inputs, output):
        name, rule = rule_of[module]
        y, branches = rule.propagate(module, inputs, output, ctx)
        if ctx.record:
            ctx.records.append(_Record(name, module, rule, inputs, y, branches))
        return y

    def stage_hook(module, inputs, output):
        ctx.stages.append(_Stage(stage_of[module], inputs[0], output))

    # On the throwaway copy only; removed once the graph is built (the check below reruns the plain copy).
    with hooked(rule_of, post=rule_hook), hooked(stage_of, post=stage_hook):
        ctx.logits = net(x0)
    plan.verify(model, net, x, ctx.logits)  # the copy computes what the model computes, or an error
    scores = class_scores(ctx.logits, target, int(target.max()))
    return scores, ctx


def _input_relevance(leaves, grads):
    # x g_x (+ l g_l + h g_h under z^B): each leaf times the gradient of the score at it
    return sum(t.detach() * g if g is not None else torch.zeros_like(t) for t, g in zip(leaves, grads))


def _layer_relevance(inputs, grads):
    # The relevance at a layer's inputs: summed when they have one shape (a residual
    # sum's two branches), a tuple when they differ (the operands of q k^T)
    parts = [t.detach() * g if g is not None else torch.zeros_like(t) for t, g in zip(inputs, grads)]
    return sum(parts) if len({p.shape for p in parts}) == 1 else tuple(parts)


@attribution_method
def lrp(model, x, target, *, composite: Composite | None = None, maxpool: str = "winner",
        return_layers: bool = False):
    """Layer-wise Relevance Propagation: the class score split over the input values.

    The score ``S_c`` (pre-softmax) is passed backward layer by layer with the rule the
    composite gives each layer (equations 5 to 8 (book/equations.md)); the input relevance sums to ``S_c``
    minus what biases and stabilisers absorbed (equation 4 (book/equations.md); exact for LRP-0 on a
    bias-free ReLU network, where it equals gradient x input). Bach et al. (2015), "On
    pixel-wise explanations ... by layer-wise relevance propagation"; composites:
    Montavon et al. (2019), "Layer-wise relevance propagation: an overview".

    Parameters
    ----------
    model : torch.nn.Module
        A network of Conv2d, Linear, ReLU, dropout, flatten, max/average pooling,
        BatchNorm next to a linear layer and torchvision ResNet blocks (canonised on a
        light copy: the model itself is not touched; see ``lrp.canonize``). The copy
        must reproduce the model's output on ``x`` to ``sqrt(eps)`` of the dtype, or
        ``UnsupportedLayerError`` names the module where the two part.
    x : torch.Tensor
        (N, C, H, W) normalised input.
    target : int or torch.Tensor
        An int or N class indices.
    composite : Composite, optional
        The rule schedule; None is the chapter's (``lrp.chapter()``: z^B with
        ImageNet pixel bounds, gamma 0.25 on the lower half of the convolutions,
        epsilon 0.25 on the upper half, epsilon 1e-6 on the dense head).
    maxpool : {"winner", "average"}, default "winner"
        ``"winner"`` (all relevance to the maximum, the gradient's route) or
        ``"average"`` (split in proportion to the inputs of the window).
    return_layers : bool, default False
        Also return ``{layer name: relevance at that layer's input}``
        (the shape of that input, forward order; a tensor read by two layers, as a
        residual block's input, shows its total relevance under both) and
        ``"output"``: (N, classes), ``S_c`` at the target, zero elsewhere.

    Returns
    -------
    torch.Tensor or (torch.Tensor, dict)
        (N, C, H, W) like ``x``, signed; with ``return_layers=True`` a pair
        ``(relevance, layers)``.

    Notes
    -----
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
    grads = _grads(scores.sum(), leaves + flat)
    relevance = _input_relevance(leaves, grads[:len(leaves)])
    layers, i = {}, len(leaves)
    for r in ctx.records:
        if r.inputs[0] is ctx.input:
            layers[r.name] = relevance
        else:
            layers[r.name] = _layer_relevance(r.inputs, grads[i:i + len(r.inputs)])
            i += len(r.inputs)
    out = torch.zeros_like(ctx.logits.detach())
    layers["output"] = out.scatter_(1, target[:, None], scores.detach()[:, None])
    return relevance, layers


@dataclass
class ConservationTable:
    """Per layer (forward order), summed over the batch: the relevance reaching the layer
    from above (``r_out``), what it passes to its input (``r_in``), and what its rule
    absorbed: in the bias, in the stabiliser/epsilon, and any rest (``leak``: rounding,
    or mass lost elsewhere). ``score`` is sum S_c, ``input`` the input relevance sum.

    For a Vision Transformer each block is one row (``type`` Block): ``r_out`` and
    ``r_in`` at the block's output and input, ``bias`` and ``stabiliser`` summed over
    its layers, ``leak`` what the block's rules do not conserve (AttnLRP's softmax).
    ``layers`` holds the per-layer rows inside the blocks too (:meth:`detail`)."""
    rows: list
    score: float
    input: float
    layers: list = field(default_factory=list)

    def detail(self) -> "ConservationTable":
        """The table with one row per layer, inside the blocks too."""
        return ConservationTable(self.layers or self.rows, self.score, self.input, self.layers)

    def __str__(self):
        head = f"{'layer':<24}{'type':<18}{'rule':<16}{'R out':>12}{'R in':>12}{'bias':>11}{'eps/stab':>11}{'leak':>10}"
        lines = [head, "-" * len(head)]
        for r in self.rows:
            lines.append(f"{r['layer']:<24}{r['type']:<18}{r['rule']:<16}{r['r_out']:>12.5g}{r['r_in']:>12.5g}"
                         f"{r['bias']:>11.3g}{r['stabiliser']:>11.3g}{r['leak']:>10.2g}")
        absorbed = sum(r["bias"] + r["stabiliser"] for r in self.rows)
        leaked = sum(r["leak"] for r in self.rows)
        lines.append(f"score {self.score:.6g} = input relevance {self.input:.6g} + absorbed {absorbed:.6g} "
                     f"+ leaked {leaked:.3g} (+ rest {self.score - self.input - absorbed - leaked:.2g})")
        return "\n".join(lines)

    _repr_pretty_ = lambda self, p, cycle: p.text(str(self))  # noqa: E731  (IPython display)


def _row(r, g_out):
    """One layer's audit row from its record and the gradient at its output."""
    out = r.output.detach()
    r_out_map = out * g_out if g_out is not None else torch.zeros_like(out)  # R = z g per output neuron
    # The layer's own share of its inputs' relevance: its rule rerun on detached inputs
    # (a residual block's input also collects relevance through the branch). An input
    # held constant in the real pass (CP-LRP's attention) stays constant here.
    local = tuple(t.detach().requires_grad_(t.requires_grad) for t in r.inputs)
    local_ctx = _Context(local[0], False)
    y, _ = r.rule.propagate(r.module, local, r.module.forward(*local), local_ctx)
    ins = [t for t in list(local) + local_ctx.extra_leaves if t.requires_grad]
    r_in = 0.0
    if g_out is not None and ins and y.requires_grad:
        g_in = torch.autograd.grad(y, ins, grad_outputs=g_out, allow_unused=True)
        r_in = float(sum((t.detach() * g).sum() for t, g in zip(ins, g_in) if g is not None))
    bias = stab = 0.0
    for b in r.branches:
        share = r_out_map if b.mask is None else torch.where(b.mask, r_out_map, torch.zeros_like(r_out_map))
        safe = torch.where(b.stabilised == 0, torch.ones_like(b.stabilised), b.stabilised)
        u = torch.where(b.stabilised == 0, torch.zeros_like(share), share / safe)
        stab += float((u * (b.stabilised - b.raw)).sum())
        if b.bias is not None:
            bias += float((u * b.bias).sum())
    r_out = float(r_out_map.sum())
    return dict(layer=r.name, type=type(r.module).__name__, rule=r.rule.name, r_out=r_out, r_in=r_in,
                bias=bias, stabiliser=stab, leak=r_out - r_in - bias - stab)


def _by_stage(rows, stages, grads, rule_name):
    """Rows inside a stage (a ViT block) merged into one row per stage, measured at the
    stage's boundaries; rows outside stay as they are."""
    def stage_of(layer):
        return next((s.name for s in stages if layer.startswith(s.name + ".")), None)

    def relevance(t, g):
        return float((t.detach() * g).sum()) if g is not None else 0.0

    merged, done = [], set()
    for row in rows:
        name = stage_of(row["layer"])
        if name is None:
            merged.append(row)
            continue
        if name in done:
            continue
        done.add(name)
        k = next(i for i, s in enumerate(stages) if s.name == name)
        members = [r for r in rows if stage_of(r["layer"]) == name]
        r_out, r_in = relevance(stages[k].output, grads[2 * k + 1]), relevance(stages[k].input, grads[2 * k])
        bias, stab = sum(r["bias"] for r in members), sum(r["stabiliser"] for r in members)
        merged.append(dict(layer=name, type="Block", rule=rule_name, r_out=r_out, r_in=r_in, bias=bias,
                           stabiliser=stab, leak=r_out - r_in - bias - stab))
    return merged


@attribution_method
def conservation(model, x, target, composite=None, *, maxpool: str = "winner"):
    """The conservation audit (equation 4 (book/equations.md)): for each layer with a rule, the relevance it
    receives and passes on and what its bias and stabiliser absorbed, as a
    :class:`ConservationTable`. Between these layers relevance passes unchanged
    (ReLU, flatten, winner-take-all max-pooling, residual sums), so
    ``score = input + absorbed + leaked``; leaked is zero for conservative rules.

    On a timm Vision Transformer (composite :func:`~.transformer.attn_lrp`, the
    default, or :func:`~.transformer.cp_lrp`) each block is one row, measured at its
    boundaries; ``table.detail()`` lists every layer inside the blocks too (the
    softmax row shows AttnLRP's leak)."""
    scores, ctx = _forward(model, x, target, composite, maxpool, True)
    leaves = [ctx.input] + ctx.extra_leaves
    outs = [r.output for r in ctx.records]
    bounds = [t for s in ctx.stages for t in (s.input, s.output)]
    grads = _grads(scores.sum(), leaves + outs + bounds)
    relevance = _input_relevance(leaves, grads[:len(leaves)])
    rows = [_row(r, g) for r, g in zip(ctx.records, grads[len(leaves):len(leaves) + len(outs)])]
    table = ConservationTable(rows, float(scores.detach().sum()), float(relevance.sum()), rows)
    if ctx.stages:
        table.rows = _by_stage(rows, ctx.stages, grads[len(leaves) + len(outs):], ctx.composite.name)
    return table
