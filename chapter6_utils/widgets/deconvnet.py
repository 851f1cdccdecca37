"""A feature's top patches and Zeiler-Fergus projections (notebook 03)."""
from __future__ import annotations

import textwrap

import ipywidgets as widgets
import matplotlib.pyplot as plt

from .. import viz
from .._hooks import find_layer
from ..deconvnet import top_activations
from ._core import explorer


# --------------------------------------------------------------------------- Deconvnet features
def projection_view(model, images, layer, channel: int, k: int = 9):
    """The ``k`` strongest image patches of one feature with their Zeiler-Fergus projections.

    Parameters
    ----------
    model : torch.nn.Module
    images : torch.Tensor
        Normalised images to search, (N, 3, H, W).
    layer : str
        The module's name in ``model.named_modules()``.
    channel : int
    k : int, default 9

    Returns
    -------
    TopActivations
        :func:`chapter6_utils.deconvnet.top_activations` (Zeiler & Fergus, 2014).
    """
    return top_activations(model, images, layer, int(channel), k=int(k))


#: How a projection is drawn: "rgb", as Zeiler and Fergus showed theirs, a colour image per
#: patch with its own contrast; "signed", the channel sum on one diverging scale per feature.
PROJECTION_STYLES = ("rgb", "signed")


def projection_rgb(projection, percentile: float = viz.PERCENTILE):
    """One projection as a colour image with its own contrast.

    0 is mid-grey and plus or minus the ``percentile``-th percentile of ``|value|`` the ends
    of each channel's range, so that the pattern's colours and edges show whatever its
    strength.

    Parameters
    ----------
    projection : torch.Tensor
        (C, h, w).
    percentile : float, default 99.5

    Returns
    -------
    numpy.ndarray
        (h, w, 3) in [0, 1].
    """
    p = projection.detach().cpu().float()
    if p.dim() == 3 and p.shape[0] == 1:
        p = p.expand(3, -1, -1)
    v = viz.robust_max(p, percentile)
    return viz.as_image(0.5 + 0.5 * p / v)


def _patch_rows(fig, gs, row, top, percentile, label, style):
    """Patches (row ``row``) and their projections (row ``row + 1``) of one feature in
    the first k columns of ``gs``. ``style="signed"``: channel sums on one symmetric
    scale with a colorbar in the last (narrow) column; ``"rgb"``: :func:`projection_rgb`."""
    maps = [viz.to_map(p) for p in top.projection_patch]
    v = max(viz.robust_max(m, percentile) for m in maps) if maps else 1.0
    im = None
    for j, (patch, m) in enumerate(zip(top.patch, maps)):
        ax = fig.add_subplot(gs[row, j])
        ax.imshow(viz.display_image(patch), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"#{int(top.index[j])}: {float(top.value[j]):.2g}", fontsize=7)
        if j == 0:
            ax.set_ylabel(label, fontsize=8)
        ax = fig.add_subplot(gs[row + 1, j])
        if style == "rgb":
            ax.imshow(projection_rgb(top.projection_patch[j], percentile), interpolation="nearest")
        else:
            im = ax.imshow(m.numpy(), cmap=viz.DIVERGING_CMAP, vmin=-v, vmax=v, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        if j == 0:
            ax.set_ylabel("projection", fontsize=8)
    if im is not None:
        cb = fig.colorbar(im, cax=fig.add_subplot(gs[row + 1, -1]), ticks=[-v, 0.0, v], format="%.2g")
        cb.ax.tick_params(labelsize=6)
        cb.set_label(viz.scaling_note(True, percentile, short=True), fontsize=6)


_PROJECTION_CAPTION = {
    "signed": ("Top: the receptive-field patches of the k strongest activations (image index: activation). "
               "Bottom: their Zeiler-Fergus projections to the pixels (deconvnet: unpool to the switches, "
               "ReLU, transposed convolution), summed over colour channels; signed, red +, blue −, white 0, "
               "one symmetric scale per feature, limits ±{pct} of |value| over its patches."),
    "rgb": ("Top: the receptive-field patches of the k strongest activations (image index: activation). "
            "Bottom: their Zeiler-Fergus projections to the pixels (deconvnet: unpool to the switches, "
            "ReLU, transposed convolution) shown as colour images, as Zeiler and Fergus did: each patch "
            "with its own contrast, mid-grey 0 and ±{pct} of its |value| the ends of each colour "
            "channel's range. Colours and edges show the pattern; its strength is the activation above."),
}


def _patch_figure(tops, title, percentile, size, style="rgb"):
    if style not in PROJECTION_STYLES:
        raise ValueError(f"style must be one of {PROJECTION_STYLES}, got {style!r}")
    # A fixed grid rather than constrained layout: with dozens of small panels the layout
    # engine takes seconds to draw, and every panel here has the same size anyway.
    k = max(max(len(t.patch) for t in tops), 1)
    rows = 2 * len(tops)
    width, height = k * size + 1.2, rows * size * 1.1 + 1.2
    fig = plt.figure(figsize=(width, height))
    gs = fig.add_gridspec(rows, k + 1, width_ratios=[1] * k + [0.12], left=0.6 / width, right=1 - 0.55 / width,
                          top=1 - 0.45 / height, bottom=0.75 / height, wspace=0.15, hspace=0.3)
    for i, top in enumerate(tops):
        _patch_rows(fig, gs, 2 * i, top, percentile, f"{top.layer}:{top.channel}", style)
    fig.suptitle(title, fontsize=9, y=1 - 0.1 / height, va="top")
    fig.text(0.02, 0.05 / height, textwrap.fill(_PROJECTION_CAPTION[style].format(pct=viz._pct(percentile)),
                                                int(width * 15)), fontsize=7, va="bottom")
    return fig


def projection_figure(top, title: str | None = None, percentile: float = viz.PERCENTILE, size: float = 1.0,
                      style: str = "rgb"):
    """One feature's top patches over their projections, as a new Figure (pure).

    Parameters
    ----------
    top : TopActivations
        From :func:`projection_view`.
    title : str, optional
    percentile : float, default 99.5
        Each panel is clipped at this percentile of ``|value|`` (:func:`chapter6_utils.viz.heatmap`).
    size : float, default 1.0
        Inches per panel.
    style : {"rgb", "signed"}, default "rgb"
        See ``PROJECTION_STYLES``.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ValueError
        For another ``style``.
    """
    return _patch_figure([top], title or f"Feature {top.channel} of {top.layer}: top {len(top.patch)} patches "
                         "and their projections", percentile, size, style)


def projection_explorer(model, images, layers, max_channel: int | None = None, k: int = 9):
    """A layer menu and a channel slider over :func:`projection_view` and :func:`projection_figure`.

    A channel a layer does not have prints the error in place of the figure. In the printed
    book use :func:`projection_grid`.

    Parameters
    ----------
    model : torch.nn.Module
    images : torch.Tensor
        Normalised images to search, (N, 3, H, W).
    layers : sequence of str
        Module names, e.g. ``["features.3", "features.8"]``.
    max_channel : int, optional
        The channel slider's end (default: the widest of those layers minus one).
    k : int, default 9

    Returns
    -------
    ipywidgets.VBox
    """
    layers = list(layers)
    if max_channel is None:
        widths = [getattr(find_layer(model, n)[1], "out_channels", 0) for n in layers]
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


def projection_grid(model, images, features, k: int = 9, percentile: float = viz.PERCENTILE, size: float = 0.9,
                    style: str = "rgb"):
    """The static twin of :func:`projection_explorer`.

    For each ``(layer, channel)`` of ``features``: a row of its top-``k`` patches over a
    row of their projections.

    Parameters
    ----------
    model : torch.nn.Module
    images : torch.Tensor
        Normalised images to search, (N, 3, H, W).
    features : sequence of (str, int)
    k : int, default 9
    percentile : float, default 99.5
        Each panel is clipped at this percentile of ``|value|`` (:func:`chapter6_utils.viz.heatmap`).
    size : float, default 0.9
        Inches per panel.
    style : {"rgb", "signed"}, default "rgb"

    Returns
    -------
    matplotlib.figure.Figure
    """
    tops = [projection_view(model, images, layer, channel, k) for layer, channel in features]
    return _patch_figure(tops, f"Deconvnet features: top {k} patches (rows 1, 3, ...) and their projections",
                         percentile, size, style)
