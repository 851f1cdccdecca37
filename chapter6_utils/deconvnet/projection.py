"""The reconstruction road: Zeiler & Fergus's (2014) deconvnet run explicitly, layer by
layer (unpool with the recorded switches, ReLU, transposed convolution), from the strongest
activations of one feature channel down to the pixels; the image patches that excite a
feature most; the input region an activation can see."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import _checks as checks
from .._guard import guarded
from .._hooks import find_layer, hooked, leaf_modules

__all__ = ["project", "top_activations", "TopActivations", "receptive_field"]

_INVERTIBLE = (nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.Identity, nn.Dropout)


def _resolve_layer(model, layer):
    return find_layer(model, layer, kinds=(nn.Conv2d, nn.ReLU, nn.MaxPool2d))


class _Stop(Exception):
    pass


@dataclass
class _Step:
    name: str
    module: nn.Module
    in_shape: torch.Size
    switches: torch.Tensor | None = None  # max-pool argmax, flat index within each input plane


def _forward_to(model, x, layer):
    """Run ``model`` on ``x`` until ``layer`` has its output; return (output, chain of leaf
    calls), the chain checked to be a plain sequence x -> leaf -> leaf -> ... -> output."""
    name, target_module = _resolve_layer(model, layer)
    leaves = leaf_modules(model)
    calls, result = [], {}

    def record(module, inputs, output):
        calls.append((leaves[module], module, inputs[0] if inputs else None, output))
        if isinstance(module, nn.MaxPool2d) and isinstance(output, torch.Tensor):
            # Recompute the pooling with its argmax: the switches of Zeiler & Fergus. An
            # in-place op later on may overwrite `output` but not these indices.
            _, idx = F.max_pool2d(inputs[0], module.kernel_size, module.stride, module.padding,
                                  module.dilation, module.ceil_mode, return_indices=True)
            calls[-1] = calls[-1] + (idx,)
        else:
            calls[-1] = calls[-1] + (None,)

    def stop(module, inputs, output):
        result["out"] = output
        raise _Stop

    try:
        with hooked(leaves, post=record), hooked([target_module], post=stop):
            model(x)
    except _Stop:
        pass
    if "out" not in result:
        raise ValueError(f"layer '{name}' ({type(target_module).__name__}) was never called by the model's forward")
    steps, prev = [], x
    for n, m, inp, out, idx in calls:
        if inp is not prev:
            what = "the input x" if prev is x else f"the output of the previous module '{steps[-1].name}'"
            raise ValueError(
                f"cannot invert '{n}' ({type(m).__name__}): its input is not {what}; the forward does "
                "something between them that is not a module (a functional op such as F.relu, a "
                "residual addition, a reshape). project inverts a plain chain of Conv2d, ReLU and "
                "MaxPool2d modules, such as lesion_cnn's or VGG-16's features")
        if not isinstance(m, _INVERTIBLE):
            raise ValueError(f"cannot invert '{n}' ({type(m).__name__}): project inverts only Conv2d, ReLU "
                             "and MaxPool2d (and Identity, Dropout in eval mode), as in Zeiler & Fergus's "
                             "deconvnet; pick a layer before it (e.g. in lesion_cnn's or VGG-16's features)")
        if isinstance(m, nn.MaxPool2d) and m.return_indices:
            raise ValueError(f"cannot invert '{n}' (MaxPool2d with return_indices=True): its output is a "
                             "pair, not a feature map; project records the switches itself, so use "
                             "return_indices=False")
        steps.append(_Step(n, m, inp.shape, idx))
        prev = out
    if result["out"] is not prev:
        raise ValueError(f"cannot invert the output of '{name}' ({type(target_module).__name__}): it is not the "
                         "output of the last module called before it")
    return result["out"], steps


def _conv_padding(m: nn.Conv2d):
    """The zero rows/columns a Conv2d adds around its input, ``(top, bottom, left, right)``:
    ``padding`` as ints, ``"valid"`` (none) or ``"same"`` (``d * (k - 1)`` in all, the odd
    one after the input, as torch pads)."""
    k, d = _pair(m.kernel_size), _pair(m.dilation)
    if m.padding == "valid":
        return 0, 0, 0, 0
    if m.padding == "same":
        total = [d[i] * (k[i] - 1) for i in range(2)]
        return total[0] // 2, total[0] - total[0] // 2, total[1] // 2, total[1] - total[1] // 2
    p = _pair(m.padding)
    return p[0], p[0], p[1], p[1]


def _transposed_conv(m: nn.Conv2d, r, in_shape):
    """The transposed convolution with the forward weights (no bias), back to the recorded
    input size: Zeiler & Fergus's "filtering" step, the exact adjoint of the convolution.

    ``output_padding`` gives back the rows and columns a strided convolution reads but whose
    position no window starts from (a 3x3 stride-2 convolution on 4 rows with padding 1
    reads row 3 in its last window; a plain transposed convolution returns 3 rows and
    would lose what row 3 contributed)."""
    top, bottom, left, right = _conv_padding(m)
    k, s, d = _pair(m.kernel_size), _pair(m.stride), _pair(m.dilation)
    padded = (in_shape[-2] + top + bottom, in_shape[-1] + left + right)
    extra = tuple(padded[i] - ((r.shape[-2 + i] - 1) * s[i] + d[i] * (k[i] - 1) + 1) for i in range(2))
    r = F.conv_transpose2d(r, m.weight, None, s, 0, extra, m.groups, d)  # on the padded input
    if m.padding_mode == "zeros":
        return r[..., top:top + in_shape[-2], left:left + in_shape[-1]]  # the zeros were no pixels
    # reflect / replicate / circular padding copies pixels: the adjoint of that copy adds the
    # signal at each padded position back onto the pixel it came from
    z = torch.zeros(in_shape, dtype=r.dtype, device=r.device, requires_grad=True)
    with torch.enable_grad():
        padded_z = F.pad(z, (left, right, top, bottom), mode=m.padding_mode)
    (r,) = torch.autograd.grad(padded_z, z, r)
    return r


def _invert(steps, r):
    """Zeiler & Fergus's deconvnet, from a signal ``r`` at the last step's output to the input."""
    for step in reversed(steps):
        m = step.module
        if isinstance(m, nn.ReLU):
            r = r.clamp(min=0)  # equation 3 (book/equations.md), deconvnet rule
        elif isinstance(m, nn.MaxPool2d):
            # Unpool: each value goes back to the position its window's maximum came from
            # (the switches index the unpadded input plane, whatever the kernel, stride,
            # padding, dilation or ceil_mode); overlapping windows add up, as the gradient does.
            n, c, h, w = step.in_shape
            r = torch.zeros(n, c, h * w, device=r.device, dtype=r.dtype).scatter_add_(
                2, step.switches.flatten(2), r.flatten(2)).view(n, c, h, w)
        elif isinstance(m, nn.Conv2d):
            r = _transposed_conv(m, r, step.in_shape)
        # Identity and Dropout (eval) pass the signal unchanged.
    return r


def _keep_top(a, channel, top_k):
    n, c = a.shape[:2]
    flat = a[:, channel].reshape(n, -1)
    k = min(top_k, flat.shape[1])
    values, pos = flat.topk(k, dim=1)
    kept = torch.zeros_like(a)
    kept[:, channel].view(n, -1).scatter_(1, pos, values)
    return kept, values, pos


def _check_channel(a, channel, name):
    if not isinstance(a, torch.Tensor) or a.dim() != 4:
        raise ValueError(f"layer '{name}' outputs {_shape(a)}; project needs a (N, C, H, W) feature map")
    checks.integer(channel, "channel", low=0, high=a.shape[1] - 1, hint=f"layer '{name}' has {a.shape[1]} channels")


@guarded(x="x", grad=False)
def project(model, x, layer, channel: int, top_k: int = 1):
    """Zeiler & Fergus's projection of a feature to the pixels, (N, C, H, W) like ``x``.

    A forward pass up to ``layer`` records the max-pool switches; in each image only the
    ``top_k`` strongest activations of ``channel`` in ``layer``'s output are kept (with
    their values), all else set to zero; then the network is inverted module by module
    down to the pixels: max-pool -> unpool to the recorded switches, ReLU -> ReLU
    (equation 3 (book/equations.md), deconvnet rule), convolution -> transposed convolution with the forward
    weights (bias left out). Zeiler & Fergus (2014), "Visualizing and understanding
    convolutional networks".

    With ``top_k=1`` the result equals the backward pass from the kept activation ``A``,
    seeded with its value, with the deconvnet rule at every ReLU (the rule road of
    :func:`deconvnet`): ``A * dA/dx`` when ``A > 0``.

    Parameters
    ----------
    model : torch.nn.Module
        A network whose forward, up to ``layer``, is a plain chain of ``Conv2d``,
        ``ReLU`` and ``MaxPool2d`` modules (``lesion_cnn``, VGG-16's ``features``);
        anything else raises ``ValueError`` naming the module it cannot invert.
    x : torch.Tensor
        (N, C, H, W) normalised input.
    layer : str or torch.nn.Module
        A module name (``"features.6"``) or the module itself.
    channel : int
        The feature channel of ``layer``'s output.
    top_k : int, default 1
        Activations kept per image (1: the strongest).

    Returns
    -------
    torch.Tensor
        (N, C, H, W) on x's device; zero outside the receptive field of the kept units.
        Exact for every kernel size, stride, padding (ints, ``"same"``, ``"valid"``, any
        ``padding_mode``), dilation and group count of the convolutions and every kernel,
        stride, padding, dilation and ``ceil_mode`` of the max-pooling, at any input size.
    """
    top_k = checks.integer(top_k, "top_k", low=1, hint="activations kept per image")
    a, steps = _forward_to(model, x, layer)
    _check_channel(a, channel, steps[-1].name if steps else str(layer))
    kept, _, _ = _keep_top(a, channel, top_k)
    return _invert(steps, kept)


@guarded(x="x", grad=False)
def receptive_field(model, x, layer, row: int, col: int):
    """The input box ``(top, left, bottom, right)`` (bottom/right exclusive) that unit
    ``(row, col)`` of ``layer``'s output sees: the smallest box holding every pixel that
    can change that unit (same chains as :func:`project`).

    Followed down the chain from the kernel, stride, padding and dilation of each
    convolution and max-pooling (``ceil_mode`` windows included): a padded position is
    no pixel (zero padding; max-pooling pads with -inf) unless the convolution's
    ``padding_mode`` copies one (reflect, replicate, circular); with dilation the taps
    that fall on padding are left out, so the box is tight at the image border too."""
    a, steps = _forward_to(model, x[:1], layer)
    if not isinstance(a, torch.Tensor) or a.dim() != 4:
        raise ValueError(f"layer '{steps[-1].name if steps else layer}' outputs {_shape(a)}; receptive_field "
                         "needs a (N, C, H, W) feature map")
    h, w = a.shape[-2:]
    row = checks.integer(row, "row", low=0, high=h - 1, hint=f"a row of the layer's {h}x{w} output grid")
    col = checks.integer(col, "col", low=0, high=w - 1, hint=f"a column of the layer's {h}x{w} output grid")
    return _box(steps, row, col)


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _shape(a):
    return tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__


def _fold(i: int, n: int, mode: str):
    """The pixel a padded position ``i`` of an ``n``-pixel axis reads, or None (no pixel)."""
    if 0 <= i < n:
        return i
    if mode == "reflect":
        return -i if i < 0 else 2 * (n - 1) - i
    if mode == "replicate":
        return min(max(i, 0), n - 1)
    if mode == "circular":
        return i % n
    return None  # zeros (convolution) or -inf (max-pooling): not a pixel


def _box(steps, row, col):
    """The exact box: per axis, the set of input positions the unit depends on, carried down
    the chain (separable: every kernel here is a rectangle)."""
    seen = [{row}, {col}]
    for step in reversed(steps):
        m = step.module
        if not isinstance(m, (nn.Conv2d, nn.MaxPool2d)):
            continue
        k, s, d = (_pair(v) for v in (m.kernel_size, m.stride, m.dilation))
        if isinstance(m, nn.Conv2d):
            top, _, left, _ = _conv_padding(m)
            start, mode = (top, left), m.padding_mode
        else:
            start, mode = _pair(m.padding), "zeros"
        for i in range(2):
            n = step.in_shape[-2 + i]
            taps = (_fold(o * s[i] - start[i] + d[i] * j, n, mode) for o in seen[i] for j in range(k[i]))
            seen[i] = {t for t in taps if t is not None}
    if not seen[0] or not seen[1]:
        return 0, 0, 0, 0  # the unit reads padding only: it sees no pixel
    return min(seen[0]), min(seen[1]), max(seen[0]) + 1, max(seen[1]) + 1


@dataclass
class TopActivations:
    """What :func:`top_activations` returns, strongest first (k entries each).

    ``index``: image indices (k,); ``value``: the activations (k,); ``position``: (k, 2)
    row/column in the layer's output; ``box``: (top, left, bottom, right) input boxes of
    the receptive fields; ``patch``: the input crops (C, h, w), normalised like the input;
    ``projection``: (k, C, H, W) full-size projections (:func:`project`, ``top_k=1``);
    ``projection_patch``: their crops to the same boxes.
    """

    layer: str
    channel: int
    index: torch.Tensor
    value: torch.Tensor
    position: torch.Tensor
    box: list
    patch: list
    projection: torch.Tensor
    projection_patch: list


@guarded(x="images", grad=False)
def top_activations(model, images, layer, channel: int, k: int = 9, batch_size: int = 256) -> TopActivations:
    """The ``k`` images whose strongest activation of ``channel`` in ``layer`` is highest,
    with the receptive-field patch around that activation and its projection to the
    pixels, as in Zeiler & Fergus's (2014) figures.

    Parameters
    ----------
    images : torch.Tensor
        (N, C, H, W) normalised input (one activation per image is used, the
        strongest, so the k patches come from k different images).
    layer : str or torch.nn.Module
        As in :func:`project`.
    channel : int
        As in :func:`project`.
    k : int, default 9
        How many (at most N).
    batch_size : int, default 256
        Images per forward pass when searching.
    """
    k = min(checks.integer(k, "k", low=1, hint="how many images to show"), images.shape[0])
    batch_size = checks.integer(batch_size, "batch_size", low=1, hint="images per forward pass")
    best_v, best_p = [], []
    for start in range(0, images.shape[0], batch_size):
        # a copy per batch too: an in-place first op must not write into the clone we crop patches from
        a, steps = _forward_to(model, images[start:start + batch_size].clone(), layer)
        _check_channel(a, channel, steps[-1].name)
        v, p = a[:, channel].flatten(1).max(dim=1)
        best_v.append(v)
        best_p.append(p)
    name = _resolve_layer(model, layer)[0]
    v, p = torch.cat(best_v), torch.cat(best_p)
    value, index = v.topk(k)
    width = a.shape[-1]
    position = torch.stack([p[index] // width, p[index] % width], dim=1)
    a, steps = _forward_to(model, images[index], layer)  # indexing copies
    kept, _, _ = _keep_top(a, channel, 1)
    proj = _invert(steps, kept)
    boxes = [_box(steps, int(r), int(c)) for r, c in position.tolist()]
    patch = [images[i, :, t:b, l:r].detach() for i, (t, l, b, r) in zip(index.tolist(), boxes)]  # noqa: E741 (t, l, b, r: box edges)
    proj_patch = [proj[j, :, t:b, l:r] for j, (t, l, b, r) in enumerate(boxes)]  # noqa: E741
    return TopActivations(name, int(channel), index, value, position, boxes, patch, proj, proj_patch)
