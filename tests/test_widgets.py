"""chapter6_utils.widgets: the pure functions called directly, and the sliders' wiring."""
import matplotlib

matplotlib.use("Agg")  # headless: before pyplot is imported anywhere

import matplotlib.pyplot as plt
import pytest
import torch

from chapter6_utils import data, models, synthetic, viz, widgets

pytest.importorskip("ipywidgets")


@pytest.fixture(scope="module")
def case():
    """A 64x64 lesion with a ruler, its masks, and the bundled CNN (random weights if absent)."""
    s = synthetic.make_lesions(4, "biased", seed=0)
    i = int(torch.nonzero(s.has_ruler)[0])
    return models.load("lesion_cnn"), data.normalize(s.images[i:i + 1]), (s.lesion_mask[i], s.ruler_mask[i])


def _saliency():
    return pytest.importorskip("chapter6_utils.saliency")


# --------------------------------------------------------------------------- the generic explorer
def test_explorer_computes_once_per_setting_and_redraws_from_the_cache():
    calls = []

    def compute(a, b):
        calls.append((a, b))
        return torch.full((4, 4), float(a * b))

    def figure(result, a, b):
        fig, ax = plt.subplots()
        viz.heatmap(ax, result)
        return fig

    box = widgets.explorer(compute, figure, a=[1, 2, 3], b=(0.5, 1.5))
    assert box.params() == {"a": 1, "b": 0.5} and calls == [(1, 0.5)]
    box.sliders["b"].value = 1.5  # as the reader moving the slider
    box.sliders["a"].value = 3
    assert calls == [(1, 0.5), (1, 1.5), (3, 1.5)]
    box.sliders["a"].value = 1  # back to a setting seen before: no recomputation
    assert calls == [(1, 0.5), (1, 1.5), (3, 1.5)] and set(box.cache) == set(calls)
    assert float(box.cache[(3, 1.5)][0, 0]) == 4.5
    assert box.out in box.children and len(box.children) == 3
    assert not plt.get_fignums()  # every figure was closed after display


def test_explorer_reports_an_error_instead_of_raising(capsys):
    def compute(a):
        raise RuntimeError("boom")

    box = widgets.explorer(compute, lambda r, a: None, a=[1, 2])
    assert "RuntimeError: boom" in capsys.readouterr().out and box.cache == {}


# --------------------------------------------------------------------------- SmoothGrad, pure
def test_smoothgrad_view_is_a_non_negative_finite_map_with_stats(case):
    _saliency()
    model, x, masks = case
    m, stats = widgets.smoothgrad_view(model, x, 1, n_samples=3, sigma=0.1, seed=0, masks=masks)
    assert m.shape == (64, 64) and m.dtype == torch.float32
    assert torch.isfinite(m).all() and (m >= 0).all()
    assert stats["mass"] == pytest.approx(float(m.sum()), rel=1e-5) and stats["max"] == pytest.approx(float(m.max()))
    assert 0 < stats["top5_share"] <= 1
    assert 0 <= stats["lesion_share"] <= 1 and 0 < stats["ruler_share"] <= 1
    assert (stats["n_samples"], stats["sigma"], stats["seed"]) == (3, 0.1, 0)


def test_smoothgrad_view_same_seed_same_map(case):
    _saliency()
    model, x, _ = case
    a, _ = widgets.smoothgrad_view(model, x, 1, 3, 0.2, seed=7)
    b, _ = widgets.smoothgrad_view(model, x, 1, 3, 0.2, seed=7)
    c, _ = widgets.smoothgrad_view(model, x, 1, 3, 0.2, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_smoothgrad_figure_has_input_map_and_overlay(case):
    _saliency()
    model, x, masks = case
    m, stats = widgets.smoothgrad_view(model, x, 1, 2, 0.1)
    fig = widgets.smoothgrad_figure(x, m, stats, masks=masks)
    assert len(fig.axes) == 3 + 2  # input, map, overlay + two colorbars
    assert fig.axes[1].images[0].get_cmap().name == viz.SEQUENTIAL_CMAP
    assert "SmoothGrad" in fig.get_supxlabel() and "unsigned" in fig.get_supxlabel()


# --------------------------------------------------------------------------- SmoothGrad, widget and grid
def test_smoothgrad_explorer_caches_by_n_and_sigma(case):
    _saliency()
    model, x, masks = case
    box = widgets.smoothgrad_explorer(model, x, 1, n_values=(1, 2), sigma_values=(0.0, 0.1, 0.2), masks=masks)
    assert box.params() == {"n_samples": 2, "sigma": 0.1}  # the middle, as 25 and 0.15 are not offered
    assert list(box.cache) == [(2, 0.1)]
    box.sliders["sigma"].value = 0.2
    box.sliders["n_samples"].value = 1
    assert list(box.cache) == [(2, 0.1), (2, 0.2), (1, 0.2)]
    cached = box.cache[(2, 0.1)]
    box.sliders["sigma"].value = 0.1
    box.sliders["n_samples"].value = 2
    assert box.cache[(2, 0.1)] is cached and len(box.cache) == 4  # (1, 0.1) was new, (2, 0.1) reused
    m, _ = box.cache[(1, 0.2)]
    expected, _ = widgets.smoothgrad_view(model, x, 1, 1, 0.2, seed=0)
    assert torch.equal(m, expected)


def test_smoothgrad_grid_has_n_by_sigma_panels(case):
    _saliency()
    model, x, masks = case
    fig = widgets.smoothgrad_grid(model, x, 1, n_values=(1, 2), sigma_values=(0.05, 0.1, 0.2), masks=masks)
    panels = [ax for ax in fig.axes if ax.get_title().startswith("n=")]
    assert len(panels) == 2 * 3
    assert all(ax.images[0].colorbar is not None for ax in panels)
    assert [ax.get_title() for ax in panels[:3]] == ["n=1, σ=0.05", "n=1, σ=0.1", "n=1, σ=0.2"]
    assert len(fig.axes) == 1 + 2 * 2 * 3  # input + panels + colorbars
    assert "SmoothGrad" in fig.get_supxlabel() and "99.5th percentile" in fig.get_supxlabel()


def test_explorer_refuses_a_batch(case):
    model, x, _ = case
    with pytest.raises(ValueError, match="batch of 2"):
        widgets.smoothgrad_explorer(model, torch.cat([x, x]), 1)
