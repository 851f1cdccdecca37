"""Input checks and the guard every public method runs under (ground floor: imports only
:mod:`._calls`, the per-model lock and the finite-result check).

* :func:`check_input` / :func:`check_target` turn bad input into an error that names the
  problem and the fix, before anything is computed; :func:`class_scores` picks ``S_c`` out
  of the logits and checks ``c`` against the model's output width.
* :func:`model_guard` leaves a model exactly as it found it, on success and on error, and
  holds the model for one call at a time (:class:`ModelInUseError` for a second one from
  another thread, or from inside the first).
* :func:`guarded` is the one way in for every public method that runs a model: it
  unwraps a ``torch.compile``'d model, checks and clones ``x``, sets the grad mode, runs
  the method under :func:`model_guard` and checks that the result is finite.
  :func:`attribution_method` is :func:`guarded` for ``method(model, x, target, **options)``.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import numbers
from contextlib import contextmanager

import torch
import torch.nn as nn

from ._calls import (ModelInUseError, NonFiniteResultError, acquire, all_finite, first_non_finite,
                     non_finite_cause, release)

__all__ = ["check_input", "check_target", "class_scores", "model_guard", "guarded", "attribution_method",
           "unwrap_compiled", "ModelInUseError", "NonFiniteResultError", "non_finite_cause"]

_SCALARS = {bool, int, float, str, type(None)}


def _first_conv(modules):
    # The first Conv2d registered is the input layer of every CNN here, and timm's
    # patch embedding (patch_embed.proj) is a Conv2d too.
    return next((m for m in modules if isinstance(m, nn.Conv2d)), None)


def check_input(model: nn.Module, x, *, _modules=None) -> None:
    """Raise ``TypeError``/``ValueError`` unless ``x`` is a finite float (N, C, H, W) tensor
    that fits ``model`` (channels of its first convolution, its dtype and device; for a
    model of :func:`chapter6_utils.models.load` that takes one size only, that size)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape (N, C, H, W), got {type(x).__name__}")
    if x.dim() != 4:
        hint = " (a single image: add a batch dimension with x.unsqueeze(0))" if x.dim() == 3 else ""
        raise ValueError(f"x has shape {tuple(x.shape)}; expected (N, C, H, W){hint}")
    if x.shape[0] == 0:
        raise ValueError("x holds no images (N = 0)")
    if not x.is_floating_point():
        raise TypeError(f"x has dtype {x.dtype}; expected floating point: convert with x.float() "
                        "(divide uint8 pixels by 255) and normalise with chapter6_utils.data.normalize")
    modules = model.modules() if _modules is None else _modules
    conv = _first_conv(modules)
    if conv is not None and conv.in_channels != x.shape[1]:
        raise ValueError(f"x has {x.shape[1]} channels but the model's first convolution expects "
                         f"{conv.in_channels}; x must be (N, {conv.in_channels}, H, W)")
    p = next(model.parameters(), None) if _modules is None else \
        next((p for m in _modules for p in m._parameters.values() if p is not None), None)
    if p is not None and p.device != x.device:
        raise ValueError(f"x is on {x.device} but the model is on {p.device}; move one with .to(device)")
    if p is not None and p.is_floating_point() and p.dtype != x.dtype:
        raise TypeError(f"x has dtype {x.dtype} but the model's weights are {p.dtype}; "
                        f"convert with x.to({p.dtype})")
    info = getattr(model, "ch6", None)
    size = getattr(info, "input_size", None)
    if getattr(info, "fixed_size", False) and isinstance(size, int) and tuple(x.shape[-2:]) != (size, size):
        # Said before the forward pass: a model's own error would be torch's "mat1 and mat2
        # shapes cannot be multiplied" or timm's assertion, far from the cause.
        raise ValueError(f"x is {x.shape[-2]}x{x.shape[-1]} but {getattr(model.ch6, 'name', 'this model')} takes "
                         f"{size}x{size} images (model.ch6.input_size); resize the batch, e.g. with "
                         f"torch.nn.functional.interpolate(x, size=({size}, {size}), mode='bilinear')")
    if not all_finite(x):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"x has {bad} non-finite values (NaN or inf); clean the input first")


def check_target(target, n: int, device=None, num_classes: int | None = None) -> torch.Tensor:
    """``target`` (an int, or N class indices as a list, tuple, array or 1-D integer tensor)
    as a LongTensor (N,) on ``device``; each index must lie in ``[0, num_classes)``
    (only the lower bound is checked when ``num_classes`` is None)."""
    if isinstance(target, bool) or (isinstance(target, torch.Tensor) and target.dtype == torch.bool):
        raise TypeError("target must be integer class indices, got a bool")
    if isinstance(target, numbers.Integral):
        v = int(target)
        # before torch.full, which cannot hold 2**63 or more
        if v < 0 or v >= _INT64_END or (num_classes is not None and v >= num_classes):
            raise ValueError(_out_of_range(v, num_classes))
        return torch.full((n,), v, dtype=torch.long, device=device)  # checked: no reduction needed
    else:
        huge = _outside_int64(target)
        if huge is not None:  # int64 cannot hold it: said as a range error, not an overflow
            raise ValueError(_out_of_range(huge, num_classes))
        try:
            t = torch.as_tensor(target)
        except (TypeError, ValueError, RuntimeError, OverflowError) as err:
            raise TypeError(f"target must be an int or a sequence of N ints, got {type(target).__name__}") from err
        if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
            raise TypeError(f"target must be integer class indices, got dtype {t.dtype} "
                            "(use .long() if the values are whole numbers)")
        if t.dim() == 0:
            t = t.expand(n)
        if t.dim() != 1:
            raise ValueError(f"target has shape {tuple(t.shape)}; expected an int or N = {n} indices")
        if len(t) != n:
            raise ValueError(f"target has {len(t)} class indices but x holds {n} images; "
                             "give one index per image, or a single int for all")
        t = t.long()
    lo, hi = (int(v) for v in torch.aminmax(t))  # one device sync, not two
    if lo < 0 or (num_classes is not None and hi >= num_classes):
        raise ValueError(_out_of_range(lo if lo < 0 else hi, num_classes))
    return t.to(device) if device is not None else t


_INT64_END = 2 ** 63


def _outside_int64(target):
    """The first integer of a list, tuple or NumPy array that int64 cannot hold (a class
    index >= 2**63, or a negative one below -2**63), else None."""
    if type(target).__module__ == "numpy" and getattr(target, "dtype", None) is not None:
        if target.dtype.kind == "u" and target.size and int(target.max()) >= _INT64_END:
            return int(target.max())  # uint64: .long() would wrap it to a negative index
        return None
    if isinstance(target, (list, tuple)):
        for v in target:
            if isinstance(v, (list, tuple)):
                found = _outside_int64(v)
                if found is not None:
                    return found
            elif isinstance(v, numbers.Integral) and not isinstance(v, bool) and not -_INT64_END <= int(v) < _INT64_END:
                return int(v)
    return None


def _out_of_range(value: int, num_classes: int | None) -> str:
    bound = f"[0, {num_classes})" if num_classes is not None else "[0, num_classes)"
    return f"target {value} is out of range: class indices must lie in {bound} (the width of the model's output)"


def class_scores(logits, target: torch.Tensor, target_max: int | None = None) -> torch.Tensor:
    """``S_c``: the (N,) pre-softmax scores ``logits[i, target[i]]``, ``target`` checked
    against the width of ``logits``. ``target_max`` (``int(target.max())`` of a target
    already through :func:`check_target`) spares a device sync between forward and backward."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != len(target):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"the model returned {shape}; expected logits of shape ({len(target)}, num_classes)")
    if target_max is None:
        check_target(target, len(target), num_classes=logits.shape[1])
    elif target_max >= logits.shape[1]:
        raise ValueError(_out_of_range(target_max, logits.shape[1]))
    if not logits.requires_grad:
        raise RuntimeError("the model's output does not depend on x through autograd "
                           "(is its forward wrapped in torch.no_grad() or does it detach its input?)")
    return logits.gather(1, target[:, None]).squeeze(1)


# The dicts in which nn.Module keeps its registries: the hook dicts (forward, forward-pre,
# backward, full-backward, with-kwargs, always-called, state-dict...), keyed by handle id,
# and _parameters, _buffers, _modules. Read off torch itself, so that a torch release that
# adds a kind of hook is covered.
_DICTS = tuple(k for k, v in vars(nn.Module()).items() if isinstance(v, dict))


def _snapshot(modules, model: nn.Module):
    mods = []
    for m in modules:
        state = vars(m)
        # Every attribute as it is (one C-level copy): plain flags (`training`, `inplace`,
        # timm's `fused_attn`...) and the registry dicts themselves, whose objects are kept,
        # not only their contents: a user's RemovableHandle refers to the dict it was
        # registered in. The contents are copied only of the dicts that hold something.
        saved = state.copy()
        contents = {k: d.copy() for k in _DICTS if (d := state.get(k))}
        # Buffers are copied: BatchNorm's kernel updates its running statistics in place
        # without bumping their _version (only num_batches_tracked's), so a change is seen
        # per module, and the module's buffers are written back together.
        bufs = [(b, b._version, b.detach().clone()) for b in m._buffers.values() if b is not None] \
            if m._buffers else ()
        mods.append((m, saved, contents, bufs))
    # Per parameter: requires_grad, .grad, version counter, storage (and its address, so
    # that restoring compares two ints rather than making a .data alias per parameter).
    # (model.parameters() walks the tree again; the modules are at hand.)
    params = {}
    for m in modules:
        for p in m._parameters.values():
            if p is not None and id(p) not in params:
                params[id(p)] = (p, p.requires_grad, p.grad, p._version, p.data, p.data_ptr())
    return mods, params


_MISSING = object()


def _restore(mods, params) -> None:
    for m, saved, contents, bufs in mods:
        state = vars(m)
        if state.keys() != saved.keys():  # plain flags added in the block go
            for k in [k for k, v in state.items() if k not in saved and type(v) in _SCALARS]:
                delattr(m, k)
        for k, v in saved.items():
            if state.get(k, _MISSING) is not v:
                object.__setattr__(m, k, v)
        for k in _DICTS:
            d = saved.get(k)
            if d is None:
                continue
            kept = contents.get(k)
            if kept is None:
                if d:
                    d.clear()
            elif d.keys() != kept.keys() or any(d[i] is not v for i, v in kept.items()):
                d.clear()
                d.update(kept)  # in the saved order: hooks run in registration order
        if bufs and any(b._version != v for b, v, _ in bufs):
            for b, _, kept in bufs:
                b.data.copy_(kept)  # through .data: a caller's autograd graph stays valid
    for p, requires_grad, grad, _, data, ptr in params.values():
        if p.data_ptr() != ptr or p.shape != data.shape:
            p.data = data
        if p.requires_grad != requires_grad:
            p.requires_grad_(requires_grad)
        if p.grad is not grad:
            p.grad = grad


def unwrap_compiled(model):
    """The module a ``torch.compile``'d model wraps (``model._orig_mod``), else ``model``.

    Hook-based methods (deconvnet, guided backprop, LRP, attention, activation
    maximisation) register hooks and switch flags that a compiled graph, traced once,
    never sees; every method therefore runs on the original module, in eager mode
    (the same parameters: the maps are those of the compiled model's network)."""
    while isinstance(model, nn.Module) and "_orig_mod" in model._modules \
            and type(model).__name__ == "OptimizedModule":
        model = model._orig_mod
    return model


@contextmanager
def model_guard(model: nn.Module, *, eval_mode: bool = True, freeze_params: bool = True,
                restore_values: bool = False, _public: bool = False, _modules=None):
    """Run a block on ``model`` and leave the model exactly as it found it.

    On entry: the model goes into eval mode (``eval_mode``), so that every method explains
    the deterministic network a deployed model is (dropout off, BatchNorm on its running
    statistics, which a forward then never updates); its parameters stop requiring
    gradients (``freeze_params``), so that no backward in the block (``.backward()``, or
    a library's) computes weight gradients a method never needs; the caller's ``.grad``
    tensors are set aside, so that nothing accumulates into them.

    On exit, normal or by an exception, for every submodule: the train/eval flag and
    every other plain attribute (bool, number, str, None) as it was, attributes added
    in the block removed; every registry dict of nn.Module (forward, forward-pre,
    backward, full-backward, with-kwargs, always-called and state-dict hooks) back to
    the hooks it held, in their order: hooks registered in the block are dropped, hooks
    removed in it come back (the user's handles still work); submodules, parameters and
    buffers that were swapped are put back; buffers written in place (BatchNorm
    statistics after a train-mode forward) get their values back. Per parameter:
    ``requires_grad`` and ``.grad`` (the same tensor object, or None).

    Parameter values are copied only with ``restore_values=True`` (for methods that edit
    weights; a copy of VGG-16 is 0.5 GB). Without it, a parameter whose storage was
    replaced is pointed back at its old storage, and an in-place write to a parameter
    (seen by its version counter) raises ``RuntimeError`` on a normal exit: a method that
    edits weights must say so. Writes through ``.data`` bypass the version counter and go
    unseen. Module-level global hooks (``torch.nn.modules.module.register_module_*``) and
    hooks on tensors are outside its reach.

    One call at a time: while the block runs, the model and its submodules are held, and
    a guard (or method) on any of them from another thread raises
    :class:`ModelInUseError` at once, before touching the model (use one copy per thread:
    ``copy.deepcopy(model)``). A ``torch.compile``'d model is guarded (and yielded) as the
    module it wraps (:func:`unwrap_compiled`).
    """
    model = unwrap_compiled(model)
    modules = list(model.modules()) if _modules is None else _modules
    acquire(modules, _public)
    try:
        mods, params = _snapshot(modules, model)
        copies = {id(p): p.detach().clone() for p in model.parameters()} if restore_values else None
        ok = False
        try:
            if eval_mode and any(m.training for m in modules):
                model.eval()
            for p, requires_grad, grad, *_ in params.values():
                if grad is not None:
                    p.grad = None  # a backward in the block must not accumulate into the caller's .grad
                if freeze_params and requires_grad:
                    p.requires_grad_(False)
            yield model
            ok = True
        finally:
            changed = sum(p._version != v for p, _, _, v, *_ in params.values())
            _restore(mods, params)
            if copies is not None:
                with torch.no_grad():
                    for p in model.parameters():
                        p.copy_(copies[id(p)])
            elif changed and ok:
                raise RuntimeError(f"{changed} parameters were modified in place inside model_guard; "
                                   "use model_guard(..., restore_values=True)")
    finally:
        release(modules, _public)


def guarded(fn=None, *, x: str | None = "x", target: str | None = None, grad: bool | None = True,
            check_finite: bool = True, **guard_options):
    """The one way into the guard, for every public function ``fn(model, x, ...)`` that runs
    a model (``model`` must be its first parameter).

    Before ``fn`` runs: ``model`` must be an ``nn.Module``, and a ``torch.compile``'d one
    is replaced by the module it wraps (:func:`unwrap_compiled`); the input named by ``x``
    (None: no input) is checked (:func:`check_input`) and cloned, so that a model whose
    first operation writes in place cannot touch the caller's tensor; with ``target``
    (``"required"`` or ``"optional"``) the parameter ``target`` goes through
    :func:`check_target` to a LongTensor (N,) on x's device. ``fn`` then runs under
    :func:`model_guard` (``guard_options`` passed on; one call per model at a time) with
    gradients on (``grad=True``, also inside a caller's ``torch.no_grad()`` or
    ``torch.inference_mode()``), off (False) or as they are (None). After it, with
    ``check_finite``, every tensor and float of the result must be finite, else
    :class:`NonFiniteResultError` names the cause (non-finite parameters by name,
    non-finite options, or an overflow).
    """
    if fn is None:
        return lambda f: guarded(f, x=x, target=target, grad=grad, check_finite=check_finite, **guard_options)
    sig = inspect.signature(fn)
    names = list(sig.parameters)
    x_index = names.index(x) if x is not None else None
    t_index = names.index("target") if target is not None else None

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        # The usual call, model and x positional, skips the binding (a few microseconds).
        if x_index is not None and len(args) > x_index and x not in kwargs:
            args = list(args)
            ba = None
        else:
            ba = sig.bind(*args, **kwargs)
            args = None
        get = (lambda i, n: args[i] if i < len(args) else kwargs.get(n)) if ba is None else \
            (lambda i, n: ba.arguments.get(n))

        def put(i, n, v):
            if ba is not None:
                ba.arguments[n] = v
            elif i < len(args):
                args[i] = v
            else:
                kwargs[n] = v

        model = get(0, names[0])
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        model = unwrap_compiled(model)
        put(0, names[0], model)
        modules = list(model.modules())  # walked once, for the checks and the guard
        inp = None
        if x is not None:
            inp = get(x_index, x)
            check_input(model, inp, _modules=modules)
        # Only the switches that are not already where they must be: each costs time per call.
        with (torch.inference_mode(False) if torch.is_inference_mode_enabled() else _NOTHING), \
                (torch.enable_grad() if grad and not torch.is_grad_enabled() else
                 torch.no_grad() if grad is False and torch.is_grad_enabled() else _NOTHING):
            if inp is not None:
                # The one clone of the input: no method hands the caller's tensor to a model.
                inp = inp.detach().clone()
                put(x_index, x, inp)
            if target is not None:
                t = get(t_index, "target")
                if t is not None or target == "required":
                    n = inp.shape[0] if inp is not None else 1
                    put(t_index, "target", check_target(t, n, device=inp.device if inp is not None else None))
            with model_guard(model, _public=True, _modules=modules, **guard_options):
                out = fn(*args, **kwargs) if ba is None else fn(*ba.args, **ba.kwargs)
            if check_finite:
                where = first_non_finite(out)
                if where is not None:
                    arguments = ba.arguments if ba is not None else {**dict(zip(names, args)), **kwargs}
                    raise NonFiniteResultError(
                        f"{fn.__name__} returned non-finite values (NaN or inf) in its result{where}: "
                        f"{non_finite_cause(model, arguments)}")
            return out

    return wrapper


_NOTHING = contextlib.nullcontext()


def attribution_method(fn=None, **guard_options):
    """:func:`guarded` for ``fn(model, x, target, **options)``: ``x`` checked and cloned,
    ``target`` required (a LongTensor (N,) on x's device; its upper bound is checked
    against the logits by :func:`class_scores`), gradients enabled."""
    if fn is None:
        return lambda f: attribution_method(f, **guard_options)
    return guarded(fn, x="x", target="required", grad=True, **guard_options)
