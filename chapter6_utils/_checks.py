"""Small argument validators (ground floor: imports nothing of ours).

Every public function checks its numeric and enumerated arguments with these before any
work starts, so that a bad value gets one clear error naming the argument, the value and
what is allowed, instead of a raw torch error later, uninitialised memory or a silent
flat result. Each validator returns the value in a canonical type (``int``, ``float``,
the chosen string), so callers write ``steps = checks.integer(steps, "steps", low=1)``.

* :func:`integer`: an int (not a bool, not a float) in a range.
* :func:`real`: a finite real number (not a bool) in a range, ends open or closed.
* :func:`choice`: one of a few names.
* :func:`instance`: an instance of a class (an LRP rule, a module...).
* :func:`seed`: an int torch can seed a generator with.
* :func:`finite`: a tensor with no NaN or inf, or an error saying how many and where from.
* :func:`tensor`: a tensor of a given number of dimensions, floating point if asked.
"""
from __future__ import annotations

import math
import numbers

import torch

__all__ = ["integer", "real", "choice", "instance", "seed", "finite", "tensor", "SEED_RANGE"]

#: What ``torch.Generator.manual_seed`` accepts.
SEED_RANGE = (-(2 ** 63), 2 ** 64)


def _is_int(value) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, numbers.Integral):
        return True
    # a 0-d integer tensor (``x.argmax()``) is an int too
    return isinstance(value, torch.Tensor) and value.dim() == 0 and not value.is_floating_point() \
        and not value.is_complex() and value.dtype != torch.bool


def _bounds(low, high, low_open=False, high_open=False) -> str:
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}" if isinstance(low, float) else
                     f"{'>' if low_open else '>='} {low}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high:g}" if isinstance(high, float) else
                     f"{'<' if high_open else '<='} {high}")
    return " and ".join(parts)


def integer(value, name: str, *, low: int | None = None, high: int | None = None, none_ok: bool = False,
            hint: str = "") -> int | None:
    """``value`` as an int in ``[low, high]`` (either end None: unbounded), or ValueError/TypeError
    naming ``name``, the value and the allowed range. ``none_ok``: None passes through."""
    if value is None and none_ok:
        return None
    rng = _bounds(low, high)
    what = f"an int{' ' + rng if rng else ''}{' or None' if none_ok else ''}"
    tail = f" ({hint})" if hint else ""
    if not _is_int(value):
        raise TypeError(f"{name} must be {what}{tail}, got {value!r} ({type(value).__name__})")
    v = int(value)
    if (low is not None and v < low) or (high is not None and v > high):
        raise ValueError(f"{name} must be {what}{tail}, got {v}")
    return v


def real(value, name: str, *, low: float | None = None, high: float | None = None, low_open: bool = False,
         high_open: bool = False, none_ok: bool = False, hint: str = "") -> float | None:
    """``value`` as a finite float in the range (ends closed unless ``*_open``), or an error
    naming ``name``, the value and the range. NaN and inf are refused, so a range check
    can never be passed by a NaN (``not nan < 0`` is True)."""
    if value is None and none_ok:
        return None
    rng = _bounds(low, high, low_open, high_open)
    what = f"a finite number{' ' + rng if rng else ''}{' or None' if none_ok else ''}"
    tail = f" ({hint})" if hint else ""
    if isinstance(value, bool) or not (isinstance(value, numbers.Real) or
                                       (isinstance(value, torch.Tensor) and value.numel() == 1
                                        and not value.is_complex())):
        raise TypeError(f"{name} must be {what}{tail}, got {value!r} ({type(value).__name__})")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be {what}{tail}, got {v}")
    if low is not None and (v < low or (low_open and v == low)):
        raise ValueError(f"{name} must be {what}{tail}, got {v:g}")
    if high is not None and (v > high or (high_open and v == high)):
        raise ValueError(f"{name} must be {what}{tail}, got {v:g}")
    return v


def choice(value, name: str, options) -> str:
    """``value`` if it is one of ``options`` (strings), else ValueError listing them."""
    options = tuple(options)
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}, got {value!r}")
    return value


def instance(value, name: str, cls, what: str, *, none_ok: bool = False):
    """``value`` if it is an instance of ``cls`` (None too with ``none_ok``), else
    TypeError saying ``what`` was expected (``what``: "an LRP rule such as Epsilon(0.25)")."""
    if value is None and none_ok:
        return None
    if not isinstance(value, cls):
        raise TypeError(f"{name} must be {what}{' or None' if none_ok else ''}, got {value!r} "
                        f"({type(value).__name__})")
    return value


def seed(value, name: str = "seed", *, none_ok: bool = False) -> int | None:
    """An int that seeds a torch generator (``[-2**63, 2**64)``)."""
    if value is None and none_ok:
        return None
    if not _is_int(value):
        raise TypeError(f"{name} must be an int{' or None' if none_ok else ''} (the same seed gives the same "
                        f"result), got {value!r} ({type(value).__name__})")
    v = int(value)
    if not SEED_RANGE[0] <= v < SEED_RANGE[1]:
        raise ValueError(f"{name} must lie in [-2**63, 2**64) (what torch can seed a generator with), got {v}")
    return v


def tensor(value, name: str, *, dim=None, floating: bool = False, shape_hint: str = "") -> torch.Tensor:
    """``value`` if it is a tensor with ``dim`` dimensions (an int or a tuple of them) and,
    with ``floating``, a floating dtype; else an error naming what was expected."""
    hint = f" {shape_hint}" if shape_hint else ""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor{hint}, got {type(value).__name__}")
    dims = (dim,) if isinstance(dim, int) else dim
    if dims is not None and value.dim() not in dims:
        raise ValueError(f"{name} has shape {tuple(value.shape)}; expected {' or '.join(f'{d}-D' for d in dims)}{hint}")
    if floating and not value.is_floating_point():
        raise TypeError(f"{name} has dtype {value.dtype}; expected a floating-point tensor{hint} (use .float())")
    return value


def finite(t: torch.Tensor, name: str, *, cause: str = "") -> torch.Tensor:
    """``t`` if every value is finite, else ValueError naming ``name``, how many values are
    NaN or infinite, and ``cause`` (what to check) when given."""
    if t.is_floating_point() or t.is_complex():
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            nans = int(torch.isnan(t).sum())
            why = f"; {cause}" if cause else ""
            raise ValueError(f"{name} has {bad} non-finite values ({nans} NaN, {bad - nans} inf) of "
                             f"{t.numel()}{why}")
    return t
