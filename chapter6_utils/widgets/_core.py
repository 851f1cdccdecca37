"""The generic explorer (sliders wired to a pure compute and a pure figure function) and the
helpers the method widgets share."""
from __future__ import annotations

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
from IPython.display import display

from .. import viz


# --------------------------------------------------------------------------- generic explorer
def _slider(name: str, spec):
    """A slider for ``spec``: a ready widget is used as is; a sequence becomes a
    SelectionSlider over its values (first value selected)."""
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

    Parameters
    ----------
    compute_fn : callable
        ``compute_fn(**params) -> result`` (e.g. ``(map, stats)``); called once per
        distinct setting: results are cached by the tuple of slider values, so moving a
        slider back is instant.
    figure_fn : callable
        ``figure_fn(result, **params) -> matplotlib.figure.Figure``.
    **slider_specs
        ``name=values`` (a sequence: a SelectionSlider, first value selected) or
        ``name=widget`` (any ipywidgets value widget). The names are the keyword arguments
        both functions receive.

    Returns
    -------
    ipywidgets.VBox
        The sliders, then an Output showing the figure, with extra attributes: ``sliders``
        (dict name -> widget), ``out`` (the Output), ``cache`` (dict key -> result),
        ``params()`` (the current settings) and ``refresh()`` (compute if needed and
        redraw; called on every slider change).

    Raises
    ------
    ValueError
        Without any slider, or for a slider with no values.
    """
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


# --------------------------------------------------------------------------- shared helpers
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


def _pick(values, preferred):
    return preferred if preferred in values else values[len(values) // 2]


def _input_panel(ax, x, lesion=None, ruler=None) -> None:
    """The first panel of a figure: the input image with the lesion (cyan) and ruler
    (yellow) contours when given."""
    ax.imshow(viz.display_image(x), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title("input", fontsize=9)
    viz.draw_masks(ax, lesion, ruler, outline=True)


def _grid_figure(x, lesion, ruler, rows: int, cols: int, size: float, width: float = 1.2,
                 extra_height: float = 1.0):
    """A static grid's figure: the input (:func:`_input_panel`) in a first column spanning
    all ``rows``, then ``rows`` x ``cols`` cells for the maps. Returns (figure, gridspec);
    map (i, j) goes in ``gs[i, j + 1]``."""
    fig = plt.figure(figsize=((cols + 1) * size * width, rows * size + extra_height), layout="constrained")
    gs = fig.add_gridspec(rows, cols + 1)
    _input_panel(fig.add_subplot(gs[:, 0]), x, lesion, ruler)
    return fig, gs
