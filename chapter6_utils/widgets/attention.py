"""ViT attention and rollout explorer (notebook 06)."""
from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
import numpy as np
import torch

from .. import attention, viz
from ._core import _grid_figure, _input_panel, _one_image, explorer


# --------------------------------------------------------------------------- ViT attention
def _mask_shares(m: torch.Tensor, masks) -> dict:
    """Shares of the (H, W) map's mass inside ``masks = (lesion_mask, ruler_mask)``."""
    out = {}
    mass = float(m.double().sum())
    if masks is not None:
        for key, mask in zip(("lesion_share", "ruler_share"), masks):
            if mask is not None:
                mk = torch.as_tensor(np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask), dtype=torch.bool)  # noqa: E501
                out[key] = float(m.double()[mk].sum() / mass) if mass > 0 else float("nan")
    return out


def attention_view(attn, image_size, layer: int, head, head_fusion: str, discard_ratio: float,
                   alpha=0.5, masks=None, num_prefix_tokens: int = 1):
    """One image's CLS attention at one layer and its attention rollout, at image size.

    Rollout is equation 13 (book/equations.md) (Abnar & Zuidema, 2020).

    Parameters
    ----------
    attn : torch.Tensor
        (1, L, heads, T, T) from :func:`chapter6_utils.attention.attention_maps`.
    image_size : int or (int, int)
        The image's (H, W).
    layer : int
    head : int or {"mean", "max", "min"}
        Passed to :func:`chapter6_utils.attention.cls_attention` (a head, or the heads fused).
    head_fusion : str
    discard_ratio : float
    alpha : float, default 0.5
        Passed to :func:`chapter6_utils.attention.rollout`.
    masks : (torch.Tensor or None, torch.Tensor or None), optional
        ``(lesion_mask, ruler_mask)``, each (H, W) bool or None.
        For the maps' mass shares.
    num_prefix_tokens : int, default 1
        Tokens before the patches (CLS, registers).

    Returns
    -------
    cls_map, rollout_map : torch.Tensor
        (H, W) float32 CPU maps, each patch's weight spread over its pixels (nearest
        upsampling, so that shares are patch-weighted).
    stats : dict
        The settings, ``cls_self`` (the rollout's CLS self-weight: the share of the CLS row
        that stays off the patches) and, with masks, ``cls_lesion_share``,
        ``cls_ruler_share``, ``rollout_lesion_share``, ``rollout_ruler_share``.

    Raises
    ------
    ValueError
        If ``attn`` is not the attention of one image.
    """
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

    Both maps are unsigned, each scaled on its own.

    Parameters
    ----------
    x : torch.Tensor
        The (1, 3, H, W) ImageNet-normalised input.
    result : tuple
        :func:`attention_view`'s ``(cls_map, rollout_map, stats)``.
    masks : (torch.Tensor or None, torch.Tensor or None), optional
        ``(lesion_mask, ruler_mask)``, each (H, W) bool or None.
        Drawn as contours.
    title : str, optional
    size : float, default 3.0
        Inches per panel.

    Returns
    -------
    matplotlib.figure.Figure
    """
    cls_map, roll, stats = result
    lesion, ruler = masks if masks is not None else (None, None)
    fig, axes = plt.subplots(1, 3, figsize=(3 * size * 1.15, size + 1.0), layout="constrained")
    ax = axes[0]
    _input_panel(ax, x, lesion, ruler)
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

    The attention of all blocks is computed once; every setting is then a cheap read of it.
    In the printed book use :func:`attention_grid`.

    Parameters
    ----------
    model : torch.nn.Module
        A timm Vision Transformer.
    x : torch.Tensor
        One ImageNet-normalised image, (1, 3, H, W) or (3, H, W).
    masks : (torch.Tensor or None, torch.Tensor or None), optional
        ``(lesion_mask, ruler_mask)``, each (H, W) bool or None.
    discard_values : sequence of float
        The discard ratio slider's values.

    Returns
    -------
    ipywidgets.VBox
        The :func:`explorer`.
    """
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
    """The static twin of :func:`attention_explorer`.

    Top row: the heads-mean CLS attention at ``layers``; bottom row: rollout for each
    ``(head_fusion, discard_ratio)`` in ``settings``.

    Parameters
    ----------
    model : torch.nn.Module
        A timm Vision Transformer.
    x : torch.Tensor
        One ImageNet-normalised image, (1, 3, H, W) or (3, H, W).
    layers : sequence of int, optional
        Default: every block.
    settings : sequence of (str, float)
    masks : (torch.Tensor or None, torch.Tensor or None), optional
        ``(lesion_mask, ruler_mask)``, each (H, W) bool or None.
    size : float, default 2.0
        Inches per panel.

    Returns
    -------
    matplotlib.figure.Figure
    """
    x = _one_image(x)
    attn = attention.attention_maps(model, x)
    prefix = int(getattr(model, "num_prefix_tokens", 1))
    layers = list(range(attn.shape[1])) if layers is None else [int(v) for v in layers]
    lesion, ruler = masks if masks is not None else (None, None)
    cols = max(len(layers), len(settings))
    fig, gs = _grid_figure(x, lesion, ruler, 2, cols, size)
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
