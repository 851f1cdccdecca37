"""Figures shared by the notebooks. Imports no method module: it draws what it is given.

Conventions (CONTRIBUTING.md, "Figures"): unsigned maps on a sequential colormap, signed maps on a
diverging one centred at zero with symmetric limits, a colorbar, and a title that says
what is shown. Lesion masks are drawn as cyan contours, ruler masks as yellow ones.

Which images are which: a **tensor** image is taken to be a model input, ImageNet-normalised
(``(3, H, W)`` or ``(1, 3, H, W)``, see :func:`chapter6_utils.data.normalize`) unless a
function is told ``normalized=False``; a **numpy array** is a display image ``(H, W, 3)`` in
``[0, 1]`` (or uint8). Attribution maps are ``(H, W)``; :func:`to_map` makes them so.

Scaling: every map is clipped at a robust maximum, the ``percentile``-th percentile of
``|value|`` (default 99.5), so that a handful of extreme pixels do not wash out the rest.
Every function returns its artist or Figure and never calls ``plt.show()``.
"""
from __future__ import annotations

import math
import textwrap

import matplotlib.patheffects as pe
import matplotlib.pyplot as plt
import numpy as np
import torch

from . import _checks, data  # plumbing (validators, de-normalisation), not method modules
from ._hooks import upsample  # the one map upsampler

__all__ = ["display_image", "LESION_COLOUR", "RULER_COLOUR", "SEQUENTIAL_CMAP", "DIVERGING_CMAP", "PERCENTILE",
           "as_image", "draw_masks", "show_lesions", "plot_confusion",
           "to_map", "is_signed", "robust_max", "scaling_note", "heatmap", "overlay", "method_grid"]

LESION_COLOUR = "#00e5ff"
RULER_COLOUR = "#ffd400"
SEQUENTIAL_CMAP = "inferno"  # unsigned maps: dark = 0, bright = large
DIVERGING_CMAP = "RdBu_r"  # signed maps: red = positive, white = 0, blue = negative
PERCENTILE = 99.5


def as_image(x) -> np.ndarray:
    """An image in [0, 1] as an array for ``imshow``.

    Parameters
    ----------
    x : torch.Tensor or numpy.ndarray
        A (3, H, W) tensor in [0, 1], or an (H, W, 3) or (H, W) array.

    Returns
    -------
    numpy.ndarray
        (H, W, 3) (or (H, W)), clipped to [0, 1].

    Raises
    ------
    ValueError
        For any other shape.
    """
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dim() == 4 and x.shape[0] == 1:
            x = x[0]
        if x.dim() == 3 and x.shape[0] in (1, 3):
            x = x.permute(1, 2, 0)
        x = x.numpy()
    arr = np.asarray(x, dtype=np.float32)
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (1, 3))):
        raise ValueError(f"x has shape {arr.shape}; expected a (3, H, W) tensor or an (H, W, 3) or (H, W) array")
    return np.clip(arr, 0.0, 1.0)


def draw_masks(ax, lesion_mask=None, ruler_mask=None, linewidth=1.0, outline: bool = False) -> None:
    """Outline the lesion (cyan) and ruler (yellow) masks on ``ax``.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
    lesion_mask, ruler_mask : torch.Tensor or numpy.ndarray, optional
        (H, W) bool; None (or an empty mask) draws nothing.
    linewidth : float, default 1.0
    outline : bool, default False
        Stroke each contour with a thin black edge, so that a yellow line stays visible on
        the bright end of a sequential colormap or the white centre of a diverging one.
    """
    effects = [pe.withStroke(linewidth=linewidth + 1.2, foreground="black")] if outline else None
    for mask, colour in ((lesion_mask, LESION_COLOUR), (ruler_mask, RULER_COLOUR)):
        if mask is None:
            continue
        m = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
        if m.any():
            cs = ax.contour(m.astype(float), levels=[0.5], colors=[colour], linewidths=linewidth)
            if effects:
                # matplotlib >= 3.8 makes a ContourSet one Collection; older ones hold a list.
                for artist in getattr(cs, "collections", None) or [cs]:
                    artist.set_path_effects(effects)


def show_lesions(data, indices=None, ncols: int = 8, masks: bool = True, titles=None,
                 size: float = 1.6, suptitle: str | None = None):
    """A grid of lesion images from a :class:`~chapter6_utils.synthetic.LesionSet`.

    Parameters
    ----------
    data : LesionSet
    indices : sequence of int, optional
        Which images (default: the first ``ncols``).
    ncols : int, default 8
        Panels per row.
    masks : bool, default True
        Outline the lesion (cyan) and ruler (yellow) masks.
    titles : sequence of str, optional
        One per image (default: the class name and whether a ruler is present).
    size : float, default 1.6
        Inches per panel.
    suptitle : str, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    ncols = _checks.integer(ncols, "ncols", low=1, hint="images per row")
    indices = list(range(min(ncols, len(data)))) if indices is None else [int(i) for i in indices]
    nrows = math.ceil(len(indices) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + (0.4 if suptitle else 0)),
                             squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= len(indices):
            continue
        i = indices[k]
        ax.imshow(as_image(data.images[i]), interpolation="nearest")
        if masks:
            draw_masks(ax, data.lesion_mask[i], data.ruler_mask[i], linewidth=0.8)
        title = titles[k] if titles is not None else (
            f"{data.classes[int(data.labels[i])]}" + (" + ruler" if bool(data.has_ruler[i]) else ""))
        ax.set_title(title, fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig


def plot_confusion(matrix, classes, ax=None, title: str = ""):
    """A confusion matrix with counts and row percentages (rows: true class).

    Parameters
    ----------
    matrix : torch.Tensor or numpy.ndarray
        (K, K) counts, rows the true class, columns the predicted one.
    classes : sequence of str
        The K class names.
    ax : matplotlib.axes.Axes, optional
        Where to draw (default: a new figure).
    title : str, default ""

    Returns
    -------
    matplotlib.axes.Axes

    Raises
    ------
    ValueError
        If ``matrix`` is not (K, K) for the K names.
    """
    m = np.asarray(matrix.cpu() if isinstance(matrix, torch.Tensor) else matrix, dtype=float)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] != len(classes):
        raise ValueError(f"matrix has shape {m.shape}; expected ({len(classes)}, {len(classes)}), one row and "
                         "column per class")
    if ax is None:
        _, ax = plt.subplots(figsize=(3, 3))
    rows = m / np.maximum(m.sum(1, keepdims=True), 1)
    im = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    for (r, c), v in np.ndenumerate(m):
        ax.text(c, r, f"{int(v)}\n{rows[r, c]:.0%}", ha="center", va="center", fontsize=8,
                color="white" if rows[r, c] > 0.6 else "black")
    ax.set_xticks(range(len(classes)), classes, fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set_xlabel("predicted", fontsize=8)
    ax.set_ylabel("true", fontsize=8)
    ax.set_title(title, fontsize=9)
    plt.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    return ax


# --------------------------------------------------------------------------- maps
def to_map(a, reduce: str = "sum") -> torch.Tensor:
    """One image's attribution as an (H, W) float32 CPU tensor.

    Parameters
    ----------
    a : torch.Tensor or numpy.ndarray
        (1, C, H, W), (C, H, W) or (H, W); an (H, W) map is kept as it is.
    reduce : {"sum", "abs_sum", "max_abs"}, default "sum"
        How channels are reduced: ``"sum"`` keeps the sign, so a signed attribution such
        as gradient x input stays signed and its channel contributions add up, as LRP's
        conservation (equation 4 (book/equations.md)) assumes; ``"abs_sum"`` and
        ``"max_abs"`` (Simonyan et al., 2013's saliency: the largest ``|gradient|`` over
        the colour channels, equation 1 (book/equations.md)) are unsigned.

    Returns
    -------
    torch.Tensor
        (H, W) float32 on the CPU.

    Raises
    ------
    ValueError
        For a batch of several images (index it first), another shape or an unknown
        ``reduce``.
    """
    if reduce not in ("sum", "abs_sum", "max_abs"):
        raise ValueError(f"reduce must be 'sum', 'abs_sum' or 'max_abs', got {reduce!r}")
    t = a.detach().cpu() if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a))
    t = t.float()
    if t.dim() == 4:
        if t.shape[0] != 1:
            raise ValueError(f"attribution has shape {tuple(t.shape)}: a batch of {t.shape[0]}; "
                             "to_map takes one image, pass a[i]")
        t = t[0]
    if t.dim() == 3:
        t = {"sum": lambda: t.sum(0), "abs_sum": lambda: t.abs().sum(0),
             "max_abs": lambda: t.abs().amax(0)}[reduce]()
    if t.dim() != 2:
        raise ValueError(f"attribution has shape {tuple(a.shape)}; expected (1, C, H, W), (C, H, W) or (H, W)")
    return t


def _as_2d(m) -> np.ndarray:
    """An (H, W) map (leading size-1 dimensions allowed) to a float numpy array."""
    arr = m.detach().cpu().float().numpy() if isinstance(m, torch.Tensor) else np.asarray(m, dtype=np.float32)
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        # Summing channels silently could also sum a batch: make the caller say which.
        raise ValueError(f"map has shape {arr.shape}; expected (H, W); reduce it with viz.to_map first")
    return arr


def is_signed(m) -> bool:
    """Whether a map has a negative finite value.

    Parameters
    ----------
    m : torch.Tensor or numpy.ndarray
        Any shape.

    Returns
    -------
    bool
    """
    arr = np.asarray(m.detach().cpu() if isinstance(m, torch.Tensor) else m, dtype=np.float64)
    return bool(np.any(arr[np.isfinite(arr)] < 0))


def robust_max(m, percentile: float = PERCENTILE) -> float:
    """The colour limit of a map: the ``percentile``-th percentile of ``|m|``.

    Parameters
    ----------
    m : torch.Tensor or numpy.ndarray
        Any shape; non-finite values are ignored.
    percentile : float, default 99.5
        In (0, 100]: the map is clipped at this percentile of ``|value|`` (100: the maximum).

    Returns
    -------
    float
        Never 0 (the colour limits must differ): it falls back to ``max |m|``, then to 1
        for an all-zero map.

    Raises
    ------
    ValueError, TypeError
        If ``percentile`` is outside (0, 100].
    """
    percentile = _check_percentile(percentile)
    arr = np.abs(np.asarray(m.detach().cpu() if isinstance(m, torch.Tensor) else m, dtype=np.float64))
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return 1.0
    v = float(np.percentile(arr, percentile))
    if v <= 0:
        v = float(arr.max())
    return v if v > 0 else 1.0


def _check_percentile(percentile) -> float:
    return _checks.real(percentile, "percentile", low=0.0, low_open=True, high=100.0, hint="100: the maximum")


def _check_alpha(alpha, name="alpha", none_ok=False):
    return _checks.real(alpha, name, low=0.0, high=1.0, none_ok=none_ok, hint="opacity")


def _pct(percentile: float) -> str:
    return "the maximum" if percentile >= 100 else f"the {percentile:g}th percentile"


def _cbar_label(signed: bool, percentile: float) -> str:
    # Short enough for the side of a 3-inch panel; the colours' meaning is in the caption.
    if percentile >= 100:
        return "value, limits ±max |value|" if signed else "value, limits 0 to max"
    return (f"value, clipped at ±{percentile:g}th percentile of |value|" if signed
            else f"value, clipped at {percentile:g}th percentile")


def scaling_note(signed: bool, percentile: float = PERCENTILE, short: bool = False) -> str:
    """The words that say how a map is coloured.

    Parameters
    ----------
    signed : bool
        Whether the map is drawn on the diverging colormap.
    percentile : float, default 99.5
        In (0, 100]: the map is clipped at this percentile of ``|value|`` (100: the maximum).
    short : bool, default False
        A few characters for a colorbar in a grid of small panels, instead of a caption
        phrase.

    Returns
    -------
    str
    """
    percentile = _check_percentile(percentile)
    if short:
        return f"± p{percentile:g} of |value|" if signed else f"0 to p{percentile:g}"
    if signed:
        return (f"signed: red +, blue −, white 0; limits ±{_pct(percentile)} of |value|")
    return f"unsigned: 0 to {_pct(percentile)} of value"


def heatmap(ax, m, signed=None, cmap=None, title=None, colorbar=True, percentile=PERCENTILE, *,
            alpha=None, extent=None, label=None, interpolation="nearest"):
    """Draw an (H, W) map on ``ax`` by the book's colour rules.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
    m : torch.Tensor or numpy.ndarray
        (H, W) (see :func:`to_map` for (C, H, W) attributions).
    signed : bool, optional
        None decides from the data (signed when any value is negative). Signed:
        ``DIVERGING_CMAP`` with limits ``[-v, v]``, centred at 0. Unsigned:
        ``SEQUENTIAL_CMAP`` with limits ``[0, v]`` (a negative value, if forced unsigned,
        shows as 0). ``v = robust_max(m, percentile)``.
    cmap : str, optional
        Another colormap (keep it diverging for signed maps).
    title : str, optional
        The panel title; say the method.
    colorbar : bool, default True
        Add a colorbar labelled with the clipping (``label`` overrides the words).
    percentile : float, default 99.5
        In (0, 100]: the map is clipped at this percentile of ``|value|`` (100: the maximum).
    alpha, extent, interpolation : optional
        Passed to ``imshow``. ``extent`` places a map of another resolution over an image's
        pixel grid, e.g. ``(-0.5, W - 0.5, H - 0.5, -0.5)``.
    label : str, optional
        The colorbar's label.

    Returns
    -------
    matplotlib.image.AxesImage

    Raises
    ------
    ValueError, TypeError
        If ``m`` is not 2-D, or ``percentile`` or ``alpha`` is out of range.
    """
    percentile = _check_percentile(percentile)
    _check_alpha(alpha, none_ok=True)
    arr = _as_2d(m)
    signed = is_signed(arr) if signed is None else bool(signed)
    v = robust_max(arr, percentile)
    vmin, vmax = (-v, v) if signed else (0.0, v)
    cmap = cmap or (DIVERGING_CMAP if signed else SEQUENTIAL_CMAP)
    im = ax.imshow(arr, cmap=cmap, vmin=vmin, vmax=vmax, alpha=alpha, extent=extent,
                   interpolation=interpolation)
    ax.set_xticks([])
    ax.set_yticks([])
    if title is not None:
        ax.set_title(title, fontsize=9)
    if colorbar:
        finite = arr[np.isfinite(arr)]
        above = finite.size and finite.max() > vmax
        below = finite.size and finite.min() < vmin
        # The arrows say that some pixels were clipped, not just that they could be.
        extend = {(True, True): "both", (True, False): "max", (False, True): "min"}.get(
            (bool(above), bool(below)), "neither")
        cb = ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.03, extend=extend,
                                ticks=[-v, 0.0, v] if signed else [0.0, v], format="%.2g")
        cb.ax.tick_params(labelsize=7)
        cb.set_label(_cbar_label(signed, percentile) if label is None else label, fontsize=7)
    return im


def display_image(image, normalized: bool = True) -> np.ndarray:
    """Any image as an (H, W, 3) float array in [0, 1], for ``imshow``.

    Parameters
    ----------
    image : torch.Tensor or numpy.ndarray or PIL.Image.Image
        A (3, H, W) or (1, 3, H, W) tensor, ImageNet-normalised unless ``normalized=False``,
        or an (H, W, 3) array in [0, 1] (or uint8).
    normalized : bool, default True
        Whether a tensor is ImageNet-normalised (see :func:`chapter6_utils.data.normalize`).

    Returns
    -------
    numpy.ndarray
        (H, W, 3) float32 in [0, 1].

    Raises
    ------
    ValueError
        For another shape.
    """
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu().float()
        if t.dim() == 4 and t.shape[0] == 1:
            t = t[0]
        if t.dim() == 3 and t.shape[0] == 1:  # greyscale: show as grey, not as a colour channel
            t = t.expand(3, -1, -1)
        return data.to_image(t) if normalized else as_image(t)
    arr = np.asarray(image)
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"image has shape {arr.shape}; expected a (3, H, W) tensor or an (H, W, 3) array")
    return np.clip(arr.astype(np.float32), 0.0, 1.0)


def _resize(arr: np.ndarray, size) -> np.ndarray:
    """Bilinear resize of an (h, w) map to ``size`` = (H, W) (bilinear never overshoots)."""
    if arr.shape == tuple(size):
        return arr
    return upsample(torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)), tuple(size)).numpy()


def overlay(ax, image, m, alpha=0.5, signed=None, cmap=None, title=None, colorbar=True,
            percentile=PERCENTILE, *, normalized=True, label=None):
    """Draw the map ``m`` over ``image``.

    A map of lower resolution (a 7x7 Grad-CAM) is upsampled bilinearly to (H, W) before
    drawing; colours follow :func:`heatmap` (the sign is read on the upsampled map, which
    has the same sign pattern).

    Parameters
    ----------
    ax : matplotlib.axes.Axes
    image : torch.Tensor or numpy.ndarray
        An ImageNet-normalised (1, 3, H, W) or (3, H, W) tensor (``normalized=False`` for
        one in [0, 1]) or an (H, W, 3) array in [0, 1].
    m : torch.Tensor or numpy.ndarray
        (h, w).
    alpha : float, default 0.5
        The map's opacity, in [0, 1].
    signed, cmap, title, colorbar, percentile, label
        As in :func:`heatmap`.
    normalized : bool, default True
        Whether a tensor ``image`` is ImageNet-normalised.

    Returns
    -------
    matplotlib.image.AxesImage
        The map's image.
    """
    percentile, alpha = _check_percentile(percentile), _check_alpha(alpha)
    img = display_image(image, normalized)
    arr = _resize(_as_2d(m), img.shape[:2])
    ax.imshow(img, interpolation="nearest")
    return heatmap(ax, arr, signed=signed, cmap=cmap, title=title, colorbar=colorbar,
                   percentile=percentile, alpha=alpha, label=label)


def _per_image(value, n: int, what: str) -> list:
    """A batch (tensor/array with first dimension n) or a list of n items to a list."""
    if value is None:
        return [None] * n
    if isinstance(value, (torch.Tensor, np.ndarray)):
        if n == 1 and value.ndim == 2:
            return [value]
        if value.shape[0] != n:
            raise ValueError(f"{what} has shape {tuple(value.shape)}; expected {n} images along dim 0")
        return [value[i] for i in range(n)]
    value = list(value)
    if len(value) != n:
        raise ValueError(f"{what} has {len(value)} entries for {n} images")
    return value


def _image_list(images) -> list:
    if isinstance(images, torch.Tensor) and images.dim() == 3:
        return [images]
    if isinstance(images, np.ndarray) and images.ndim == 3 and images.shape[-1] == 3:
        return [images]
    return list(images)


def method_grid(images, maps: dict, signed: dict | None = None, lesion_masks=None, ruler_masks=None,
                image_titles=None, caption=None, *, normalized=True, percentile=PERCENTILE,
                size: float = 2.0, overlay_alpha: float | None = None):
    """Compare methods on images: one row per image, columns "input" then one per method.

    Each panel is scaled on its own (the ``percentile`` of ``|value|``), with its own
    colorbar.

    Parameters
    ----------
    images : torch.Tensor or list
        N images: an (N, 3, H, W) tensor, a list of (3, H, W) or (1, 3, H, W) tensors
        (ImageNet-normalised; ``normalized=False`` for [0, 1]) or (H, W, 3) arrays.
    maps : dict
        ``{method name: N maps}``, as a list or a batch tensor; each map is reduced by
        :func:`to_map` (channels summed), so (N, H, W), (N, C, H, W) and lists of (h, w)
        all work. A map of lower resolution is stretched over the image's pixel grid
        (blocky, not smoothed) so that mask contours line up.
    signed : dict, optional
        ``{method: bool}``; a missing method is signed when any of its maps has a negative
        value. One rule per column, so that a column's panels read alike.
    lesion_masks, ruler_masks : optional
        N (H, W) bool masks (a tensor batch or a list whose entries may be None), drawn as
        cyan and yellow contours on every panel.
    image_titles : sequence of str, optional
        N titles for the input panels (default "input").
    caption : str, optional
        Leading sentences; a description of the methods' sign and scaling is always
        appended, and the whole is drawn under the figure.
    normalized : bool, default True
    percentile : float, default 99.5
        In (0, 100]: the map is clipped at this percentile of ``|value|`` (100: the maximum).
    size : float, default 2.0
        Inches per panel.
    overlay_alpha : float, optional
        Draw each map over its image with this opacity instead of alone.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ValueError
        If a method's maps or the masks do not come one per image.
    """
    percentile = _check_percentile(percentile)
    overlay_alpha = _check_alpha(overlay_alpha, "overlay_alpha", none_ok=True)
    imgs = [display_image(im, normalized) for im in _image_list(images)]
    n, names = len(imgs), list(maps)
    columns = {name: [to_map(a) for a in _per_image(maps[name], n, f"maps[{name!r}]")] for name in names}
    signed = dict(signed or {})
    for name in names:
        if signed.get(name) is None:
            signed[name] = any(is_signed(a.numpy()) for a in columns[name])
    lesions = _per_image(lesion_masks, n, "lesion_masks")
    rulers = _per_image(ruler_masks, n, "ruler_masks")
    titles = list(image_titles) if image_titles is not None else ["input"] * n

    ncols = 1 + len(names)
    fig, axes = plt.subplots(n, ncols, figsize=(ncols * size * 1.2, n * size + 0.6), squeeze=False,
                             layout="constrained")
    for i, img in enumerate(imgs):
        h, w = img.shape[:2]
        ax = axes[i, 0]
        ax.imshow(img, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(titles[i], fontsize=9)
        draw_masks(ax, lesions[i], rulers[i], linewidth=0.9, outline=True)
        for j, name in enumerate(names, start=1):
            ax, m = axes[i, j], columns[name][i].numpy()
            note = scaling_note(signed[name], percentile, short=True)
            if overlay_alpha is not None:
                ax.imshow(img, interpolation="nearest")
                m = _resize(m, (h, w))
            heatmap(ax, m, signed=signed[name], title=name, percentile=percentile, label=note,
                    alpha=overlay_alpha, extent=(-0.5, w - 0.5, h - 0.5, -0.5))
            draw_masks(ax, lesions[i], rulers[i], linewidth=0.9, outline=True)

    parts = [f"{name} ({'signed' if signed[name] else 'unsigned'}, "
             f"{DIVERGING_CMAP if signed[name] else SEQUENTIAL_CMAP})" for name in names]
    text = (f"Columns: input, then {', '.join(parts)}. Each panel is scaled on its own: "
            f"signed maps red +, blue −, white 0, limits ±{_pct(percentile)} of |value|; "
            f"unsigned maps 0 to {_pct(percentile)}; stronger values are clipped.")
    if any(m is not None for m in lesions + rulers):
        text += " Contours: lesion (cyan), ruler (yellow)."
    if caption:
        text = caption.rstrip() + " " + text
    width_chars = max(40, int(ncols * size * 1.2 * 13))  # about 13 characters an inch at 8 pt
    # supxlabel is a figure text that the constrained layout makes room for.
    fig.supxlabel(textwrap.fill(text, width_chars), fontsize=8, x=0.02, ha="left", multialignment="left")
    return fig
