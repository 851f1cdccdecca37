"""Ground floor for methods that reach inside a model (imports nothing of ours but
:mod:`._checks`): the one layer lookup by name, the one forward-hook recorder, the one map
upsampler. A new method that needs a layer's activations (Grad-CAM, concept relevance)
uses these rather than writing its own.

* :func:`find_layer`: a module name (``"features.8"``) or the module itself -> ``(name,
  module)``, or an error listing close names.
* :func:`hooked`: a context manager that puts forward pre-/post-hooks on modules and
  removes them on exit, also on error (and :func:`._guard.model_guard` would remove any
  left); :func:`record_outputs`, built on it, keeps the outputs of named modules.
* :func:`leaf_modules`: ``{module: name}`` of the modules without children, in order.
* :func:`upsample`: an (h, w) or (N, h, w) map to image resolution, bilinear or nearest.

The small argument validators live in :mod:`._checks`.
"""
from __future__ import annotations

import difflib
import numbers
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import _checks as checks

__all__ = ["find_layer", "leaf_modules", "hooked", "record_outputs", "upsample", "UPSAMPLE_MODES"]

UPSAMPLE_MODES = ("bilinear", "nearest")


def find_layer(model: nn.Module, layer, *, kinds: tuple = ()) -> tuple[str, nn.Module]:
    """``(name, module)`` for ``layer``, a submodule name as in ``model.named_modules()``
    (``"features.8"``) or a submodule of ``model``.

    An unknown name raises ``ValueError`` with the closest names, and the names of the
    modules of ``kinds`` (types) when given; the empty name (the model itself) is no
    layer. Anything else than a str or a module raises ``TypeError``."""
    if isinstance(layer, str):
        if layer:
            try:
                return layer, model.get_submodule(layer)
            except AttributeError:
                pass
        names = [n for n, _ in model.named_modules() if n]
        close = difflib.get_close_matches(layer, names, n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        listed = [n for n, m in model.named_modules() if n and isinstance(m, kinds)] if kinds else []
        some = f"; its {'/'.join(k.__name__ for k in kinds)} modules are: {', '.join(listed[:40])}" if listed else \
            " (list them with [n for n, _ in model.named_modules()])"
        raise ValueError(f"unknown layer {layer!r} ({layer!r} is not a module of {type(model).__name__}){hint}{some}")
    if isinstance(layer, nn.Module):
        for n, m in model.named_modules():
            if m is layer and n:
                return n, m
        raise ValueError(f"layer {type(layer).__name__} is not a submodule of {type(model).__name__}; "
                         "pass one of its modules or its name (e.g. 'features.6')")
    raise TypeError(f"layer must be a module name (e.g. 'features.6') or a submodule, got {type(layer).__name__}")


def leaf_modules(model: nn.Module) -> dict:
    """``{module: name}`` of ``model``'s modules without children (its layers), in
    registration order; a model without children is its own leaf (name "")."""
    return {m: n for n, m in model.named_modules() if next(m.children(), None) is None}


@contextmanager
def hooked(modules, *, pre=None, post=None, always_call: bool = False):
    """Within the block, ``pre(module, inputs)`` runs before and ``post(module, inputs,
    output)`` after every forward call of each of ``modules`` (any iterable of modules;
    either hook may be None); a hook's return value replaces the inputs or output, as in
    torch. ``always_call``: ``post`` runs even when the forward raises. The hooks are
    removed on exit, also on error."""
    handles = []
    try:
        for m in modules:
            if pre is not None:
                handles.append(m.register_forward_pre_hook(pre))
            if post is not None:
                handles.append(m.register_forward_hook(post, always_call=always_call))
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def record_outputs(modules, *, detach: bool = False, append: bool = False):
    """Forward hooks that keep the outputs of ``modules`` (a dict ``{key: module}``, or a
    list, keyed by position) while the block runs; yields the dict they fill.

    ``append=False``: ``{key: output}``, the latest call of each module; ``append=True``:
    ``{key: [output, ...]}``, every call in order (a module called twice, a loop).
    ``detach``: keep ``output.detach()`` (no graph). The hooks are removed on exit, on
    error too."""
    items = list(modules.items() if isinstance(modules, dict) else enumerate(modules))
    keys: dict = {}
    for key, m in items:
        keys.setdefault(m, []).append(key)
    store: dict = {}

    def keep(module, inputs, output):
        out = output.detach() if detach and isinstance(output, torch.Tensor) else output
        for key in keys[module]:
            if append:
                store.setdefault(key, []).append(out)
            else:
                store[key] = out

    with hooked(keys, post=keep):
        yield store


def upsample(m: torch.Tensor, size, mode: str = "bilinear") -> torch.Tensor:
    """A map (h, w) or (N, h, w) at ``size`` (an int or (H, W)): (H, W) or (N, H, W).

    ``mode="bilinear"`` (``align_corners=False``: smooth, for overlays; never leaves the
    range of the map's values) or ``"nearest"`` (each cell's value on all its pixels: when
    the cells tile the image, mask shares are exactly cell-weighted). Integer maps are
    converted to float32; the result is always a new tensor."""
    if not isinstance(m, torch.Tensor) or m.dim() not in (2, 3):
        raise ValueError("m must be an (h, w) or (N, h, w) tensor")
    checks.choice(mode, "mode", UPSAMPLE_MODES)
    if isinstance(size, (numbers.Integral, torch.Tensor)) and not isinstance(size, bool) \
            and getattr(size, "dim", lambda: 0)() == 0:
        size = (size, size)
    if not isinstance(size, (tuple, list, torch.Size)) or len(size) != 2:
        raise TypeError(f"image_size must be an int or (H, W), got {size!r}")
    size = tuple(checks.integer(v, "image_size", low=1, hint="the image's side in pixels") for v in size)
    if not m.is_floating_point():
        m = m.float()
    x = m[None, None] if m.dim() == 2 else m[:, None]
    up = F.interpolate(x, size=size, mode=mode, **({"align_corners": False} if mode == "bilinear" else {}))
    return up[0, 0] if m.dim() == 2 else up[:, 0]
