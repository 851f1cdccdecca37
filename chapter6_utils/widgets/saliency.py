"""SmoothGrad explorer: samples and noise level (notebook 02)."""
from __future__ import annotations

import math
import textwrap

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch

from .. import viz
from ..saliency import smoothgrad
from ._core import _class_name, _grid_figure, _input_panel, _one_image, _pick, explorer


# --------------------------------------------------------------------------- SmoothGrad
def smoothgrad_view(model, x, target: int, n_samples: int, sigma: float, seed: int = 0, masks=None):
    """One SmoothGrad map (equation 2 (book/equations.md); Smilkov et al., 2017) and a few
    numbers that describe it.

    Parameters
    ----------
    model : torch.nn.Module
        A classifier taking ImageNet-normalised input.
    x : torch.Tensor
        One ImageNet-normalised image, (1, 3, H, W) or (3, H, W).
    target : int
        The class whose score is explained.
    n_samples, sigma, seed
        Passed to :func:`chapter6_utils.saliency.smoothgrad` (``sigma`` as that function
        defines it; the same seed gives the same map).
    masks : (torch.Tensor or None, torch.Tensor or None), optional
        ``(lesion_mask, ruler_mask)``, each (H, W) bool or None.
        The share of the map's mass inside each is reported.

    Returns
    -------
    m : torch.Tensor
        (H, W) float32 on the CPU.
    stats : dict
        ``n_samples``, ``sigma``, ``seed``, ``mass`` (the map's sum), ``max``,
        ``top5_share`` (share of the mass in the top 5% of pixels: lower = more spread out)
        and, with masks, ``lesion_share`` / ``ruler_share``.

    Raises
    ------
    ValueError
        If ``x`` is not one image.
    """
    x = _one_image(x)
    maps = smoothgrad(model, x, int(target), n_samples=int(n_samples), sigma=float(sigma), seed=int(seed))
    m = viz.to_map(maps[0] if maps.dim() == 3 else maps)
    flat = m.flatten().double()
    mass = float(flat.sum())
    k = max(1, math.ceil(0.05 * flat.numel()))
    stats = {"n_samples": int(n_samples), "sigma": float(sigma), "seed": int(seed), "mass": mass,
             "max": float(flat.max()),
             "top5_share": float(flat.topk(k).values.sum() / mass) if mass > 0 else float("nan")}
    if masks is not None:
        for key, mask in zip(("lesion_share", "ruler_share"), masks):
            if mask is not None:
                mk = torch.as_tensor(np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask), dtype=torch.bool)  # noqa: E501
                stats[key] = float(flat[mk.flatten()].sum() / mass) if mass > 0 else float("nan")
    return m, stats


def _stats_line(stats: dict) -> str:
    parts = [f"n={stats['n_samples']}", f"σ={stats['sigma']:g}", f"seed={stats['seed']}",
             f"top 5% of pixels hold {stats['top5_share']:.0%} of the mass"]
    for key, what in (("lesion_share", "lesion"), ("ruler_share", "ruler")):
        if key in stats:
            parts.append(f"{what} {stats[key]:.0%}")
    return ", ".join(parts)


def smoothgrad_figure(x, m, stats: dict | None = None, masks=None, title: str | None = None,
                      percentile: float = viz.PERCENTILE, size: float = 3.0):
    """Input | SmoothGrad map | overlay, as a new Figure (pure: nothing is shown).

    Parameters
    ----------
    x : torch.Tensor or numpy.ndarray
        The (1, 3, H, W) ImageNet-normalised input, or an (H, W, 3) array in [0, 1].
    m : torch.Tensor
        The (H, W) map (e.g. from :func:`smoothgrad_view`).
    stats : dict, optional
        The view's stats, summarised under the figure.
    masks : (torch.Tensor or None, torch.Tensor or None), optional
        ``(lesion_mask, ruler_mask)``, each (H, W) bool or None.
        Drawn as cyan and yellow contours.
    title : str, optional
        The figure title (default "SmoothGrad").
    percentile : float, default 99.5
        Each panel is clipped at this percentile of ``|value|`` (:func:`chapter6_utils.viz.heatmap`).
    size : float, default 3.0
        Inches per panel.

    Returns
    -------
    matplotlib.figure.Figure
    """
    lesion, ruler = masks if masks is not None else (None, None)
    signed = viz.is_signed(m)
    fig, axes = plt.subplots(1, 3, figsize=(3 * size * 1.15, size + 0.9), layout="constrained")
    ax = axes[0]
    _input_panel(ax, x, lesion, ruler)
    viz.heatmap(axes[1], m, signed=signed, title="map", percentile=percentile,
                label=viz.scaling_note(signed, percentile, short=True))
    viz.draw_masks(axes[1], lesion, ruler, outline=True)
    viz.overlay(axes[2], x, m, alpha=0.6, signed=signed, title="over the input", percentile=percentile,
                label=viz.scaling_note(signed, percentile, short=True))
    viz.draw_masks(axes[2], lesion, ruler, outline=True)
    fig.suptitle(title or "SmoothGrad", fontsize=10)
    cmap = viz.DIVERGING_CMAP if signed else viz.SEQUENTIAL_CMAP
    text = f"SmoothGrad map ({viz.scaling_note(signed, percentile)}; {cmap})."
    if stats:
        text += " " + _stats_line(stats) + "."
    if lesion is not None or ruler is not None:
        text += " Contours: lesion (cyan), ruler (yellow)."
    fig.supxlabel(textwrap.fill(text, int(3 * size * 1.15 * 13)), fontsize=8, x=0.02, ha="left",
                  multialignment="left")
    return fig


def smoothgrad_explorer(model, x, target: int, n_values=(1, 5, 10, 25, 50),
                        sigma_values=(0.0, 0.05, 0.1, 0.15, 0.2, 0.3), masks=None, seed: int = 0):
    """Sliders for SmoothGrad's number of samples and noise level, over one image.

    Starts at n = 25, sigma = 0.15 (the chapter's setting) when offered. In the printed
    book use :func:`smoothgrad_grid`.

    Parameters
    ----------
    model : torch.nn.Module
    x : torch.Tensor
        One ImageNet-normalised image, (1, 3, H, W) or (3, H, W).
    target : int
    n_values, sigma_values : sequence
        The sliders' values.
    masks : (torch.Tensor or None, torch.Tensor or None), optional
        ``(lesion_mask, ruler_mask)``, each (H, W) bool or None.
    seed : int, default 0

    Returns
    -------
    ipywidgets.VBox
        The :func:`explorer`; ``.cache`` holds the ``(m, stats)`` of every setting seen,
        keyed by ``(n_samples, sigma)``.
    """
    x = _one_image(x)
    n_values, sigma_values = [int(v) for v in n_values], [float(v) for v in sigma_values]
    name = _class_name(model, int(target))
    common = dict(continuous_update=False, style={"description_width": "initial"})
    n_slider = widgets.SelectionSlider(options=[(str(v), v) for v in n_values], value=_pick(n_values, 25),
                                       description="samples n", **common)
    s_slider = widgets.SelectionSlider(options=[(f"{v:g}", v) for v in sigma_values],
                                       value=_pick(sigma_values, 0.15), description="noise σ", **common)

    def compute(n_samples, sigma):
        return smoothgrad_view(model, x, target, n_samples, sigma, seed=seed, masks=masks)

    def figure(result, n_samples, sigma):
        m, stats = result
        return smoothgrad_figure(x, m, stats, masks=masks,
                                 title=f"SmoothGrad for {name}, n={n_samples}, σ={sigma:g}")

    return explorer(compute, figure, n_samples=n_slider, sigma=s_slider)


def smoothgrad_grid(model, x, target: int, n_values=(1, 5, 25), sigma_values=(0.05, 0.15, 0.3),
                    seed: int = 0, masks=None, percentile: float = viz.PERCENTILE, size: float = 2.0):
    """The static twin of :func:`smoothgrad_explorer`: SmoothGrad maps over n x sigma.

    Rows are ``n_values``, columns ``sigma_values``; the input (with the masks' contours)
    stands in a first column spanning all rows. Every panel is scaled on its own and has a
    colorbar; the caption says the method, sign and scaling.

    Parameters
    ----------
    model : torch.nn.Module
    x : torch.Tensor
        One ImageNet-normalised image, (1, 3, H, W) or (3, H, W).
    target : int
    n_values, sigma_values : sequence
    seed : int, default 0
    masks : (torch.Tensor or None, torch.Tensor or None), optional
        ``(lesion_mask, ruler_mask)``, each (H, W) bool or None.
    percentile : float, default 99.5
        Each panel is clipped at this percentile of ``|value|`` (:func:`chapter6_utils.viz.heatmap`).
    size : float, default 2.0
        Inches per panel.

    Returns
    -------
    matplotlib.figure.Figure
    """
    x = _one_image(x)
    n_values, sigma_values = [int(v) for v in n_values], [float(v) for v in sigma_values]
    lesion, ruler = masks if masks is not None else (None, None)
    rows, cols = len(n_values), len(sigma_values)
    views = {(n, s): smoothgrad_view(model, x, target, n, s, seed=seed, masks=masks)
             for n in n_values for s in sigma_values}
    signed = any(viz.is_signed(m) for m, _ in views.values())

    fig, gs = _grid_figure(x, lesion, ruler, rows, cols, size, extra_height=0.9)
    for i, n in enumerate(n_values):
        for j, s in enumerate(sigma_values):
            ax = fig.add_subplot(gs[i, j + 1])
            viz.heatmap(ax, views[n, s][0], signed=signed, title=f"n={n}, σ={s:g}", percentile=percentile,
                        label=viz.scaling_note(signed, percentile, short=True))
            viz.draw_masks(ax, lesion, ruler, linewidth=0.8, outline=True)
    fig.suptitle(f"SmoothGrad for {_class_name(model, int(target))}: samples n (rows) × noise σ (columns)",
                 fontsize=10)
    text = (f"SmoothGrad maps, seed {seed} ({viz.scaling_note(signed, percentile)}; "
            f"{viz.DIVERGING_CMAP if signed else viz.SEQUENTIAL_CMAP}). Each panel is scaled on its own.")
    if lesion is not None or ruler is not None:
        text += " Contours: lesion (cyan), ruler (yellow)."
    fig.supxlabel(textwrap.fill(text, int((cols + 1) * size * 1.2 * 13)), fontsize=8, x=0.02, ha="left",
                  multialignment="left")
    return fig
