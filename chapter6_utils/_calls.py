"""One call per model at a time, and a finite result from every call (ground floor:
imports nothing of ours). :mod:`._guard` uses both for every public method.

* :func:`acquire` / :func:`release`: a model and its submodules are held by one call;
  a second call from another thread, or a public call from inside the first (a hook, a
  callback), raises :class:`ModelInUseError` before touching the model.
* :func:`first_non_finite` finds NaN or inf in a result (tensors, floats, and tuples,
  lists, dicts and dataclasses of them); :func:`non_finite_cause` says where they came
  from (the model's parameters by name, the call's options, or an overflow).
"""
from __future__ import annotations

import dataclasses
import math
import threading

import torch

__all__ = ["ModelInUseError", "NonFiniteResultError", "acquire", "release", "all_finite", "first_non_finite",
           "non_finite_cause"]


class ModelInUseError(RuntimeError):
    """A method was called on a model (or one of its submodules) that another call is
    running on: from another thread, or from inside that call (a hook, a callback)."""


class NonFiniteResultError(FloatingPointError, ValueError):
    """A method's result holds NaN or inf; the message names the likely cause."""


# Which call holds which module: id(module) -> [thread ident, depth, depth of public calls].
# A module is held from before the guard's snapshot until after its restore, so a second
# call can never snapshot (and later "restore") a state the first one made.
_HELD: dict = {}
_HELD_LOCK = threading.Lock()


def acquire(modules, public: bool) -> None:
    """Hold ``modules`` (a model's ``list(model.modules())``) for this thread; ``public``: a
    public method's call, which may not run inside another public call on the same model."""
    me = threading.get_ident()
    with _HELD_LOCK:
        for m in modules:
            held = _HELD.get(id(m))
            if held is None:
                continue
            what = f"{type(modules[0]).__name__}" + (
                f" (its submodule {type(m).__name__})" if m is not modules[0] else "")
            if held[0] != me:
                raise ModelInUseError(
                    f"model {what} is in use by another attribution call in another thread; a method "
                    "registers hooks and changes flags on the model while it runs, so two at once would "
                    "corrupt it: use a copy per thread (copy.deepcopy(model)) or wait for the first call")
            if public and held[2]:
                raise ModelInUseError(
                    f"model {what} is in use by an attribution call that is still running in this thread "
                    "(this call comes from inside it: a hook, a callback or a widget during its forward or "
                    "backward pass); its hooks would change this call's map: call the method after the "
                    "first one returns, or on a copy (copy.deepcopy(model))")
        for m in modules:
            held = _HELD.get(id(m))
            if held is None:
                _HELD[id(m)] = [me, 1, int(public)]
            else:
                held[1] += 1
                held[2] += int(public)


def release(modules, public: bool) -> None:
    """Undo one :func:`acquire` of the same ``modules``."""
    with _HELD_LOCK:
        for m in modules:
            held = _HELD.get(id(m))
            if held is None:
                continue
            held[1] -= 1
            held[2] -= int(public)
            if held[1] <= 0:
                del _HELD[id(m)]


def _tensors(out, depth: int = 0):
    """The tensors and floats of a method's result: a tensor, or tuples, lists, dicts and
    dataclasses of them (two levels deep: a table's rows, a result's frames)."""
    if isinstance(out, torch.Tensor):
        yield "", out
    elif isinstance(out, float):
        yield "", out
    elif depth < 3:
        if isinstance(out, (tuple, list)):
            items = ((f"[{i}]", v) for i, v in enumerate(out))
        elif isinstance(out, dict):
            items = ((f"[{k!r}]", v) for k, v in out.items())
        elif dataclasses.is_dataclass(out) and not isinstance(out, type):
            items = ((f".{f.name}", getattr(out, f.name)) for f in dataclasses.fields(out))
        else:
            return
        for key, v in items:
            for sub, t in _tensors(v, depth + 1):
                yield key + sub, t


def all_finite(t: torch.Tensor) -> bool:
    # One reduction in the usual case: a finite sum means every value is finite; only an
    # overflowing sum (or a non-finite value) needs the element-wise test.
    return math.isfinite(float(t.sum())) or bool(torch.isfinite(t).all())


def _is_finite(t) -> bool:
    if isinstance(t, float):
        return math.isfinite(t)
    if t.is_complex():
        return bool(torch.isfinite(t).all())
    return not t.is_floating_point() or t.numel() == 0 or all_finite(t)


def non_finite_cause(model, arguments=()) -> str:
    """What made a result non-finite, as far as can be told after the fact: the model's
    non-finite parameters and buffers by name, else the non-finite entries of
    ``arguments`` (a dict of the call's arguments) by name, else an overflow."""
    arguments = dict(arguments)
    bad = [n for n, p in model.named_parameters() if p.is_floating_point() and not bool(torch.isfinite(p).all())]
    bad += [n for n, b in model.named_buffers() if b.is_floating_point() and not bool(torch.isfinite(b).all())]
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        return (f"the model has non-finite parameters or buffers: {', '.join(bad[:5])}{more}; "
                "reload or retrain the weights (a diverged training run leaves NaN weights)")
    opts = [k for k, v in arguments.items() if k != "model" and v is not model and
            ((isinstance(v, float) and not math.isfinite(v)) or
             (isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())))]
    if opts:
        return f"non-finite values in {', '.join(opts)}; pass finite numbers"
    return ("the parameters, input and options are finite, so the computation overflowed or divided by "
            "zero: try float64 (model.double(), x.double()) or milder options")


def first_non_finite(out):
    """Where ``out`` (a method's result) first holds NaN or inf (``""`` for ``out`` itself,
    ``"[0]"``, ``".image"``...), or None when all of it is finite."""
    for where, t in ((("", out),) if type(out) is torch.Tensor else _tensors(out)):
        if not _is_finite(t):
            return where
    return None
