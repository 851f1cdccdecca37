"""Activation-maximisation regulariser explorer (notebook 05)."""
from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt

from .. import actmax
from ..data import normalize
from ._core import explorer


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
    """One activation-maximisation image (equation 10 (book/equations.md)) and the numbers
    the regularisers act on.

    Runs :func:`chapter6_utils.actmax.maximize` with the given knobs (same seed, same
    starting noise).

    Parameters
    ----------
    model : torch.nn.Module
    objective : callable
        An objective of :mod:`chapter6_utils.actmax` (e.g. ``actmax.class_logit(1)``).
    l2, blur_every, tv, jitter, steps, lr, blur_sigma, seed, image_size
        Passed to :func:`chapter6_utils.actmax.maximize`.

    Returns
    -------
    image : numpy.ndarray
        (H, W, 3) float in [0, 1].
    stats : dict
        ``objective`` (final value), ``start`` (value on the starting noise), ``l2`` (mean
        squared normalised pixel), ``tv`` (:func:`chapter6_utils.actmax.total_variation`)
        and ``high_freq`` (:func:`chapter6_utils.actmax.high_frequency_energy`).
    """
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
    """The image of :func:`actmax_view` with its numbers under it, as a new Figure.

    Parameters
    ----------
    result : tuple
        :func:`actmax_view`'s ``(image, stats)``.
    title : str, optional
    size : float, default 3.2

    Returns
    -------
    matplotlib.figure.Figure
    """
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
    """Sliders for the regularisers of activation maximisation over one objective.

    L2 weight, blur every k steps (0: never), TV weight, jitter in pixels. In the printed
    book use :func:`actmax_grid`.

    Parameters
    ----------
    model : torch.nn.Module
    objective : callable
    l2_values, blur_values, tv_values, jitter_values : sequence
        The sliders' values.
    steps : int, default 64
    seed : int, default 0

    Returns
    -------
    ipywidgets.VBox
    """
    desc = getattr(objective, "description", str(objective))

    def compute(l2, blur_every, tv, jitter):
        return actmax_view(model, objective, l2, blur_every, tv, jitter, steps=steps, seed=seed)

    def figure(result, l2, blur_every, tv, jitter):
        return actmax_figure(result, title=f"{desc}: L2 {l2:g}, blur every {blur_every}, TV {tv:g}, jitter {jitter}")

    return explorer(compute, figure, l2=list(map(float, l2_values)), blur_every=list(map(int, blur_values)),
                    tv=list(map(float, tv_values)), jitter=list(map(int, jitter_values)))


def actmax_grid(model, objective, settings: dict | None = None, steps: int = 64, seed: int = 0,
                size: float = 2.2, image_size=None):
    """The static twin of :func:`actmax_explorer`: one image per named regulariser setting.

    All start from the same noise; each is titled with its final objective and the
    measures the regularisers act on.

    Parameters
    ----------
    model : torch.nn.Module
    objective : callable
    settings : dict, optional
        ``{name: options of maximize}`` (default :data:`ACTMAX_ABLATION`).
    steps : int, default 64
    seed : int, default 0
    size : float, default 2.2
    image_size : int, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
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
