"""LRP rule-schedule explorer (notebook 04)."""
from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
import torch

from .. import lrp, viz
from ._core import _class_name, _grid_figure, _one_image, explorer


# --------------------------------------------------------------------------- LRP rule schedule
#: The first-layer rules the LRP explorer offers.
LRP_FIRST_RULES = ("zB", "gamma", "epsilon", "zero")


def lrp_schedule(first: str = "zB", gamma: float = 0.25, epsilon: float = 0.25, lower_share: float = 0.5):
    """The composite the LRP explorer builds (equation 9 (book/equations.md)).

    ``first`` on the first layer, LRP-gamma on the lower ``lower_share`` of the other
    convolutions, LRP-epsilon on the upper ones, and the chapter's dense head (epsilon
    1e-6); ``gamma = 0`` and ``epsilon = 0`` are LRP-0. ``("zB", 0.25, 0.25)`` is
    ``lrp.chapter()``.

    Parameters
    ----------
    first : {"zB", "gamma", "epsilon", "zero"}, default "zB"
    gamma : float, default 0.25
    epsilon : float, default 0.25
    lower_share : float, default 0.5

    Returns
    -------
    chapter6_utils.lrp.Composite

    Raises
    ------
    ValueError
        For another ``first``.
    """
    rules = {"zB": lrp.ZBox(), "gamma": lrp.Gamma(gamma), "epsilon": lrp.Epsilon(epsilon), "zero": lrp.Zero()}
    if first not in rules:
        raise ValueError(f"first must be one of {LRP_FIRST_RULES}, got {first!r}")
    upper = lrp.Epsilon(epsilon) if epsilon > 0 else lrp.Zero()
    return lrp.Composite(first=rules[first], lower=lrp.Gamma(gamma), upper=upper, dense=lrp.Epsilon(1e-6),
                         lower_share=lower_share, name=f"first {first}, gamma {gamma:g}, epsilon {epsilon:g}")


def lrp_view(model, x, target: int, first: str = "zB", gamma: float = 0.25, epsilon: float = 0.25, masks=None):
    """One LRP map for a rule schedule (:func:`lrp_schedule`) and numbers that describe it.

    Parameters
    ----------
    model : torch.nn.Module
    x : torch.Tensor
        One ImageNet-normalised image, (1, 3, H, W) or (3, H, W).
    target : int
    first, gamma, epsilon
        As in :func:`lrp_schedule`.
    masks : (torch.Tensor or None, torch.Tensor or None), optional
        ``(lesion_mask, ruler_mask)``, each (H, W) bool or None.

    Returns
    -------
    m : torch.Tensor
        (H, W) float32 CPU map, relevance summed over channels, signed.
    stats : dict
        ``score`` (S_c), ``total`` (the map's sum: the score up to what biases and
        stabilisers absorbed, equation 4 (book/equations.md)), ``positive_share`` (share of
        the absolute relevance that is positive) and, with masks, the share of the positive
        relevance on each (``lesion_share``, ``ruler_share``).
    """
    x = _one_image(x)
    rel = lrp.lrp(model, x, int(target), composite=lrp_schedule(first, float(gamma), float(epsilon)))
    m = viz.to_map(rel[0]).float().cpu()
    with torch.no_grad():
        score = float(model(x)[0, int(target)])
    flat = m.double()
    pos = flat.clamp(min=0)
    stats = {"score": score, "total": float(flat.sum()),
             "positive_share": float(pos.sum() / flat.abs().sum().clamp(min=1e-30))}
    for key, mask in zip(("lesion_share", "ruler_share"), masks or (None, None)):
        if mask is not None:
            stats[key] = float((pos * mask.cpu()).sum() / pos.sum().clamp(min=1e-30))
    return m, stats


def lrp_figure(x, m, stats: dict | None = None, masks=None, title: str | None = None,
               percentile: float = viz.PERCENTILE, size: float = 3.0):
    """Input | signed LRP map | overlay, as a new Figure (pure: nothing is shown).

    Parameters
    ----------
    x : torch.Tensor
        The (1, 3, H, W) ImageNet-normalised input.
    m : torch.Tensor
        The (H, W) map of :func:`lrp_view`.
    stats : dict, optional
    masks : (torch.Tensor or None, torch.Tensor or None), optional
        ``(lesion_mask, ruler_mask)``, each (H, W) bool or None.
    title : str, optional
    percentile : float, default 99.5
        Each panel is clipped at this percentile of ``|value|`` (:func:`chapter6_utils.viz.heatmap`).
    size : float, default 3.0

    Returns
    -------
    matplotlib.figure.Figure
    """
    lesion, ruler = masks if masks is not None else (None, None)
    fig, axes = plt.subplots(1, 3, figsize=(3 * size * 1.15, size + 0.9), layout="constrained")
    axes[0].imshow(viz.display_image(x), interpolation="nearest")
    axes[0].set_xticks([])
    axes[0].set_yticks([])
    axes[0].set_title("input", fontsize=9)
    viz.heatmap(axes[1], m, signed=True, title="relevance", percentile=percentile)
    viz.overlay(axes[2], x, m, alpha=0.6, signed=True, title="over the input", percentile=percentile)
    for ax in axes:
        viz.draw_masks(ax, lesion, ruler, outline=True)
    fig.suptitle(title or "LRP", fontsize=10)
    text = f"LRP relevance, signed (red for, blue against; {viz.scaling_note(True, percentile)})."
    if stats:
        text += " " + ", ".join(f"{k.replace('_', ' ')} {v:.3g}" for k, v in stats.items()) + "."
    fig.supxlabel(textwrap.fill(text, int(3 * size * 1.15 * 13)), fontsize=8, x=0.02, ha="left",
                  multialignment="left")
    return fig


def lrp_explorer(model, x, target: int, first_rules=LRP_FIRST_RULES, gamma_values=(0.0, 0.1, 0.25, 0.5, 1.0),
                 epsilon_values=(0.0, 0.01, 0.1, 0.25, 1.0), masks=None):
    """Sliders that compose the LRP rule schedule over one image.

    First-layer rule, gamma and epsilon; starts at the chapter's composite. In the printed
    book use :func:`lrp_grid`.

    Parameters
    ----------
    model : torch.nn.Module
    x : torch.Tensor
        One ImageNet-normalised image, (1, 3, H, W) or (3, H, W).
    target : int
    first_rules, gamma_values, epsilon_values : sequence
        The sliders' values.
    masks : (torch.Tensor or None, torch.Tensor or None), optional
        ``(lesion_mask, ruler_mask)``, each (H, W) bool or None.

    Returns
    -------
    ipywidgets.VBox
    """
    x = _one_image(x)
    name = _class_name(model, int(target))

    def compute(first, gamma, epsilon):
        return lrp_view(model, x, target, first, gamma, epsilon, masks=masks)

    def figure(result, first, gamma, epsilon):
        m, stats = result
        return lrp_figure(x, m, stats, masks=masks,
                          title=f"LRP for {name}: first layer {first}, gamma {gamma:g}, epsilon {epsilon:g}")

    first_rules = list(first_rules)
    gamma_values, epsilon_values = [float(v) for v in gamma_values], [float(v) for v in epsilon_values]
    return explorer(compute, figure, first=first_rules, gamma=_first(gamma_values, 0.25),
                    epsilon=_first(epsilon_values, 0.25))


def _first(values, preferred):
    # SelectionSlider selects the first value: put the preferred one first, keep the rest in order
    return [preferred] + [v for v in values if v != preferred] if preferred in values else values


def lrp_grid(model, x, target: int, gamma_values=(0.0, 0.25, 1.0), epsilon_values=(0.0, 0.25, 1.0),
             first: str = "zB", masks=None, percentile: float = viz.PERCENTILE, size: float = 2.0):
    """The static twin of :func:`lrp_explorer`: signed LRP maps over gamma x epsilon.

    Rows are ``gamma_values``, columns ``epsilon_values``, ``first`` on the first layer;
    each panel scaled on its own, with a colorbar and its input-relevance sum in the title.

    Parameters
    ----------
    model : torch.nn.Module
    x : torch.Tensor
        One ImageNet-normalised image, (1, 3, H, W) or (3, H, W).
    target : int
    gamma_values, epsilon_values : sequence of float
    first : str, default "zB"
    masks : (torch.Tensor or None, torch.Tensor or None), optional
        ``(lesion_mask, ruler_mask)``, each (H, W) bool or None.
    percentile : float, default 99.5
        Each panel is clipped at this percentile of ``|value|`` (:func:`chapter6_utils.viz.heatmap`).
    size : float, default 2.0

    Returns
    -------
    matplotlib.figure.Figure
    """
    x = _one_image(x)
    lesion, ruler = masks if masks is not None else (None, None)
    rows, cols = len(gamma_values), len(epsilon_values)
    fig, gs = _grid_figure(x, lesion, ruler, rows, cols, size, width=1.25)
    for i, g in enumerate(gamma_values):
        for j, e in enumerate(epsilon_values):
            m, stats = lrp_view(model, x, target, first, g, e, masks=masks)
            ax = fig.add_subplot(gs[i, j + 1])
            viz.heatmap(ax, m, signed=True, percentile=percentile, title=f"γ {g:g}, ε {e:g}: sum {stats['total']:.3g}",
                        label=viz.scaling_note(True, percentile, short=True))
            viz.draw_masks(ax, lesion, ruler, outline=True)
    text = (f"LRP relevance for {_class_name(model, int(target))}, first layer {first}; rows: gamma on the lower "
            f"convolutions, columns: epsilon on the upper ones (0 = LRP-0). Signed, diverging "
            f"colormap centred at 0, {viz.scaling_note(True, percentile)}, each panel scaled on its own.")
    fig.supxlabel(textwrap.fill(text, int((cols + 1) * size * 1.25 * 13)), fontsize=8, x=0.02, ha="left",
                  multialignment="left")
    return fig
