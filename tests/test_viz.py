"""chapter6_utils.viz: the colour rules, overlays, the method grid, and no method imports."""
import matplotlib

matplotlib.use("Agg")  # headless: before pyplot is imported anywhere

import subprocess
import sys

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.contour import ContourSet

from chapter6_utils import data, synthetic, viz


@pytest.fixture(scope="module")
def lesions():
    return synthetic.make_lesions(4, "biased", seed=0)


def _contours(ax):
    return [c for c in ax.collections if isinstance(c, ContourSet)]


def _colorbars(fig):
    return [im for ax in fig.axes for im in ax.images if im.colorbar is not None]


# --------------------------------------------------------------------------- heatmap
def test_signed_map_is_diverging_symmetric_and_centred():
    m = torch.linspace(-1, 3, 64 * 64).view(64, 64)
    _, ax = plt.subplots()
    im = viz.heatmap(ax, m, title="gradient x input")
    vmin, vmax = im.get_clim()
    assert vmin == -vmax and vmax > 0
    assert vmax == pytest.approx(np.percentile(m.abs().numpy(), 99.5), rel=1e-5)
    assert im.get_cmap().name == viz.DIVERGING_CMAP
    assert im.colorbar is not None and "|value|" in im.colorbar.ax.get_ylabel()
    assert ax.get_title() == "gradient x input"


def test_unsigned_map_is_sequential_from_zero():
    m = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    _, ax = plt.subplots()
    im = viz.heatmap(ax, m)
    vmin, vmax = im.get_clim()
    assert vmin == 0 and vmax == pytest.approx(np.percentile(m, 99.5), rel=1e-5)
    assert im.get_cmap().name == viz.SEQUENTIAL_CMAP
    assert "clipped at 99.5th percentile" in im.colorbar.ax.get_ylabel()


def test_sign_can_be_forced_and_outliers_are_clipped():
    m = np.ones((20, 20))
    m[0, 0] = 1000.0  # one hot pixel must not wash out the rest
    _, ax = plt.subplots()
    im = viz.heatmap(ax, m, signed=True, colorbar=False)
    assert im.get_cmap().name == viz.DIVERGING_CMAP and im.get_clim() == (-1.0, 1.0)
    im = viz.heatmap(ax, -m, signed=False, percentile=100, colorbar=False)
    assert im.get_cmap().name == viz.SEQUENTIAL_CMAP and im.get_clim() == (0.0, 1000.0)


def test_all_zero_and_nan_maps_still_get_valid_limits():
    _, ax = plt.subplots()
    assert viz.heatmap(ax, torch.zeros(8, 8)).get_clim() == (0.0, 1.0)
    m = torch.full((8, 8), float("nan"))
    m[0, 0] = 2.0
    assert viz.heatmap(ax, m, percentile=100).get_clim() == (0.0, 2.0)


def test_heatmap_refuses_a_batch():
    _, ax = plt.subplots()
    with pytest.raises(ValueError, match="to_map"):
        viz.heatmap(ax, torch.rand(2, 8, 8))


def test_to_map_reductions():
    a = torch.randn(1, 3, 5, 6)
    assert torch.allclose(viz.to_map(a), a[0].sum(0))
    assert torch.allclose(viz.to_map(a[0], reduce="max_abs"), a[0].abs().amax(0))
    assert torch.equal(viz.to_map(a[0, 0]), a[0, 0])
    assert viz.to_map(np.ones((3, 4, 4))).shape == (4, 4)
    with pytest.raises(ValueError, match="batch of 2"):
        viz.to_map(torch.randn(2, 3, 4, 4))


# --------------------------------------------------------------------------- overlay
def test_overlay_upsamples_a_7x7_map_onto_the_image(lesions):
    x = data.normalize(lesions.images[:1])  # (1, 3, 64, 64), as the model sees it
    m = torch.rand(7, 7) - 0.5
    _, ax = plt.subplots()
    im = viz.overlay(ax, x, m, alpha=0.4)
    base, top = ax.images
    assert base.get_array().shape == (64, 64, 3)
    np.testing.assert_allclose(base.get_array(), data.to_image(x), atol=1e-6)  # de-normalised
    assert top is im and im.get_array().shape == (64, 64) and im.get_alpha() == 0.4
    assert im.get_cmap().name == viz.DIVERGING_CMAP and im.get_clim()[0] == -im.get_clim()[1]
    assert im.colorbar is not None


def test_overlay_takes_a_display_array_or_a_unit_tensor(lesions):
    _, (a, b) = plt.subplots(1, 2)
    viz.overlay(a, data.to_image(data.normalize(lesions.images[0])), torch.rand(16, 16))
    viz.overlay(b, lesions.images[0], torch.rand(64, 64), normalized=False)
    np.testing.assert_allclose(a.images[0].get_array(), b.images[0].get_array(), atol=1e-5)
    assert a.images[1].get_cmap().name == viz.SEQUENTIAL_CMAP


# --------------------------------------------------------------------------- method grid
def test_method_grid_layout_colorbars_and_caption(lesions):
    x = data.normalize(lesions.images[:2])
    maps = {"saliency": torch.rand(2, 64, 64), "grad x input": torch.randn(2, 3, 64, 64),
            "coarse": [torch.rand(7, 7), torch.rand(7, 7)]}
    fig = viz.method_grid(x, maps, image_titles=["a", "b"], caption="Test figure.")
    assert len(fig.axes) == 2 * 4 + 2 * 3  # panels + one colorbar per map panel
    assert len(_colorbars(fig)) == 6
    assert not any(_contours(ax) for ax in fig.axes)
    cmaps = [ax.images[0].get_cmap().name for ax in fig.axes[:4]]  # row 0 (colorbars come after)
    assert cmaps[1:] == [viz.SEQUENTIAL_CMAP, viz.DIVERGING_CMAP, viz.SEQUENTIAL_CMAP]
    assert [ax.get_title() for ax in fig.axes[:4]] == ["a", "saliency", "grad x input", "coarse"]
    caption = " ".join(t.get_text() for t in fig.findobj(matplotlib.text.Text)).replace("\n", " ")
    assert "Test figure." in caption and "grad x input (signed" in caption and "99.5th percentile" in caption


def test_method_grid_draws_mask_contours_on_every_panel(lesions):
    k = [i for i in range(4) if lesions.has_ruler[i]][:2]  # images with both masks
    x = data.normalize(lesions.images[k])
    fig = viz.method_grid(x, {"m": torch.rand(2, 64, 64), "coarse": torch.rand(2, 7, 7)},
                          lesion_masks=lesions.lesion_mask[k], ruler_masks=lesions.ruler_mask[k])
    cbar_axes = {im.colorbar.ax for im in _colorbars(fig)}
    panels = [ax for ax in fig.axes if ax not in cbar_axes]
    assert len(panels) == 6
    for ax in panels:
        colours = {matplotlib.colors.to_hex(c.get_edgecolor()[0]) for c in _contours(ax)}
        assert colours == {viz.LESION_COLOUR, viz.RULER_COLOUR}
    assert "ruler (yellow)" in fig.get_supxlabel()


def test_method_grid_checks_counts(lesions):
    with pytest.raises(ValueError, match="3 entries for 2 images"):
        viz.method_grid(data.normalize(lesions.images[:2]), {"m": [torch.rand(8, 8)] * 3})


def test_existing_figures_still_work(lesions):
    assert viz.show_lesions(lesions, ncols=4) is not None
    viz.plot_confusion(torch.tensor([[3, 1], [0, 4]]), synthetic.CLASSES)


def test_viz_imports_no_method_module():
    # viz draws any method's map and depends on none; the widgets import the methods they
    # drive at module level, so importing them alone in a fresh process also shows there
    # is no import cycle.
    code = ("import sys, chapter6_utils.viz\n"
            "bad = [m for m in sys.modules if m.split('.')[0] == 'chapter6_utils' and m.split('.')[1:2] in "
            "(['saliency'], ['deconvnet'], ['lrp'], ['attention'], ['actmax'], ['evaluation'])]\n"
            "print(bad)\n"
            "import chapter6_utils.widgets\n"
            "print(sorted(m for m in ('saliency', 'deconvnet', 'lrp', 'attention', 'actmax')\n"
            "             if 'chapter6_utils.' + m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)  # a hang guard
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["[]", "['actmax', 'attention', 'deconvnet', 'lrp', 'saliency']"]
