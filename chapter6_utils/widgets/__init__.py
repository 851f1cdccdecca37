"""Interactive explorers for the notebooks, each built on pure functions.

Every explorer is three layers, so that tests and the printed book need no widget:

* a pure *compute* function (model, input, settings -> map and stats), cached by settings;
* a pure *figure* function (map -> matplotlib Figure, never shown, never global state);
* :func:`explorer`, which wires sliders to the two with ipywidgets.

The book shows a static grid beside each widget (:func:`smoothgrad_grid`), drawn by the
same functions, because a rendered page has no kernel to move a slider.

One module per method (``saliency``, ``deconvnet``, ``lrp``, ``actmax``, ``attention``) and
``_core`` for :func:`explorer`; everything is importable from ``chapter6_utils.widgets``.

Only ipywidgets APIs found in both 7.x (Colab) and 8.x are used: ``SelectionSlider``,
``VBox``, ``Output``, ``observe(names="value")``. The widgets import the method modules
they drive at module level (top floor; no method module imports a widget).
"""
from __future__ import annotations

from ._core import explorer  # noqa: F401
from .saliency import smoothgrad_view, smoothgrad_figure, smoothgrad_explorer, smoothgrad_grid  # noqa: F401
from .deconvnet import projection_view, projection_figure, projection_explorer, projection_grid  # noqa: F401
from .attention import attention_view, attention_figure, attention_explorer, attention_grid  # noqa: F401
from .lrp import lrp_schedule, lrp_view, lrp_figure, lrp_explorer, lrp_grid, LRP_FIRST_RULES  # noqa: F401
from .actmax import actmax_view, actmax_figure, actmax_explorer, actmax_grid, ACTMAX_ABLATION  # noqa: F401

__all__ = ["explorer",
           "smoothgrad_view", "smoothgrad_figure", "smoothgrad_explorer", "smoothgrad_grid",
           "projection_view", "projection_figure", "projection_explorer", "projection_grid",
           "attention_view", "attention_figure", "attention_explorer", "attention_grid",
           "lrp_schedule", "lrp_view", "lrp_figure", "lrp_explorer", "lrp_grid", "LRP_FIRST_RULES",
           "actmax_view", "actmax_figure", "actmax_explorer", "actmax_grid", "ACTMAX_ABLATION"]
