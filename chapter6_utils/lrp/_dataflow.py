"""The recorded dataflow of a forward pass (which module call produced each tensor a
module reads) and the comparison of two networks' outputs, for :mod:`.canonize`."""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .._hooks import hooked, leaf_modules

__all__ = ["Flow", "TRANSPARENT", "tolerance", "parting", "outputs"]

TRANSPARENT = (nn.Identity, nn.Dropout)  # eval mode: the output is the input


@dataclass
class _Call:
    name: str
    module: nn.Module
    sources: list  # per tensor input: index of the call that produced it, -1 the model's input, None unknown
    readers: list = field(default_factory=list)  # calls that read this call's output


class Flow:
    """Which module call produced each tensor a module reads, from one forward pass.

    A tensor is traced by identity and version counter: a tensor written in place after
    it was produced (``out += identity``) no longer counts as its producer's output.
    Identity and eval-mode dropout are transparent."""

    def __init__(self):
        self.calls: list[_Call] = []
        self._made = {}  # id(tensor) -> (weak reference, version, call index)
        self._pending = {}

    def _mark(self, t, index):
        if isinstance(t, torch.Tensor):
            self._made[id(t)] = (weakref.ref(t), t._version, index)

    def source(self, t):
        if not isinstance(t, torch.Tensor):
            return None
        entry = self._made.get(id(t))
        if entry is None or entry[0]() is not t or entry[1] != t._version:
            return None
        return entry[2]

    def run(self, model, x):
        names = _leaves(model)

        def before(module, args):
            self._pending[module] = [self.source(a) for a in args if isinstance(a, torch.Tensor)]

        def after(module, args, output):
            sources = self._pending.pop(module, [])
            if isinstance(module, TRANSPARENT) and len(sources) == 1:
                self._mark(output, sources[0])  # the same tensor, from the same producer
                return
            index = len(self.calls)
            self.calls.append(_Call(names[module], module, sources))
            for s in sources:
                if s is not None and s >= 0:
                    self.calls[s].readers.append(index)
            self._mark(output, index)

        self._mark(x, -1)
        out = _run_hooked(model, x, names, before, after)
        self.output_source = self.source(out)
        return out


_leaves = leaf_modules


def _run_hooked(model, x, modules, pre=None, post=None):
    """``model(x)`` without gradients, with ``pre``/``post`` hooked on ``modules`` for
    this one pass (removed afterwards, also on error)."""
    with hooked(modules, pre=pre, post=post), torch.no_grad():
        return model(x)


def tolerance(dtype) -> float:
    return torch.finfo(dtype).eps ** 0.5


def parting(a, b) -> float:
    """Largest difference per image relative to the image's largest |b| (non-finite values
    that agree, NaN with NaN, inf with inf, count as agreeing)."""
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) or a.shape != b.shape:
        return float("inf")
    a, b = a.detach().flatten(1) if a.dim() > 1 else a.detach()[:, None], \
        b.detach().flatten(1) if b.dim() > 1 else b.detach()[:, None]
    same = (a == b) | (torch.isnan(a) & torch.isnan(b))
    diff = torch.where(same, torch.zeros_like(a), (a - b).abs())
    finite = torch.where(torch.isfinite(b), b.abs(), torch.zeros_like(b))
    scale = finite.amax(1).clamp_min(torch.finfo(b.dtype).tiny)
    return float((diff.amax(1) / scale).max())


def outputs(model, x):
    """{leaf name: [output of each call]} of one forward pass (copies: later in-place ops
    must not change them)."""
    names, seen = _leaves(model), {}

    def keep(module, args, out):
        seen.setdefault(names[module], []).append(out.detach().clone() if isinstance(out, torch.Tensor) else out)

    _run_hooked(model, x, names, post=keep)
    return seen
