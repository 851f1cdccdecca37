"""Interactive explorers for the notebooks, each built on pure functions.

Every explorer is three layers, so that tests and the printed book need no widget:

* a pure *compute* function (model, input, settings -> map and stats), cached by settings;
* a pure *figure* function (map -> matplotlib Figure, never shown, never global state);
* :func:`explorer`, which wires sliders to the two with ipywidgets.

The book shows a static grid beside each widget (:func:`smoothgrad_grid`), drawn by the
same functions, because a rendered page has no kernel to move a slider.

ipywidgets is imported only when a widget is built, and only APIs found in both 7.x (Colab)
and 8.x are used: ``SelectionSlider``, ``VBox``, ``Output``, ``observe(names="value")``.
Method modules are imported lazily too, so this module imports before they exist.
"""
from __future__ import annotations

import math
import textwrap

import matplotlib.pyplot as plt
import numpy as np
import torch

from . import viz

__all__ = ["explorer", "smoothgrad_view", "smoothgrad_figure", "smoothgrad_explorer", "smoothgrad_grid",
           "projection_view", "projection_figure", "projection_explorer", "projection_grid",
           "attention_view", "attention_figure", "attention_explorer", "attention_grid",
           "lrp_schedule", "lrp_view", "lrp_figure", "lrp_explorer", "lrp_grid",
           "ACTMAX_ABLATION", "actmax_view", "actmax_figure", "actmax_explorer", "actmax_grid"]


# --------------------------------------------------------------------------- generic explorer
def _slider(name: str, spec):
    """A slider for ``spec``: a ready widget is used as is; a sequence becomes a
    SelectionSlider over its values (first value selected)."""
    import ipywidgets as widgets

    if isinstance(spec, widgets.Widget):
        return spec
    values = list(spec)
    if not values:
        raise ValueError(f"slider {name!r} has no values")
    # (label, value) pairs: the label is what the reader sees, 0.05 rather than 0.05000000000000001.
    options = [(f"{v:g}" if isinstance(v, float) else str(v), v) for v in values]
    return widgets.SelectionSlider(options=options, value=values[0], description=name,
                                   continuous_update=False,  # compute on release, not on every tick
                                   style={"description_width": "initial"})


def explorer(compute_fn, figure_fn, **slider_specs):
    """Sliders wired to a pure compute function and a pure figure function, with a cache.

    Args:
        compute_fn: ``compute_fn(**params) -> result`` (e.g. ``(map, stats)``); called once
            per distinct setting: results are cached by the tuple of slider values, so
            moving a slider back is instant.
        figure_fn: ``figure_fn(result, **params) -> matplotlib Figure``.
        **slider_specs: ``name=values`` (a sequence: a SelectionSlider, first value
            selected) or ``name=widget`` (any ipywidgets value widget). The names are
            the keyword arguments both functions receive.

    Returns:
        an ``ipywidgets.VBox`` (sliders, then an Output showing the figure) with extra
        attributes: ``sliders`` (dict name -> widget), ``out`` (the Output), ``cache``
        (dict key -> result), ``params()`` (the current settings) and ``refresh()``
        (compute if needed and redraw; called on every slider change).
    """
    import ipywidgets as widgets
    from IPython.display import display

    if not slider_specs:
        raise ValueError("explorer needs at least one slider")
    sliders = {name: _slider(name, spec) for name, spec in slider_specs.items()}
    out = widgets.Output()
    box = widgets.VBox(children=list(sliders.values()) + [out])
    cache: dict = {}

    def params() -> dict:
        return {name: s.value for name, s in sliders.items()}

    def refresh(change=None) -> None:
        p = params()
        key = tuple(p.values())
        with out:
            out.clear_output(wait=True)  # wait: no flicker between the old and new figure
            try:
                if key not in cache:
                    cache[key] = compute_fn(**p)
                fig = figure_fn(cache[key], **p)
            except Exception as err:  # noqa: BLE001 -- a callback's error would vanish into a log
                print(f"{type(err).__name__}: {err}")
                return
            display(fig)
            # Close it so pyplot holds no reference and the inline backend does not show it twice.
            plt.close(fig)

    for s in sliders.values():
        s.observe(refresh, names="value")
    box.sliders, box.out, box.cache, box.params, box.refresh = sliders, out, cache, params, refresh
    refresh()
    return box


# --------------------------------------------------------------------------- SmoothGrad
def _one_image(x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() not in (3, 4) or x.shape[-3] != 3:
        raise ValueError(f"x must be a (1, 3, H, W) or (3, H, W) normalised tensor, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.shape[0] != 1:
        raise ValueError(f"x has a batch of {x.shape[0]}; the explorer shows one image, pass x[i:i+1]")
    return x


def _class_name(model, target: int) -> str:
    classes = getattr(getattr(model, "ch6", None), "classes", None)
    return f"'{classes[target]}'" if classes and 0 <= target < len(classes) else f"class {target}"


def smoothgrad_view(model, x, target: int, n_samples: int, sigma: float, seed: int = 0, masks=None):
    """One SmoothGrad map and a few numbers that describe it.

    Args:
        model: a classifier taking ImageNet-normalised input.
        x: (1, 3, H, W) (or (3, H, W)) ImageNet-normalised tensor.
        target: the class whose score is explained.
        n_samples, sigma, seed: passed to :func:`chapter6_utils.saliency.smoothgrad`
            (sigma as that function defines it; the same seed gives the same map).
        masks: optional ``(lesion_mask, ruler_mask)``, each (H, W) bool or None, to report
            the share of the map's mass inside each.

    Returns:
        ``(m, stats)``: ``m`` the (H, W) float32 CPU map; ``stats`` a dict with
        ``n_samples``, ``sigma``, ``seed``, ``mass`` (sum of the map), ``max``,
        ``top5_share`` (share of the mass in the top 5% of pixels: lower = more spread
        out) and, with masks, ``lesion_share`` / ``ruler_share``.
    """
    from .saliency import smoothgrad  # lazy: written in parallel, and viz stays method-free

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
                mk = torch.as_tensor(np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask), dtype=torch.bool)
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

    Args:
        x: the (1, 3, H, W) ImageNet-normalised input (or an (H, W, 3) array in [0, 1]).
        m: the (H, W) map (e.g. from :func:`smoothgrad_view`).
        stats: the view's stats dict; summarised under the figure.
        masks: optional ``(lesion_mask, ruler_mask)`` drawn as cyan / yellow contours.
        title: the figure title (default "SmoothGrad").
    """
    lesion, ruler = masks if masks is not None else (None, None)
    signed = viz.is_signed(m)
    fig, axes = plt.subplots(1, 3, figsize=(3 * size * 1.15, size + 0.9), layout="constrained")
    ax = axes[0]
    ax.imshow(viz._display_image(x), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title("input", fontsize=9)
    viz.draw_masks(ax, lesion, ruler, outline=True)
    viz.heatmap(axes[1], m, signed=signed, title="map", percentile=percentile,
                label=viz.scaling_note(signed, percentile, short=True))
    viz.draw_masks(axes[1], lesion, ruler, outline=True)
    viz.overlay(axes[2], x, m, alpha=0.6, signed=signed, title="over the input", percentile=percentile,
                label=viz.scaling_note(signed, percentile, short=True))
    viz.draw_masks(axes[2], lesion, ruler, outline=True)
    fig.suptitle(title or "SmoothGrad", fontsize=10)
    text = f"SmoothGrad map ({viz.scaling_note(signed, percentile)}; {viz.SEQUENTIAL_CMAP if not signed else viz.DIVERGING_CMAP})."
    if stats:
        text += " " + _stats_line(stats) + "."
    if lesion is not None or ruler is not None:
        text += " Contours: lesion (cyan), ruler (yellow)."
    fig.supxlabel(textwrap.fill(text, int(3 * size * 1.15 * 13)), fontsize=8, x=0.02, ha="left",
                  multialignment="left")
    return fig


def _pick(values, preferred):
    return preferred if preferred in values else values[len(values) // 2]


def smoothgrad_explorer(model, x, target: int, n_values=(1, 5, 10, 25, 50),
                        sigma_values=(0.0, 0.05, 0.1, 0.15, 0.2, 0.3), masks=None, seed: int = 0):
    """Sliders for SmoothGrad's number of samples and noise level, over one image.

    ``x``: (1, 3, H, W) ImageNet-normalised; ``masks``: optional ``(lesion_mask,
    ruler_mask)``. Starts at n=25, sigma=0.15 (the chapter's setting) when offered. Returns
    the :func:`explorer` VBox; ``.cache`` holds the ``(m, stats)`` of every setting seen,
    keyed by ``(n_samples, sigma)``. In the printed book use :func:`smoothgrad_grid`.
    """
    import ipywidgets as widgets

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

    Rows are ``n_values``, columns ``sigma_values``; the input (with ``masks`` contours)
    stands in a first column spanning all rows. Every panel is scaled on its own and has
    a colorbar; the caption says the method, sign and scaling. Returns the Figure.
    """
    x = _one_image(x)
    n_values, sigma_values = [int(v) for v in n_values], [float(v) for v in sigma_values]
    lesion, ruler = masks if masks is not None else (None, None)
    rows, cols = len(n_values), len(sigma_values)
    views = {(n, s): smoothgrad_view(model, x, target, n, s, seed=seed, masks=masks)
             for n in n_values for s in sigma_values}
    signed = any(viz.is_signed(m) for m, _ in views.values())

    fig = plt.figure(figsize=((cols + 1) * size * 1.2, rows * size + 0.9), layout="constrained")
    gs = fig.add_gridspec(rows, cols + 1)
    ax = fig.add_subplot(gs[:, 0])
    ax.imshow(viz._display_image(x), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title("input", fontsize=9)
    viz.draw_masks(ax, lesion, ruler, outline=True)
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


# --------------------------------------------------------------------------- Deconvnet features
def projection_view(model, images, layer, channel: int, k: int = 9):
    """The ``k`` strongest image patches of one feature with their Zeiler-Fergus
    projections: :func:`chapter6_utils.deconvnet.top_activations` (a ``TopActivations``)."""
    from .deconvnet import top_activations  # lazy, as for smoothgrad

    return top_activations(model, images, layer, int(channel), k=int(k))


def _patch_rows(fig, gs, row, top, percentile, label):
    """Patches (row ``row``) and channel-summed projections (row ``row + 1``) of one
    feature in the first k columns of ``gs``; the projections share one symmetric scale
    and one colorbar, in the last (narrow) column."""
    maps = [viz.to_map(p) for p in top.projection_patch]
    v = max(viz.robust_max(m, percentile) for m in maps) if maps else 1.0
    im = None
    for j, (patch, m) in enumerate(zip(top.patch, maps)):
        ax = fig.add_subplot(gs[row, j])
        ax.imshow(viz._display_image(patch), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"#{int(top.index[j])}: {float(top.value[j]):.2g}", fontsize=7)
        if j == 0:
            ax.set_ylabel(label, fontsize=8)
        ax = fig.add_subplot(gs[row + 1, j])
        im = ax.imshow(m.numpy(), cmap=viz.DIVERGING_CMAP, vmin=-v, vmax=v, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        if j == 0:
            ax.set_ylabel("projection", fontsize=8)
    if im is not None:
        cb = fig.colorbar(im, cax=fig.add_subplot(gs[row + 1, -1]), ticks=[-v, 0.0, v], format="%.2g")
        cb.ax.tick_params(labelsize=6)
        cb.set_label(viz.scaling_note(True, percentile, short=True), fontsize=6)


_PROJECTION_CAPTION = ("Top: the receptive-field patches of the k strongest activations (image index: activation). "
                       "Bottom: their Zeiler-Fergus projections to the pixels (deconvnet: unpool to the switches, "
                       "ReLU, transposed convolution), summed over colour channels; signed, red +, blue −, white 0, "
                       "one symmetric scale per feature, limits ±{pct} of |value| over its patches.")


def _patch_figure(tops, title, percentile, size):
    # A fixed grid rather than constrained layout: with dozens of small panels the layout
    # engine takes seconds to draw, and every panel here has the same size anyway.
    k = max(max(len(t.patch) for t in tops), 1)
    rows = 2 * len(tops)
    width, height = k * size + 1.2, rows * size * 1.1 + 1.2
    fig = plt.figure(figsize=(width, height))
    gs = fig.add_gridspec(rows, k + 1, width_ratios=[1] * k + [0.12], left=0.6 / width, right=1 - 0.55 / width,
                          top=1 - 0.45 / height, bottom=0.75 / height, wspace=0.15, hspace=0.3)
    for i, top in enumerate(tops):
        _patch_rows(fig, gs, 2 * i, top, percentile, f"{top.layer}:{top.channel}")
    fig.suptitle(title, fontsize=9, y=1 - 0.1 / height, va="top")
    fig.text(0.02, 0.05 / height, textwrap.fill(_PROJECTION_CAPTION.format(pct=viz._pct(percentile)),
                                                int(width * 15)), fontsize=7, va="bottom")
    return fig


def projection_figure(top, title: str | None = None, percentile: float = viz.PERCENTILE, size: float = 1.0):
    """One feature's top patches over their projections, as a new Figure (pure)."""
    return _patch_figure([top], title or f"Feature {top.channel} of {top.layer}: top {len(top.patch)} patches "
                         "and their projections", percentile, size)


def projection_explorer(model, images, layers, max_channel: int | None = None, k: int = 9):
    """A layer menu and a channel slider over :func:`projection_view` /
    :func:`projection_figure`; in the printed book use :func:`projection_grid`.

    ``layers``: module names (e.g. ``["features.3", "features.8"]``); the channel slider
    runs to ``max_channel`` (default: the widest of those layers minus one); a channel a
    layer does not have prints the error in place of the figure."""
    import ipywidgets as widgets

    layers = list(layers)
    if max_channel is None:
        named = dict(model.named_modules())
        widths = [getattr(named.get(n), "out_channels", 0) for n in layers]
        convs = [m.out_channels for m in model.modules() if hasattr(m, "out_channels")]
        max_channel = max(widths + [max(convs) if convs else 1]) - 1
    layer_w = widgets.Dropdown(options=layers, value=layers[0], description="layer")
    channel_w = widgets.IntSlider(value=0, min=0, max=int(max_channel), description="channel",
                                  continuous_update=False)

    def compute(layer, channel):
        return projection_view(model, images, layer, channel, k)

    def figure(top, layer, channel):
        return projection_figure(top)

    return explorer(compute, figure, layer=layer_w, channel=channel_w)


def projection_grid(model, images, features, k: int = 9, percentile: float = viz.PERCENTILE, size: float = 0.9):
    """The static twin of :func:`projection_explorer`: for each ``(layer, channel)`` of
    ``features``, a row of its top-``k`` patches over a row of their projections."""
    tops = [projection_view(model, images, layer, channel, k) for layer, channel in features]
    return _patch_figure(tops, f"Deconvnet features: top {k} patches (rows 1, 3, ...) and their projections",
                         percentile, size)
# --------------------------------------------------------------------------- ViT attention
def _mask_shares(m: torch.Tensor, masks) -> dict:
    """Shares of the (H, W) map's mass inside ``masks = (lesion_mask, ruler_mask)``."""
    out = {}
    mass = float(m.double().sum())
    if masks is not None:
        for key, mask in zip(("lesion_share", "ruler_share"), masks):
            if mask is not None:
                mk = torch.as_tensor(np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask), dtype=torch.bool)
                out[key] = float(m.double()[mk].sum() / mass) if mass > 0 else float("nan")
    return out


def attention_view(attn, image_size, layer: int, head, head_fusion: str, discard_ratio: float,
                   alpha=0.5, masks=None, num_prefix_tokens: int = 1):
    """One image's CLS attention at one layer and its attention rollout, at image size.

    Args:
        attn: (1, L, heads, T, T) from :func:`chapter6_utils.attention.attention_maps`.
        image_size: the image's (H, W) (or an int).
        layer, head: passed to :func:`~chapter6_utils.attention.cls_attention` (head an
            int, or "mean"/"max"/"min" for the heads fused).
        head_fusion, discard_ratio, alpha: passed to :func:`~chapter6_utils.attention.rollout`.
        masks: optional ``(lesion_mask, ruler_mask)`` (H, W) bool, for mass shares.

    Returns:
        ``(cls_map, rollout_map, stats)``: two (H, W) float32 CPU maps, each patch's
        weight spread over its pixels (nearest upsampling, so shares are patch-weighted),
        and a dict with the settings, ``cls_self`` (the rollout's CLS self-weight: the
        share of the CLS row that stays off the patches) and, with masks,
        ``cls_lesion_share``, ``cls_ruler_share``, ``rollout_lesion_share``,
        ``rollout_ruler_share``.
    """
    from . import attention  # lazy: viz stays method-free, and this module imports alone

    if not isinstance(attn, torch.Tensor) or attn.dim() != 5 or attn.shape[0] != 1:
        raise ValueError("attn must be (1, L, heads, T, T): attention_maps of one image")
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    c = attention.cls_attention(attn, int(layer), head, num_prefix_tokens=num_prefix_tokens)
    r = attention.rollout(attn, head_fusion=head_fusion, discard_ratio=float(discard_ratio), alpha=alpha,
                          num_prefix_tokens=num_prefix_tokens)
    c_img = attention.upsample_to_image(c, image_size, mode="nearest")[0].detach().cpu().float()
    r_img = attention.upsample_to_image(r, image_size, mode="nearest")[0].detach().cpu().float()
    stats = {"layer": int(layer), "head": head, "head_fusion": head_fusion, "discard_ratio": float(discard_ratio),
             "cls_self": float(1.0 - r.double().sum())}
    for prefix, m in (("cls_", c_img), ("rollout_", r_img)):
        stats.update({prefix + k: v for k, v in _mask_shares(m, masks).items()})
    return c_img, r_img, stats


def _head_label(head) -> str:
    return f"head {head}" if not isinstance(head, str) else f"heads fused by {head}"


def attention_figure(x, result, masks=None, title: str | None = None, size: float = 3.0):
    """Input | CLS attention (one layer) | rollout over the input, as a new Figure (pure).

    ``x``: the (1, 3, H, W) ImageNet-normalised input; ``result``: :func:`attention_view`'s
    ``(cls_map, rollout_map, stats)``; ``masks``: optional ``(lesion_mask, ruler_mask)``
    drawn as contours. Both maps are unsigned, scaled each on its own.
    """
    cls_map, roll, stats = result
    lesion, ruler = masks if masks is not None else (None, None)
    fig, axes = plt.subplots(1, 3, figsize=(3 * size * 1.15, size + 1.0), layout="constrained")
    ax = axes[0]
    ax.imshow(viz._display_image(x), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title("input", fontsize=9)
    viz.draw_masks(ax, lesion, ruler, outline=True)
    short = viz.scaling_note(False, short=True)
    viz.heatmap(axes[1], cls_map, signed=False, title=f"CLS attention, layer {stats['layer']}, "
                f"{_head_label(stats['head'])}", label=short)
    viz.draw_masks(axes[1], lesion, ruler, outline=True)
    viz.overlay(axes[2], x, roll, alpha=0.6, signed=False, label=short,
                title=f"rollout, {stats['head_fusion']}, discard {stats['discard_ratio']:g}")
    viz.draw_masks(axes[2], lesion, ruler, outline=True)
    fig.suptitle(title or "ViT attention", fontsize=10)
    text = (f"Attention weights, not attributions ({viz.scaling_note(False)}; {viz.SEQUENTIAL_CMAP}). "
            f"The rollout keeps {stats['cls_self']:.0%} of its CLS row on the CLS token itself.")
    shares = [f"{what} {stats[key]:.0%}" for key, what in
              (("cls_ruler_share", "CLS map on the ruler"), ("rollout_ruler_share", "rollout on the ruler"),
               ("rollout_lesion_share", "rollout on the lesion")) if key in stats]
    if shares:
        text += " Shares of the map's mass: " + ", ".join(shares) + ". Contours: lesion (cyan), ruler (yellow)."
    fig.supxlabel(textwrap.fill(text, int(3 * size * 1.15 * 13)), fontsize=8, x=0.02, ha="left",
                  multialignment="left")
    return fig


def attention_explorer(model, x, masks=None, discard_values=(0.0, 0.5, 0.8, 0.9, 0.95)):
    """Sliders for layer, head, rollout head fusion and discard ratio, over one image.

    The attention of all blocks is computed once; every setting is then a cheap read of
    it. ``x``: (1, 3, H, W) ImageNet-normalised; ``masks``: optional ``(lesion_mask,
    ruler_mask)``. Returns the :func:`explorer` VBox. In the printed book use
    :func:`attention_grid`.
    """
    from . import attention

    x = _one_image(x)
    attn = attention.attention_maps(model, x)
    n_layers, n_heads = attn.shape[1], attn.shape[2]
    prefix = int(getattr(model, "num_prefix_tokens", 1))

    def compute(layer, head, head_fusion, discard_ratio):
        return attention_view(attn, x.shape[-2:], layer, head, head_fusion, discard_ratio, masks=masks,
                              num_prefix_tokens=prefix)

    def figure(result, layer, head, head_fusion, discard_ratio):
        return attention_figure(x, result, masks=masks, title=f"{type(model).__name__} attention")

    return explorer(compute, figure, layer=list(range(n_layers)), head=["mean"] + list(range(n_heads)),
                    head_fusion=list(attention.HEAD_FUSIONS), discard_ratio=[float(d) for d in discard_values])


def attention_grid(model, x, layers=None, settings=(("mean", 0.0), ("max", 0.9), ("min", 0.0)), masks=None,
                   size: float = 2.0):
    """The static twin of :func:`attention_explorer`: top row, the heads-mean CLS
    attention at ``layers`` (default: every block); bottom row, rollout for each
    ``(head_fusion, discard_ratio)`` in ``settings``. Returns the Figure."""
    from . import attention

    x = _one_image(x)
    attn = attention.attention_maps(model, x)
    prefix = int(getattr(model, "num_prefix_tokens", 1))
    layers = list(range(attn.shape[1])) if layers is None else [int(v) for v in layers]
    lesion, ruler = masks if masks is not None else (None, None)
    cols = max(len(layers), len(settings))
    fig = plt.figure(figsize=((cols + 1) * size * 1.2, 2 * size + 1.0), layout="constrained")
    gs = fig.add_gridspec(2, cols + 1)
    ax = fig.add_subplot(gs[:, 0])
    ax.imshow(viz._display_image(x), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title("input", fontsize=9)
    viz.draw_masks(ax, lesion, ruler, outline=True)
    short = viz.scaling_note(False, short=True)
    for j, layer in enumerate(layers):
        c, _, _ = attention_view(attn, x.shape[-2:], layer, "mean", "mean", 0.0, num_prefix_tokens=prefix)
        ax = fig.add_subplot(gs[0, j + 1])
        viz.heatmap(ax, c, signed=False, title=f"CLS attn, layer {layer}", label=short)
        viz.draw_masks(ax, lesion, ruler, linewidth=0.8, outline=True)
    for j, (fusion, discard) in enumerate(settings):
        _, r, _ = attention_view(attn, x.shape[-2:], 0, "mean", fusion, discard, num_prefix_tokens=prefix)
        ax = fig.add_subplot(gs[1, j + 1])
        viz.heatmap(ax, r, signed=False, title=f"rollout, {fusion}, discard {discard:g}", label=short)
        viz.draw_masks(ax, lesion, ruler, linewidth=0.8, outline=True)
    fig.suptitle(f"{type(model).__name__}: CLS attention per layer, heads averaged (top); "
                 "attention rollout (bottom)", fontsize=10)
    text = (f"Attention weights, not attributions ({viz.scaling_note(False)}; {viz.SEQUENTIAL_CMAP}). "
            "Each panel is scaled on its own.")
    if lesion is not None or ruler is not None:
        text += " Contours: lesion (cyan), ruler (yellow)."
    fig.supxlabel(textwrap.fill(text, int((cols + 1) * size * 1.2 * 13)), fontsize=8, x=0.02, ha="left",
                  multialignment="left")
    return fig


# --------------------------------------------------------------------------- LRP rule schedule
#: The first-layer rules the LRP explorer offers.
LRP_FIRST_RULES = ("zB", "gamma", "epsilon", "zero")


def lrp_schedule(first: str = "zB", gamma: float = 0.25, epsilon: float = 0.25, lower_share: float = 0.5):
    """The composite the LRP explorer builds: ``first`` ("zB", "gamma", "epsilon" or
    "zero") on the first layer, LRP-gamma on the lower ``lower_share`` of the other
    convolutions, LRP-epsilon on the upper ones, and the chapter's dense head (epsilon
    1e-6); ``gamma = 0`` and ``epsilon = 0`` are LRP-0. ``("zB", 0.25, 0.25)`` is
    ``lrp.chapter()``."""
    from . import lrp  # lazy, like the other method modules

    rules = {"zB": lrp.ZBox(), "gamma": lrp.Gamma(gamma), "epsilon": lrp.Epsilon(epsilon), "zero": lrp.Zero()}
    if first not in rules:
        raise ValueError(f"first must be one of {LRP_FIRST_RULES}, got {first!r}")
    upper = lrp.Epsilon(epsilon) if epsilon > 0 else lrp.Zero()
    return lrp.Composite(first=rules[first], lower=lrp.Gamma(gamma), upper=upper, dense=lrp.Epsilon(1e-6),
                         lower_share=lower_share, name=f"first {first}, gamma {gamma:g}, epsilon {epsilon:g}")


def lrp_view(model, x, target: int, first: str = "zB", gamma: float = 0.25, epsilon: float = 0.25, masks=None):
    """One LRP map for a rule schedule (:func:`lrp_schedule`) and numbers that describe it.

    Returns ``(m, stats)``: ``m`` the (H, W) float32 CPU map (relevance summed over
    channels, signed); ``stats``: ``score`` (S_c), ``total`` (sum of the map: equals the
    score up to what biases and stabilisers absorbed), ``positive_share`` (share of the
    absolute relevance that is positive) and, with ``masks = (lesion, ruler)``, the
    share of the positive relevance on each (``lesion_share``, ``ruler_share``)."""
    from . import lrp

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
    """Input | signed LRP map | overlay, as a new Figure (pure: nothing is shown)."""
    lesion, ruler = masks if masks is not None else (None, None)
    fig, axes = plt.subplots(1, 3, figsize=(3 * size * 1.15, size + 0.9), layout="constrained")
    axes[0].imshow(viz._display_image(x), interpolation="nearest")
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
    """Sliders that compose the LRP rule schedule (first-layer rule, gamma, epsilon) over
    one image; starts at the chapter's composite. In the printed book use :func:`lrp_grid`."""
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
    """The static twin of :func:`lrp_explorer`: signed LRP maps over gamma (rows) x
    epsilon (columns) with ``first`` on the first layer; each panel scaled on its own,
    with a colorbar and its input-relevance sum in the title. Returns the Figure."""
    x = _one_image(x)
    lesion, ruler = masks if masks is not None else (None, None)
    rows, cols = len(gamma_values), len(epsilon_values)
    fig = plt.figure(figsize=((cols + 1) * size * 1.25, rows * size + 1.0), layout="constrained")
    gs = fig.add_gridspec(rows, cols + 1)
    ax = fig.add_subplot(gs[:, 0])
    ax.imshow(viz._display_image(x), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title("input", fontsize=9)
    viz.draw_masks(ax, lesion, ruler, outline=True)
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


# --------------------------------------------------------------------------- activation maximisation
#: The regulariser settings of the ablation (none, each alone, all together) that
#: :func:`actmax_grid` draws by default; weights as :func:`chapter6_utils.actmax.maximize` takes them.
ACTMAX_ABLATION = {
    "none": {},
    "L2": {"l2": 2.0},
    "blur": {"blur_every": 4, "blur_sigma": 1.0},
    "TV": {"tv": 2.0},
    "all": {"l2": 2.0, "blur_every": 4, "blur_sigma": 1.0, "tv": 2.0, "jitter": 2},
}


def actmax_view(model, objective, l2: float = 0.0, blur_every: int = 0, tv: float = 0.0, jitter: int = 0,
                steps: int = 64, lr: float = 0.05, blur_sigma: float = 1.0, seed: int = 0, image_size=None):
    """One activation-maximisation image and the numbers the regularisers act on.

    Runs :func:`chapter6_utils.actmax.maximize` with the given knobs (same seed, same
    image). Returns ``(image, stats)``: ``image`` (H, W, 3) float array in [0, 1];
    ``stats`` a dict with ``objective`` (final value), ``start`` (value on the starting
    noise), ``l2`` (mean squared normalised pixel), ``tv`` (:func:`~chapter6_utils.actmax.total_variation`)
    and ``high_freq`` (:func:`~chapter6_utils.actmax.high_frequency_energy`).
    """
    from . import actmax  # lazy, like the other method modules
    from .data import normalize

    r = actmax.maximize(model, objective, steps=int(steps), lr=lr, l2=float(l2), blur_every=int(blur_every),
                        blur_sigma=blur_sigma, tv=float(tv), jitter=int(jitter), seed=seed, image_size=image_size)
    x = r.image[:1]
    stats = {"objective": r.trace[-1], "start": r.trace[0], "l2": float(normalize(x).pow(2).mean()),
             "tv": float(actmax.total_variation(x)[0]), "high_freq": float(actmax.high_frequency_energy(x)[0])}
    return x[0].permute(1, 2, 0).cpu().numpy(), stats


def _actmax_stats_line(stats: dict) -> str:
    return (f"objective {stats['start']:.1f} → {stats['objective']:.1f}; mean x² {stats['l2']:.2f}, "
            f"TV {stats['tv']:.3f}, high-frequency share {stats['high_freq']:.0%}")


def actmax_figure(result, title: str | None = None, size: float = 3.2):
    """The image of :func:`actmax_view` with its numbers under it, as a new Figure."""
    image, stats = result
    fig, ax = plt.subplots(figsize=(size, size + 0.8), layout="constrained")
    ax.imshow(image, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or "activation maximisation", fontsize=9)
    fig.supxlabel(textwrap.fill("Pixels in [0, 1], shown as they are (no rescaling). "
                                + _actmax_stats_line(stats) + ".", int(size * 13)), fontsize=8,
                  x=0.02, ha="left", multialignment="left")
    return fig


def actmax_explorer(model, objective, l2_values=(0.0, 0.5, 2.0, 8.0), blur_values=(0, 8, 4, 2),
                    tv_values=(0.0, 0.5, 2.0, 8.0), jitter_values=(0, 1, 2, 4), steps: int = 64, seed: int = 0):
    """Sliders for the regularisers of activation maximisation (L2 weight, blur every k
    steps (0: never), TV weight, jitter in pixels) over one objective. Returns the
    :func:`explorer` VBox; in the printed book use :func:`actmax_grid`."""
    desc = getattr(objective, "description", str(objective))

    def compute(l2, blur_every, tv, jitter):
        return actmax_view(model, objective, l2, blur_every, tv, jitter, steps=steps, seed=seed)

    def figure(result, l2, blur_every, tv, jitter):
        return actmax_figure(result, title=f"{desc}: L2 {l2:g}, blur every {blur_every}, TV {tv:g}, jitter {jitter}")

    return explorer(compute, figure, l2=list(map(float, l2_values)), blur_every=list(map(int, blur_values)),
                    tv=list(map(float, tv_values)), jitter=list(map(int, jitter_values)))


def actmax_grid(model, objective, settings: dict | None = None, steps: int = 64, seed: int = 0,
                size: float = 2.2, image_size=None):
    """The static twin of :func:`actmax_explorer`: one image per named regulariser setting
    (default :data:`ACTMAX_ABLATION`), all from the same starting noise, each titled with
    its final objective and the measures the regularisers act on. Returns the Figure."""
    settings = settings or ACTMAX_ABLATION
    views = {name: actmax_view(model, objective, steps=steps, seed=seed, image_size=image_size, **kw)
             for name, kw in settings.items()}
    fig, axes = plt.subplots(1, len(views), figsize=(len(views) * size, size + 1.2), layout="constrained",
                             squeeze=False)
    for ax, (name, (image, st)) in zip(axes[0], views.items()):
        ax.imshow(image, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{name}\nobj {st['objective']:.1f}, TV {st['tv']:.2f}\nhigh-freq {st['high_freq']:.0%}",
                     fontsize=8)
    desc = getattr(objective, "description", str(objective))
    fig.suptitle(f"Activation maximisation of {desc}: regularisers compared ({steps} steps, seed {seed})", fontsize=10)
    text = ("Pixels in [0, 1], shown as they are (no rescaling). Same starting noise in every panel. "
            + "; ".join(f"{n}: " + (", ".join(f"{k}={v:g}" for k, v in kw.items()) or "no regulariser")
                        for n, kw in settings.items()) + ".")
    fig.supxlabel(textwrap.fill(text, int(len(views) * size * 13)), fontsize=8, x=0.02, ha="left",
                  multialignment="left")
    return fig
