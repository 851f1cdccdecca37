"""What activation maximisation maximises: an :class:`Objective` maps a batch to one value
per image, (N,), from the model's output or from the activations of named layers; objectives
combine linearly."""
from __future__ import annotations

import numbers
from typing import Callable

import torch
import torch.nn as nn

from .. import _checks as checks
from .._hooks import find_layer, record_outputs

__all__ = ["Objective", "class_logit", "channel", "unit"]

_OUTPUT = ""  # the key under which an objective finds the model's output (the logits)


class Objective:
    """Something to maximise: a function of a model's activations giving one value per image.

    ``fn(acts)`` gets ``{layer_name: activation}`` for every name in ``layers`` (``""`` is
    the model's output) and returns an (N,) tensor. Objectives add, subtract and scale by
    numbers; the sum needs the union of the layers.
    """

    def __init__(self, fn: Callable[[dict], torch.Tensor], layers, description: str):
        self.fn, self.layers, self.description = fn, tuple(dict.fromkeys(layers)), description

    def __call__(self, acts: dict) -> torch.Tensor:
        return self.fn(acts)

    def __repr__(self) -> str:
        return f"Objective({self.description})"

    def __add__(self, other):
        if isinstance(other, numbers.Real) and other == 0:
            return self  # so that sum([...]) works
        if not isinstance(other, Objective):
            return NotImplemented
        return Objective(lambda a: self.fn(a) + other.fn(a), self.layers + other.layers,
                         f"{self.description} + {other.description}")

    __radd__ = __add__

    def __mul__(self, w):
        if not isinstance(w, numbers.Real) or isinstance(w, bool):
            return NotImplemented
        w = checks.real(w, "weight", hint="an objective's weight; NaN or inf would make every step NaN")
        return Objective(lambda a: w * self.fn(a), self.layers, f"{w:g} * {self.description}")

    __rmul__ = __mul__

    def __neg__(self):
        return -1 * self

    def __sub__(self, other):
        return self + (-other) if isinstance(other, Objective) else NotImplemented


def _check_index(value, name: str) -> int:
    return checks.integer(value, name, low=0)


def _check_layer(layer) -> str:
    if not isinstance(layer, str) or not layer:
        raise TypeError(f"layer must be a module name such as 'features.8' (see model.named_modules()), got {layer!r}")
    return layer


def _layer_act(acts, layer, what):
    a = acts[layer]
    if not isinstance(a, torch.Tensor) or a.dim() != 4:
        shape = tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__
        raise ValueError(f"{what} needs a convolutional layer with (N, C, H, W) output, but layer {layer!r} "
                         f"gives {shape}; pick a Conv2d/ReLU/pooling layer")
    return a


def class_logit(c: int) -> Objective:
    """The pre-softmax score ``S_c`` of class ``c`` (the model's output, column ``c``)."""
    c = _check_index(c, "class index c")

    def fn(acts):
        out = acts[_OUTPUT]
        if out.dim() != 2:
            raise ValueError(f"class_logit needs a model returning (N, num_classes) logits, got {tuple(out.shape)}")
        if c >= out.shape[1]:
            raise ValueError(f"class index {c} is out of range: the model has {out.shape[1]} classes [0, {out.shape[1]})")  # noqa: E501
        return out[:, c]

    return Objective(fn, [_OUTPUT], f"logit {c}")


def channel(layer: str, c: int) -> Objective:
    """The mean activation of channel ``c`` of ``layer`` over all positions."""
    layer, c = _check_layer(layer), _check_index(c, "channel c")

    def fn(acts):
        a = _layer_act(acts, layer, "channel")
        if c >= a.shape[1]:
            raise ValueError(f"channel {c} is out of range: layer {layer!r} has {a.shape[1]} channels [0, {a.shape[1]})")  # noqa: E501
        return a[:, c].mean(dim=(1, 2))

    return Objective(fn, [layer], f"{layer}[{c}] mean")


def unit(layer: str, c: int, y: int, x: int) -> Objective:
    """One neuron: the activation at channel ``c``, row ``y``, column ``x`` of ``layer``
    (coordinates in the layer's own grid, e.g. 0..15 for a 16x16 feature map)."""
    layer = _check_layer(layer)
    c, y, x = (_check_index(v, n) for v, n in ((c, "channel c"), (y, "row y"), (x, "column x")))

    def fn(acts):
        a = _layer_act(acts, layer, "unit")
        _, C, H, W = a.shape
        if c >= C:
            raise ValueError(f"channel {c} is out of range: layer {layer!r} has {C} channels [0, {C})")
        if y >= H or x >= W:
            raise ValueError(f"position (y={y}, x={x}) is outside the {H}x{W} grid of layer {layer!r} "
                             "(the grid shrinks with pooling: see the layer's output shape)")
        return a[:, c, y, x]

    return Objective(fn, [layer], f"{layer}[{c}, {y}, {x}]")


def _resolve_layers(model: nn.Module, objective: Objective) -> dict:
    if not isinstance(objective, Objective):
        raise TypeError("objective must be an actmax.Objective (class_logit, channel, unit or a combination), "
                        f"got {type(objective).__name__}")
    return {name: find_layer(model, name)[1] for name in objective.layers if name != _OUTPUT}


class _Recorder:
    """The named layers' outputs of each forward pass (:func:`record_outputs`; its hooks go
    on :meth:`close`, and the guard removes any left)."""

    def __init__(self, modules: dict):
        self._hooks = record_outputs(modules)
        self.acts = self._hooks.__enter__()

    def run(self, model, x):
        self.acts.clear()
        self.acts[_OUTPUT] = model(x)
        return self.acts

    def close(self):
        self._hooks.__exit__(None, None, None)
