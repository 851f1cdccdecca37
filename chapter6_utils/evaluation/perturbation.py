"""Chefer et al.'s perturbation protocol, and the ruler's effect by intervention, for every
registered method (CNNs and ViTs alike).

* :func:`perturbation_curve`: remove 10% to 90% of the pixels (set them to black) in the
  order of a map, most relevant first ("positive") or least relevant first
  ("negative"), and record whether the prediction still equals the label. Chefer, Gur and
  Wolf (2021), "Transformer interpretability beyond attention visualization", CVPR; their
  ViT evaluation script: 9 steps, the unperturbed accuracy as the point at 0, the area
  under the accuracy curve. A faithful map makes the positive area small and the
  negative area large.
* :func:`perturbation_test`: that protocol for several methods, each map computed for the
  predicted class and for the other class (the best-scoring class that was not
  predicted): a class-specific method gives different maps and areas, a class-free one
  (attention, rollout) the same.
* :func:`ruler_intervention`: the ground truth of the shortcut. A ruler is pasted onto
  images that had none (``synthetic.paste_rulers``); its true effect on each image is the
  change of the malignant logit, and a method's share of positive evidence on the pasted
  ruler should rank the images as that effect does (Spearman, with a bootstrap interval).
* :func:`protocol_table`: all of it beside the ruler mass and the pointing game, one row
  per method, each figure a mean over images with a 95% bootstrap interval.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .._guard import check_input, check_target, model_guard
from ..data import normalize
from .faithfulness import pointing_game, relevance_mass
from .registry import get_method

__all__ = ["FRACTIONS", "PerturbationCurve", "perturbation_curve", "PerturbationTable", "perturbation_test",
           "ruler_intervention", "protocol_table", "ProtocolTable"]

#: The removed fractions of Chefer et al.'s protocol; the point at 0 is the unperturbed image.
FRACTIONS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
_ORDERS = ("positive", "negative")


def _bootstrap(values: torch.Tensor, stat, n_boot: int = 1000, seed: int = 0):
    """``stat`` of ``values`` and its 95% percentile-bootstrap interval, resampling the
    first dimension. ``stat`` maps a batch of samples (B, N, ...) to (B,) statistics, so
    that all the resamples are computed at once."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(values), (n_boot, len(values)), generator=gen)
    draws = stat(values[idx]).double()
    lo, hi = torch.quantile(draws, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return float(stat(values[None])[0]), lo, hi


def _auc(hits: torch.Tensor, fractions: torch.Tensor) -> torch.Tensor:
    """Area under the accuracy curve (accuracy in %, removed fraction on x), trapezoid rule;
    ``hits`` (..., N, S) -> (...)."""
    return torch.trapezoid(100 * hits.double().mean(-2), fractions.double(), dim=-1)


def _mean(v: torch.Tensor) -> torch.Tensor:
    return v.double().nanmean(-1)  # NaN (a map with no evidence at all) is left out


def _average_ranks(v: torch.Tensor) -> torch.Tensor:
    # 1-based ranks with ties averaged, along the last dimension; a resample repeats
    # values, so ties are the rule here, not the exception
    less = (v[..., None, :] < v[..., :, None]).sum(-1, dtype=torch.float64)
    equal = (v[..., None, :] == v[..., :, None]).sum(-1, dtype=torch.float64)
    return less + (equal + 1) / 2


def _spearman(pairs: torch.Tensor) -> torch.Tensor:
    """Spearman correlation of pairs (..., N, 2) -> (...); NaN where one side is constant."""
    r = _average_ranks(pairs.double().transpose(-1, -2))  # (..., 2, N)
    r = r - r.mean(-1, keepdim=True)
    den = (r.square().sum(-1).prod(-1)).sqrt()
    return torch.where(den > 0, (r[..., 0, :] * r[..., 1, :]).sum(-1) / den, float("nan"))


@dataclass
class PerturbationCurve:
    """Accuracy as pixels are removed in one map's order.

    Attributes
    ----------
    order : str
        ``"positive"`` (most relevant first) or ``"negative"`` (least first).
    fractions : torch.Tensor
        (S,) removed share of the pixels, starting at 0.
    hits : torch.Tensor
        (N, S) bool, prediction == label after each removal.
    """

    order: str
    fractions: torch.Tensor
    hits: torch.Tensor

    @property
    def accuracy(self) -> torch.Tensor:
        return self.hits.float().mean(0)

    @property
    def auc(self) -> float:
        """Area under the accuracy (%) curve over the removed fraction (0 to 0.9 by default)."""
        return float(_auc(self.hits, self.fractions))

    def auc_interval(self, n_boot: int = 1000, seed: int = 0):
        """``(auc, low, high)``: the area and its 95% bootstrap interval over images."""
        return _bootstrap(self.hits, lambda h: _auc(h, self.fractions), n_boot, seed)


def perturbation_curve(model, x, labels, ranking, order: str = "positive", fractions=FRACTIONS,
                       batch_size: int = 256, unperturbed_hits: torch.Tensor | None = None) -> PerturbationCurve:
    """Chefer et al.'s (2021) perturbation test of one map per image.

    Parameters
    ----------
    x : torch.Tensor
        (N, C, H, W) normalised images; a removed pixel becomes black (all channels),
        as the protocol zeroes pixels before normalising.
    labels : int or torch.Tensor
        An int or N class indices: what a hit is compared with.
    ranking : torch.Tensor
        (N, H, W), most relevant = largest (``Method.ranking`` of a map).
    order : str, default "positive"
        ``"positive"`` removes the most relevant pixels first, ``"negative"`` the least.
    fractions : sequence of float, default FRACTIONS
        Removed shares in [0, 1), the first usually 0 (the unperturbed accuracy);
        ``int(fraction * H * W)`` pixels each, as in their script.
    unperturbed_hits : torch.Tensor, optional
        (N,) bool hits of ``x`` itself, when already known: the points
        that remove no pixel are then not recomputed (:func:`perturbation_test` shares
        them between all its curves).
    """
    check_input(model, x)
    n, _, h, w = x.shape
    if order not in _ORDERS:
        raise ValueError(f"order must be 'positive' (most relevant first) or 'negative', got {order!r}")
    if not isinstance(ranking, torch.Tensor) or ranking.shape != (n, h, w):
        shape = tuple(ranking.shape) if isinstance(ranking, torch.Tensor) else type(ranking).__name__
        raise ValueError(f"ranking has shape {shape}; expected (N, H, W) = {(n, h, w)}")
    if not bool(torch.isfinite(ranking).all()):
        raise ValueError("ranking has non-finite values: the map is broken, there is no order to remove pixels in")
    fractions = torch.as_tensor(fractions, dtype=torch.float64)
    if fractions.dim() != 1 or len(fractions) < 2 or not bool(((fractions >= 0) & (fractions < 1)).all()):
        raise ValueError(f"fractions must be at least two shares in [0, 1), got {fractions.tolist()}")
    labels = check_target(labels, n, device=x.device)
    key = ranking.detach().flatten(1).to(x.device)
    key = key if order == "positive" else -key
    # position[i, p]: where pixel p of image i comes in the removal order (0 = first); the
    # stable sort breaks ties by pixel index, so the test is deterministic.
    order_idx = key.argsort(dim=1, descending=True, stable=True)
    position = torch.empty_like(order_idx)
    position.scatter_(1, order_idx, torch.arange(h * w, device=x.device).expand(n, -1))
    position = position.view(n, 1, h, w)
    counts = [int(float(f) * h * w) for f in fractions]
    black = normalize(torch.zeros_like(x))
    per_batch = max(1, batch_size // n)
    hits = torch.empty(n, len(counts), dtype=torch.bool)
    todo = list(range(len(counts)))
    if unperturbed_hits is not None:
        hits[:, [j for j in todo if counts[j] == 0]] = unperturbed_hits.view(n, 1).cpu()
        todo = [j for j in todo if counts[j] > 0]
    with model_guard(model), torch.no_grad():
        for start in range(0, len(todo), per_batch):
            steps = todo[start:start + per_batch]
            batch = torch.cat([torch.where(position < counts[j], black, x) for j in steps])
            pred = model(batch).argmax(1).view(len(steps), n)
            hits[:, steps] = (pred == labels).T.cpu()
    return PerturbationCurve(order, fractions, hits)


@dataclass
class PerturbationTable:
    """:func:`perturbation_test`'s curves: ``curves[method][explained][order]``, with
    ``explained`` in ("predicted", "other") and ``order`` in ("positive", "negative")."""

    curves: dict
    labels: dict = field(default_factory=dict)

    def auc(self, method: str, explained: str = "predicted", order: str = "positive") -> float:
        return self.curves[method][explained][order].auc

    def class_gap(self, method: str, n_boot: int = 1000, seed: int = 0):
        """Positive-perturbation area when explaining the other class minus when explaining
        the predicted class, ``(gap, low, high)`` with a paired 95% bootstrap interval
        over images. A class-specific map removes the predicted class's evidence first
        only when asked for that class: the gap is positive. A class-free map gives 0."""
        c = self.curves[method]
        return _paired_difference(c["other"]["positive"], c["predicted"]["positive"], n_boot, seed)

    def difference(self, method: str, reference: str, explained: str = "predicted", order: str = "positive",
                   n_boot: int = 1000, seed: int = 0):
        """Area of ``method`` minus area of ``reference`` (e.g. the random control) on the
        same images, ``(difference, low, high)`` with a paired 95% bootstrap interval."""
        return _paired_difference(self.curves[method][explained][order], self.curves[reference][explained][order],
                                  n_boot, seed)

    def __str__(self):
        head = (f"{'method':<30}{'pos. AUC pred':>15}{'neg. AUC pred':>15}{'pos. AUC other':>16}"
                f"{'neg. AUC other':>16}")
        lines = [head, "-" * len(head)]

        def area(c, explained, order, width):
            return f"{c[explained][order].auc:.1f}".rjust(width) if order in c[explained] else "-".rjust(width)

        for name, c in self.curves.items():
            lines.append(f"{self.labels.get(name, name):<30}{area(c, 'predicted', 'positive', 15)}"
                         f"{area(c, 'predicted', 'negative', 15)}{area(c, 'other', 'positive', 16)}"
                         f"{area(c, 'other', 'negative', 16)}")
        return "\n".join(lines)

    _repr_pretty_ = lambda self, p, cycle: p.text(str(self))  # noqa: E731  (IPython display)


def _paired_difference(a: PerturbationCurve, b: PerturbationCurve, n_boot: int, seed: int):
    """AUC(a) - AUC(b), curves of the same images: each image's two curves are resampled
    together (a paired bootstrap), which is tighter than comparing two intervals."""
    both = torch.stack([a.hits, b.hits], dim=1)  # (N, 2, S)

    def diff(h):  # (B, N, 2, S) -> (B,)
        return _auc(h[..., 0, :], a.fractions) - _auc(h[..., 1, :], a.fractions)

    return _bootstrap(both, diff, n_boot, seed)


def _predicted_and_other(model, x):
    with model_guard(model), torch.no_grad():
        logits = model(x)
    top2 = logits.topk(2, dim=1).indices
    return top2[:, 0], top2[:, 1], logits


def perturbation_test(model, x, labels, methods, *, fractions=FRACTIONS, orders=_ORDERS, options=None,
                      batch_size: int = 256) -> PerturbationTable:
    """Chefer et al.'s protocol for each of ``methods`` (registry names or Methods): maps
    for the predicted class and for the other class (the best-scoring class not
    predicted), each removed in the ``orders`` given (positive and negative:
    :func:`perturbation_curve`). A class-free method's curves are computed once and
    used for both classes when its two maps are identical. ``options``: {method name:
    extra options}."""
    check_input(model, x)
    labels = check_target(labels, x.shape[0], device=x.device)
    if isinstance(orders, str) or not set(orders) <= set(_ORDERS) or not orders:
        raise ValueError(f"orders must be a non-empty tuple of {_ORDERS}, got {orders!r}")
    predicted, other, logits = _predicted_and_other(model, x)
    unperturbed = logits.argmax(1) == labels
    options = options or {}
    curves, names = {}, {}
    for method in methods:
        m = get_method(method)
        names[m.name] = m.label or m.name
        maps = {"predicted": m(model, x, predicted, **options.get(m.name, {}))}
        second = m(model, x, other, **options.get(m.name, {}))
        same = torch.equal(second, maps["predicted"])
        maps["other"] = maps["predicted"] if same else second
        curves[m.name] = {}
        for explained, mp in maps.items():
            if explained == "other" and same:
                curves[m.name]["other"] = curves[m.name]["predicted"]
                continue
            ranking = m.ranking(mp)
            curves[m.name][explained] = {o: perturbation_curve(model, x, labels, ranking, o, fractions, batch_size,
                                                               unperturbed_hits=unperturbed)
                                         for o in orders}
    return PerturbationTable(curves, names)


def ruler_intervention(model, methods, lesions, donors, *, target: int = 1, options=None, n_boot: int = 1000,
                       seed: int = 0) -> dict:
    """The ruler's true effect, by intervention, against the evidence each method puts on it.

    ``lesions``: a ``LesionSet`` of images without rulers; ``donors``: as many with rulers
    (``synthetic.paste_rulers`` copies each donor's ruler onto its image). The true
    effect of the pasted ruler on image i is ``S_target(with ruler) - S_target(without)``
    (the malignant logit by default). A method's attributed ruler mass is its evidence
    for ``target`` (:meth:`Method.evidence`: the positive part of signed relevance,
    ``|map|`` for a sensitivity map) summed over the pasted ruler's pixels: an amount,
    like the effect, not a share (a share also moves with the evidence elsewhere).

    Returns ``{"effect": (N,), method name: {"mass": (N,), "share": (N,), "rho": (rho,
    low, high)}}``: ``share`` the mass over the map's total evidence, ``rho`` the
    Spearman correlation of mass and effect across images with its 95% bootstrap
    interval. A method whose mass follows what the ruler actually does has rho near 1.
    """
    from ..synthetic import paste_rulers

    if len(lesions) == 0 or bool(lesions.has_ruler.any()):
        raise ValueError("lesions must be images without a ruler (lesions.select(ruler=False)): the "
                         "intervention pastes one on")
    pasted = paste_rulers(lesions, donors)
    device = next(model.parameters()).device
    x0, x1 = normalize(lesions.images).to(device), normalize(pasted.images).to(device)
    with model_guard(model), torch.no_grad():
        effect = (model(x1)[:, target] - model(x0)[:, target]).cpu()
    out = {"effect": effect}
    options = options or {}
    ruler = pasted.ruler_mask
    for method in methods:
        m = get_method(method)
        evidence = m.evidence(m(model, x1, target, **options.get(m.name, {}))).cpu()
        mass = (evidence * ruler).flatten(1).sum(1)
        share = relevance_mass(evidence, ruler)
        pairs = torch.stack([mass, effect], 1)
        out[m.name] = {"mass": mass, "share": share, "rho": _bootstrap(pairs, _spearman, n_boot, seed)}
    return out


@dataclass
class ProtocolTable:
    """:func:`protocol_table`'s rows: one dict per method with ``(value, low, high)``
    triples (95% bootstrap intervals over images): ``pos_pred``, ``neg_pred``,
    ``pos_other``, ``neg_other`` (areas under the accuracy curve, %), ``gap``
    (``pos_other - pos_pred``, paired), ``ruler_share``, ``pointing`` and ``rho``."""

    rows: list

    def __str__(self):
        cols = [("pos_pred", "pos. AUC pred", ".1f"), ("pos_other", "pos. AUC other", ".1f"),
                ("gap", "class gap", ".1f"), ("neg_pred", "neg. AUC pred", ".1f"),
                ("ruler_share", "ruler share", ".2f"), ("pointing", "pointing", ".2f"),
                ("rho", "intervention rho", ".2f")]
        head = f"{'method':<28}" + "".join(f"{title:>18}" for _, title, _ in cols)
        lines = [head, "-" * len(head)]
        for r in self.rows:
            cells = "".join(f"{format(r[k][0], f)} [{format(r[k][1], f)},{format(r[k][2], f)}]".rjust(18)
                            for k, _, f in cols)
            lines.append(f"{r['label'][:27]:<28}{cells}")
        return "\n".join(lines)

    _repr_pretty_ = lambda self, p, cycle: p.text(str(self))  # noqa: E731  (IPython display)


def protocol_table(model, methods, pool, *, n_perturb: int = 64, n_ruler: int = 48, options=None,
                   n_boot: int = 1000, seed: int = 0) -> tuple[ProtocolTable, PerturbationTable, dict]:
    """Every measure of this module and the two localisation measures, one row per method.

    ``pool``: a ``LesionSet`` of the biased split. The perturbation test runs on its first
    ``n_perturb`` images (labels from the set); the ruler share (relevance mass accuracy,
    Arras et al., 2022: the share of the evidence on the ruler) and the pointing game (is
    the map's maximum on the ruler?) on up to ``n_ruler`` malignant lesions with a ruler,
    explained for "malignant"; the intervention (:func:`ruler_intervention`) pastes the
    rulers of those onto up to ``n_ruler`` lesions without one. Returns ``(table,
    perturbation, intervention)``.
    """
    device = next(model.parameters()).device
    sample = pool[:n_perturb]
    perturb = perturbation_test(model, normalize(sample.images).to(device), sample.labels.to(device), methods,
                                options=options)
    ruled = pool.select(label=1, ruler=True)
    clean = pool.select(ruler=False)
    k = min(n_ruler, len(ruled), len(clean))
    if k < 2:
        raise ValueError(f"the pool has {len(ruled)} malignant lesions with a ruler and {len(clean)} without; "
                         "make it larger")
    ruled, clean = ruled[:k], clean[:k]
    intervention = ruler_intervention(model, methods, clean, ruled, options=options, n_boot=n_boot, seed=seed)
    x_ruled = normalize(ruled.images).to(device)
    rows = []
    options = options or {}
    for method in methods:
        m = get_method(method)
        evidence = m.evidence(m(model, x_ruled, 1, **options.get(m.name, {}))).cpu()
        share = relevance_mass(evidence, ruled.ruler_mask)
        hit = pointing_game(evidence, ruled.ruler_mask).double()
        curves = perturb.curves[m.name]
        rows.append(dict(name=m.name, label=m.label or m.name,
                         pos_pred=curves["predicted"]["positive"].auc_interval(n_boot, seed),
                         pos_other=curves["other"]["positive"].auc_interval(n_boot, seed),
                         neg_pred=curves["predicted"]["negative"].auc_interval(n_boot, seed),
                         neg_other=curves["other"]["negative"].auc_interval(n_boot, seed),
                         gap=perturb.class_gap(m.name, n_boot, seed),
                         ruler_share=_bootstrap(share, _mean, n_boot, seed),
                         pointing=_bootstrap(hit, _mean, n_boot, seed),
                         rho=intervention[m.name]["rho"]))
    return ProtocolTable(rows), perturb, intervention
