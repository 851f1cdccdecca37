"""Ground truth by intervention, and which metric agrees with it.

* :func:`ruler_effect`: for every biased-split image with a ruler, the ruler's true effect
  on the model is the change in the malignant logit when the same image is rendered
  without it (``synthetic.make_lesions(..., draw_rulers=False)``: every other pixel
  identical); for images without one, the change when one is pasted on
  (``synthetic.paste_rulers``). Per method, the Spearman correlation across images between
  the evidence the map puts on the ruler and that true effect, with a 95% bootstrap
  interval. On ``lesion_cnn_clean`` the true effect is near zero: evidence on the ruler
  there is an error of the method, not of the model.
* :func:`meta_evaluation`: for each metric of Table 1 (each randomisation test, deletion
  and insertion with each baseline, relevance mass, rank accuracy, pointing game), the
  Kendall tau between the order it puts the methods in and the order of the
  interventional truth, with a 95% bootstrap interval over images: the chapter's open
  question "how do we know an explanation is right?", on data where we do know.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import _checks as checks
from .._guard import model_guard
from .controls import MIN_IMAGES, Estimate
from .faithfulness import deletion_curve, insertion_curve, pointing_game, relevance_mass, relevance_rank_accuracy
from .registry import get_method

__all__ = ["RulerEffect", "ruler_effect", "MetaEvaluation", "meta_evaluation", "kendall_tau"]


def _ranks(v: torch.Tensor) -> torch.Tensor:
    """Average 1-based ranks along the last dimension (ties averaged), any leading shape."""
    less = (v[..., None, :] < v[..., :, None]).sum(-1, dtype=torch.float64)
    equal = (v[..., None, :] == v[..., :, None]).sum(-1, dtype=torch.float64)
    return less + (equal + 1) / 2


def _spearman_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman correlation of a[..., i] with b[..., i] over the last dimension."""
    ra, rb = _ranks(a.double()), _ranks(b.double())
    ra, rb = ra - ra.mean(-1, keepdim=True), rb - rb.mean(-1, keepdim=True)
    den = (ra.square().sum(-1) * rb.square().sum(-1)).sqrt()
    return torch.where(den > 0, (ra * rb).sum(-1) / den.clamp_min(1e-300), float("nan"))


def kendall_tau(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Kendall's tau-b between a[..., i] and b[..., i] over the last dimension (ties in
    either ordering counted as tau-b counts them). NaN where one side is constant."""
    da = torch.sign(a[..., :, None] - a[..., None, :]).double()
    db = torch.sign(b[..., :, None] - b[..., None, :]).double()
    num = (da * db).sum((-1, -2))
    den = (da.abs().sum((-1, -2)) * db.abs().sum((-1, -2))).sqrt()
    return torch.where(den > 0, num / den.clamp_min(1e-300), float("nan"))


def _interval(draws: torch.Tensor, value: float, n: int) -> Estimate:
    draws = draws[~draws.isnan()]
    if value != value or len(draws) < 100:
        return Estimate(float("nan"), float("nan"), float("nan"), n)
    lo, hi = torch.quantile(draws, torch.tensor([0.025, 0.975], dtype=draws.dtype)).tolist()
    return Estimate(value, lo, hi, n)


@dataclass
class RulerEffect:
    """:func:`ruler_effect`'s results for one model.

    Attributes
    ----------
    effect : torch.Tensor
        (N,) true effect of the ruler on the malignant logit, per image.
    mass : dict
        {method: (N,)} evidence the map puts on the ruler's pixels (an amount).
    rho : dict
        {method: Estimate} Spearman of mass with effect across images, 95% interval.
    pasted : torch.Tensor
        (N,) bool, True where the ruler was pasted (the image had none).
    """

    model: str
    effect: torch.Tensor
    mass: dict
    rho: dict
    pasted: torch.Tensor
    n_boot: int = 1000

    def resampled_rho(self, method: str, idx: torch.Tensor) -> torch.Tensor:
        """ρ of ``method`` on resamples ``idx`` (B, N) of the images, (B,)."""
        return _spearman_rows(self.mass[method][idx], self.effect[idx])


def ruler_effect(model, methods, *, n: int = 160, seed: int | None = None, model_name: str = "",
                 options=None, n_boot: int = 1000) -> RulerEffect:
    """The ruler's true effect on ``model``, image by image, against each method's evidence
    on the ruler (see the module's docstring).

    Parameters
    ----------
    n : int, default 160
        Biased-split images drawn (``synthetic.make_lesions(n, "biased", seed)``,
        default seed ``synthetic.TEST_SEED``); all of them are used: those with a ruler
        are compared with their ruler-free rendering, those without get the ruler of a
        ruled image pasted on. At least 32 images in all.
    methods : iterable of str or Method
        Registry names, controls or Methods, explained for "malignant" on the
        image with the ruler.
    """
    from .. import synthetic
    from ..data import normalize

    n = checks.integer(n, "n", low=MIN_IMAGES, hint="biased-split images the truth is measured on")
    seed = synthetic.TEST_SEED if seed is None else checks.seed(seed)
    with_ = synthetic.make_lesions(n, "biased", seed)
    without = synthetic.make_lesions(n, "biased", seed, draw_rulers=False)
    ruled = with_.has_ruler
    if int(ruled.sum()) == 0:
        raise ValueError("no image of this set has a ruler: draw more images")
    # images without a ruler get the ruler of a ruled image (cycled), pasted on
    donors = with_[ruled.nonzero()[:, 0]]
    bare_idx = (~ruled).nonzero()[:, 0]
    donor_idx = torch.arange(len(bare_idx)) % len(donors)
    pasted = synthetic.paste_rulers(with_[bare_idx], donors[donor_idx])
    after = torch.cat([with_.images[ruled], pasted.images])      # with the ruler
    before = torch.cat([without.images[ruled], with_.images[bare_idx]])  # the same image without it
    mask = torch.cat([with_.ruler_mask[ruled], pasted.ruler_mask])
    device = next(model.parameters()).device
    x1, x0 = normalize(after).to(device), normalize(before).to(device)
    with model_guard(model), torch.no_grad():
        effect = (model(x1)[:, 1] - model(x0)[:, 1]).double().cpu()
    options = options or {}
    mass, rho = {}, {}
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(len(effect), (n_boot, len(effect)), generator=gen)
    for method in methods:
        m = get_method(method)
        evidence = m.evidence(m(model, x1, 1, **options.get(m.name, {}))).double().cpu()
        mass[m.name] = (evidence * mask).flatten(1).sum(1)
        value = float(_spearman_rows(mass[m.name], effect))
        rho[m.name] = _interval(_spearman_rows(mass[m.name][idx], effect[idx]), value, len(effect))
    flag = torch.cat([torch.zeros(int(ruled.sum()), dtype=torch.bool), torch.ones(len(bare_idx), dtype=torch.bool)])
    return RulerEffect(model_name or type(model).__name__, effect, mass, rho, flag, n_boot)


@dataclass
class MetaEvaluation:
    """:func:`meta_evaluation`'s results: ``tau[metric]`` an :class:`Estimate` of Kendall's
    tau between the metric's order of the methods and the truth's; ``scores[metric]``
    {method: score, oriented so that higher = better by that metric}; ``truth`` {method:
    ρ of the interventional test}."""

    methods: list
    truth: dict
    scores: dict
    tau: dict

    def ranking(self) -> list[tuple[str, Estimate]]:
        """Metrics from the most to the least agreeing with the truth (by tau)."""
        return sorted(self.tau.items(), key=lambda kv: -kv[1].value if kv[1].value == kv[1].value else 2)

    def __str__(self):
        lines = [f"{'metric':<34}{'Kendall tau with the truth':>30}"]
        for name, est in self.ranking():
            lines.append(f"{name:<34}{format(est, '.2f'):>30}")
        return "\n".join(lines)

    _repr_pretty_ = lambda self, p, cycle: p.text(str(self))  # noqa: E731  (IPython display)


def meta_evaluation(evaluation, truth: RulerEffect, *, baselines=("blur", "mean", "zero"), steps: int = 16,
                    n_boot: int = 1000) -> MetaEvaluation:
    """Which metric orders the methods as the interventional truth does.

    ``evaluation``: an ``Evaluation`` (``evaluation.evaluate()``) of lesion_cnn's methods;
    ``truth``: :func:`ruler_effect` of the same model and methods. For each metric, every
    method gets one score (its mean over the evaluation's images, oriented so that higher
    is better: lower similarity after randomisation, lower deletion area...), and Kendall's
    tau compares that order with the order of the methods' ρ in ``truth``. The interval
    resamples the evaluation's images and the truth's images (independent samples), each
    bootstrap draw recomputing both orders.
    """
    from ..data import normalize

    methods = [m for m in evaluation.methods if evaluation.model_of[m] == "lesion_cnn" and m in truth.mass]
    if len(methods) < 3:
        raise ValueError(f"the meta-evaluation needs at least 3 methods run on lesion_cnn and in the truth, got "
                         f"{methods}")
    rep = evaluation.sanity["lesion_cnn"]
    per_image = {}  # metric -> {method: (N,) oriented per-image score}
    for test, values in rep.values.items():
        sign = 1.0 if test == "emprt" else -1.0
        per_image[f"MPRT: {test}"] = {m: sign * (values[m] if values[m].dim() == 1 else values[m].nanmean(0))
                                      for m in methods}
    from .. import models, synthetic, train

    model = models.load("lesion_cnn")
    pool = synthetic.make_lesions(600, "biased", seed=train.EVAL_SEED).select(label=1, ruler=True)[:evaluation.n_images]
    x = normalize(pool.images)
    for b in baselines:
        dele, ins = {}, {}
        for m in methods:
            have = evaluation.curves.get(m)
            if have and have[0].baseline == b and have[0].scores.shape == (len(x), steps + 1):
                # evaluate() drew these curves on the same images and model: reuse them
                dele[m], ins[m] = -have[0].auc.double().cpu(), have[1].auc.double().cpu()
                continue
            ranking = get_method(m).ranking(rep.trained[m].cpu())
            dele[m] = -deletion_curve(model, x, 1, ranking, baseline=b, steps=steps).auc.double()
            ins[m] = insertion_curve(model, x, 1, ranking, baseline=b, steps=steps).auc.double()
        per_image[f"deletion AUC ({b})"] = dele
        per_image[f"insertion AUC ({b})"] = ins
    evidence = {m: get_method(m).evidence(rep.trained[m].cpu()) for m in methods}
    per_image["relevance mass (ruler)"] = {m: relevance_mass(evidence[m], pool.ruler_mask).double() for m in methods}
    per_image["rank accuracy (ruler)"] = {m: relevance_rank_accuracy(evidence[m], pool.ruler_mask).double()
                                          for m in methods}
    per_image["pointing game (ruler)"] = {m: pointing_game(evidence[m], pool.ruler_mask).double() for m in methods}

    gen = torch.Generator().manual_seed(1)
    n_truth, n_eval = len(truth.effect), evaluation.n_images
    t_idx = torch.randint(n_truth, (n_boot, n_truth), generator=gen)
    e_idx = torch.randint(n_eval, (n_boot, n_eval), generator=gen)
    truth_now = torch.tensor([truth.rho[m].value for m in methods], dtype=torch.float64)
    truth_draws = torch.stack([truth.resampled_rho(m, t_idx) for m in methods], -1)  # (B, M)
    scores, tau = {}, {}
    for metric, vals in per_image.items():
        v = torch.stack([vals[m] for m in methods], -1)  # (N, M)
        now = v.nanmean(0)
        draws = v[e_idx].nanmean(1)  # (B, M)
        scores[metric] = dict(zip(methods, now.tolist()))
        tau[metric] = _interval(kendall_tau(draws, truth_draws), float(kendall_tau(now, truth_now)), n_eval)
    return MetaEvaluation(methods, {m: truth.rho[m] for m in methods}, scores, tau)
