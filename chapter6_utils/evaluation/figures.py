"""Figures of the evaluations (notebook 07): the cascading randomisation grid, similarity
and deletion curves, the agreement matrix. They draw results they are given and compute
nothing but display scaling; every function returns the Figure."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from .. import _checks, viz

__all__ = ["randomization_grid", "similarity_curves", "curves_figure", "agreement_figure", "similarity_bands",
           "faithfulness_bands", "random_weight_figure"]


def _check_results(results, name, what):
    if not isinstance(results, dict) or not results:
        raise TypeError(f"{name} must be a non-empty dict {{method name: {what}}}, got {results!r:.80}")


def randomization_grid(results: dict, index: int = 0, image=None, labels: dict | None = None,
                       size: float = 1.15, percentile: float = viz.PERCENTILE):
    """Adebayo et al.'s figure: one row per method, one column per step of the sanity
    check (trained, then each layer re-initialised from the output down), image ``index``.

    Panels show |map| (what the rank correlation compares) on the sequential colormap,
    each scaled on its own from 0 to its ``percentile``-th percentile.
    ``results``: {name: RandomizationResult} over the same layers; ``image``: the
    normalised input (3, H, W), drawn first when given.
    """
    _check_results(results, "results", "RandomizationResult")
    names = list(results)
    layers = results[names[0]].layers
    n_images = results[names[0]].maps.shape[1]
    index = _checks.integer(index, "index", low=0, high=n_images - 1, hint=f"an image of the {n_images} compared")
    labels = labels or {}
    offset = 1 if image is not None else 0
    ncols = len(layers) + offset
    fig, axes = plt.subplots(len(names), ncols, figsize=(ncols * size + 0.8, len(names) * size + 0.9),
                             squeeze=False, layout="constrained")
    im = None
    for i, name in enumerate(names):
        res = results[name]
        if image is not None:
            axes[i, 0].imshow(viz.display_image(image), interpolation="nearest")
            axes[i, 0].set_xticks([])
            axes[i, 0].set_yticks([])
        axes[i, offset].set_ylabel(labels.get(name, name), fontsize=8)
        for j, layer in enumerate(layers):
            ax = axes[i, j + offset]
            m = res.maps[j, index].abs().cpu().numpy()
            im = ax.imshow(m / viz.robust_max(m, percentile), cmap=viz.SEQUENTIAL_CMAP, vmin=0.0, vmax=1.0,
                           interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title("trained" if j == 0 else f"→ {layer}", fontsize=7, rotation=30)
            ax.set_xlabel(f"ρ {res.spearman[j, index]:.2f}", fontsize=7, labelpad=1)
    if image is not None:
        axes[0, 0].set_title("input", fontsize=8)
    cb = fig.colorbar(im, ax=axes, fraction=0.02, pad=0.01, extend="max")
    cb.set_label(f"|map| / its {percentile:g}th percentile", fontsize=8)
    fig.supxlabel(f"Cascading randomisation ({results[names[0]].order}): each column re-initialises one more "
                  "layer, from the output towards the input. Unsigned |map|, inferno, each panel scaled on its "
                  f"own (0 to the {percentile:g}th percentile); ρ: Spearman rank correlation of |map| with the "
                  "trained model's map.", fontsize=8, wrap=True)
    return fig


def similarity_curves(results: dict, labels: dict | None = None, metrics=("spearman", "ssim")):
    """Mean similarity to the trained map (with the spread over images) after each step,
    one line per method: the summary plot of Adebayo et al. (2018)."""
    _check_results(results, "results", "RandomizationResult")
    if isinstance(metrics, str) or not metrics:
        raise TypeError(f"metrics must be a non-empty tuple of 'spearman' and/or 'ssim', got {metrics!r}")
    metrics = [_checks.choice(m, "metrics", ("spearman", "ssim")) for m in metrics]
    labels = labels or {}
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 3.8), squeeze=False,
                             layout="constrained")
    for ax, metric in zip(axes[0], metrics):
        for name, res in results.items():
            v = getattr(res, metric).cpu().numpy()
            steps = np.arange(len(res.layers))
            mean = np.nanmean(v, 1)
            line, = ax.plot(steps, mean, marker="o", ms=3, label=labels.get(name, name))
            ax.fill_between(steps, np.nanmin(v, 1), np.nanmax(v, 1), color=line.get_color(), alpha=0.12)
        layers = next(iter(results.values())).layers
        ax.set_xticks(np.arange(len(layers)), ["trained"] + [f"→ {n}" for n in layers[1:]], rotation=60,
                      fontsize=7, ha="right")
        ax.axhline(0, color="grey", lw=0.6)
        ax.set_ylim(-0.3, 1.05)
        ax.set_ylabel({"spearman": "Spearman ρ of |map| with trained",
                       "ssim": "SSIM with trained"}.get(metric, metric))
    axes[0, -1].legend(fontsize=7, loc="upper right")
    fig.suptitle("Similarity to the trained model's map as layers are re-initialised "
                 "(line: mean over images; band: min to max)", fontsize=10)
    return fig


def curves_figure(curves: dict, labels: dict | None = None):
    """Deletion and insertion curves, mean over images, areas in the legend.
    ``curves``: {name: (deletion Curve, insertion Curve)}."""
    _check_results(curves, "curves", "(deletion Curve, insertion Curve)")
    labels = labels or {}
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
    for name, pair in curves.items():
        for ax, c in zip(axes, pair):
            style = dict(color="black", ls="--") if name == "random" else {}
            ax.plot(c.fractions.cpu(), c.scores.mean(0).cpu(), label=f"{labels.get(name, name)} "
                    f"(AUC {c.auc.mean():.3f})", **style)
    first = next(iter(curves.values()))
    for ax, c, better in zip(axes, first, ("lower", "higher")):
        ax.set_xlabel(f"share of pixels {'removed' if c.kind == 'deletion' else 'inserted'}, in the map's order")
        ax.set_ylabel("probability of the target class (mean)")
        ax.set_title(f"{c.kind.capitalize()} (baseline: {c.baseline}); {better} area = more faithful", fontsize=9)
        ax.legend(fontsize=7)
    return fig


def agreement_figure(result, labels: dict | None = None):
    """The agreement matrix as a heatmap with its values written in (``result``: an
    :class:`~chapter6_utils.evaluation.Agreement`)."""
    if not hasattr(result, "names") or not hasattr(result, "matrix"):
        raise TypeError(f"result must be an Agreement (evaluation.agreement(maps)), got {type(result).__name__}")
    labels = labels or {}
    names = [labels.get(n, n) for n in result.names]
    mat = result.matrix.cpu().numpy()
    fig, ax = plt.subplots(figsize=(1 + 0.75 * len(names), 0.6 + 0.65 * len(names)), layout="constrained")
    im = ax.imshow(mat, cmap=viz.DIVERGING_CMAP, vmin=-1, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{mat[i, j]:.2f}", ha="center", va="center", fontsize=7)
    cb = fig.colorbar(im, ax=ax, fraction=0.046)
    cb.set_label("mean Spearman ρ of |map| (signed scale, −1 to 1)", fontsize=8)
    ax.set_title("Agreement between methods (rank correlation of |map|, mean over images)", fontsize=9)
    return fig


def _band(values) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and 95% percentile-bootstrap band of (P, ...) values per point p, resampling
    everything after the first axis (images, or seeds x images) as one pool."""
    v = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
    if np.isnan(v).all():  # the constant control: no ranking, nothing to draw
        return (np.full(len(v), np.nan),) * 3
    rng = np.random.default_rng(0)
    idx = rng.integers(0, v.shape[1], size=(1000, v.shape[1]))
    means = np.nanmean(v[:, idx], axis=2)  # (P, 1000)
    return np.nanmean(v, 1), np.nanpercentile(means, 2.5, axis=1), np.nanpercentile(means, 97.5, axis=1)


def similarity_bands(report, labels: dict | None = None, methods=None):
    """Spearman ρ with the trained map after each cascading step (output first): the mean
    over the seeds the curve was drawn for and the images, with its 95% bootstrap band
    (``report``: a SanityReport run with ``curve=True``). The dotted line marks the
    test's step, the top half."""
    if not getattr(report, "curve", None):
        raise ValueError("report has no curve: run evaluation.sanity_checks(..., curve=True)")
    labels = labels or report.labels
    methods = [m for m in (methods or report.methods) if m in report.curve]
    fig, ax = plt.subplots(figsize=(7.5, 4.0), layout="constrained")
    k = len(report.layers)
    steps = np.arange(k + 1)
    n_seeds = next(iter(report.curve.values())).shape[1]
    for name in methods:
        mean, lo, hi = _band(report.curve[name].cpu().numpy())
        control = name in ("edge", "constant", "noise")
        line, = ax.plot(steps, mean, marker="o", ms=3, ls="--" if control else "-", label=labels.get(name, name))
        ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.18)
    ax.axvline(k // 2, color="grey", ls=":", lw=1)
    ax.axhline(0, color="grey", lw=0.6)
    names = ["trained"] + [f"→ {n}" for n in reversed(report.layers)]
    ax.set_xticks(steps, names, rotation=60, fontsize=7, ha="right")
    ax.set_ylim(-0.3, 1.05)
    ax.set_ylabel("Spearman ρ of |map| with the trained map")
    ax.legend(fontsize=7, loc="lower left", ncol=2)
    over = f"{n_seeds} seeds x images" if n_seeds > 1 else "images, one re-initialisation seed"
    ax.set_title(f"Cascading randomisation, output first: mean over {over}, band: 95% bootstrap interval; "
                 "dotted: the step the verdict reads", fontsize=8, wrap=True)
    return fig


def faithfulness_bands(curves: dict, labels: dict | None = None):
    """Deletion and insertion curves, mean over images with a 95% bootstrap band.
    ``curves``: {name: (deletion Curve, insertion Curve)}; controls drawn dashed."""
    _check_results(curves, "curves", "(deletion Curve, insertion Curve)")
    labels = labels or {}
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.9), layout="constrained")
    for name, pair in curves.items():
        for ax, c in zip(axes, pair):
            mean, lo, hi = _band(c.scores.cpu().numpy().T)
            f = c.fractions.cpu().numpy()
            control = name in ("edge", "constant", "noise")
            line, = ax.plot(f, mean, ls="--" if control else "-", lw=1.2, label=labels.get(name, name))
            ax.fill_between(f, lo, hi, color=line.get_color(), alpha=0.15)
    first = next(iter(curves.values()))
    for ax, c, better in zip(axes, first, ("lower", "higher")):
        ax.set_xlabel(f"share of pixels {'removed' if c.kind == 'deletion' else 'inserted'}, in the map's order")
        ax.set_ylabel("probability of 'malignant'")
        ax.set_title(f"{c.kind.capitalize()} (baseline: {c.baseline}); {better} area = more faithful; "
                     "band: 95% bootstrap interval over images", fontsize=8)
        ax.legend(fontsize=6)
    return fig


def random_weight_figure(report, image, index: int = 0, seed_index: int = 0, labels: dict | None = None,
                         methods=None, percentile: float = viz.PERCENTILE):
    """The random-weight lesson: image ``index``, its edge map, and each method's |map| on
    the trained network (top row) and on the fully random network of seed
    ``seed_index`` (bottom row), each panel scaled to its own ``percentile``."""
    labels = labels or report.labels
    methods = [m for m in (methods or report.methods) if m not in ("constant", "noise", "edge")]
    n = len(methods) + 2
    fig, axes = plt.subplots(2, n, figsize=(1.55 * n + 0.8, 3.6), squeeze=False, layout="constrained")
    axes[0, 0].imshow(viz.display_image(image))
    axes[0, 0].set_title("input", fontsize=7)
    edge = report.trained["edge"][index].abs().cpu().numpy() if "edge" in report.trained else None
    im = None
    for row, where in enumerate(("trained", "random")):
        if edge is not None:
            im = axes[row, 1].imshow(edge / viz.robust_max(edge, percentile), cmap=viz.SEQUENTIAL_CMAP, vmin=0,
                                     vmax=1)
            axes[row, 1].set_title("edge control", fontsize=7)
        for j, m in enumerate(methods):
            maps = report.trained[m][index] if where == "trained" else report.random[m][seed_index, index]
            a = maps.abs().cpu().numpy()
            im = axes[row, j + 2].imshow(a / viz.robust_max(a, percentile), cmap=viz.SEQUENTIAL_CMAP, vmin=0, vmax=1)
            axes[row, j + 2].set_title(f"{labels.get(m, m)}\n{where}", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[1, 0].axis("off")
    cb = fig.colorbar(im, ax=axes, fraction=0.02, pad=0.01, extend="max")
    cb.set_label(f"|map| / its {percentile:g}th percentile", fontsize=7)
    fig.suptitle("Maps of the trained network (top) and of the same network with every layer re-initialised "
                 "(bottom). Unsigned |map|, inferno, each panel scaled on its own.", fontsize=8)
    return fig
