"""Input checks and the guard every attribution method runs under (imports nothing of ours).

* :func:`check_input` / :func:`check_target` turn bad input into an error that names the
  problem and the fix, before anything is computed; :func:`class_scores` picks ``S_c`` out
  of the logits and checks ``c`` against the model's output width.
* :func:`model_guard` leaves a model exactly as it found it, on success and on error.
* :func:`attribution_method` wires the three around a ``method(model, x, target, **options)``.
"""
from __future__ import annotations

import functools
import numbers
from contextlib import contextmanager

import torch
import torch.nn as nn

__all__ = ["check_input", "check_target", "class_scores", "model_guard", "attribution_method"]

_SCALARS = {bool, int, float, str, type(None)}


def _first_conv(model: nn.Module):
    # The first Conv2d registered is the input layer of every CNN here, and timm's
    # patch embedding (patch_embed.proj) is a Conv2d too.
    return next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)


def check_input(model: nn.Module, x) -> None:
    """Raise ``TypeError``/``ValueError`` unless ``x`` is a finite float (N, C, H, W) tensor
    that fits ``model`` (channels of its first convolution, its dtype and device)."""
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
    conv = _first_conv(model)
    if conv is not None and conv.in_channels != x.shape[1]:
        raise ValueError(f"x has {x.shape[1]} channels but the model's first convolution expects "
                         f"{conv.in_channels}; x must be (N, {conv.in_channels}, H, W)")
    p = next(model.parameters(), None)
    if p is not None and p.device != x.device:
        raise ValueError(f"x is on {x.device} but the model is on {p.device}; move one with .to(device)")
    if p is not None and p.is_floating_point() and p.dtype != x.dtype:
        raise TypeError(f"x has dtype {x.dtype} but the model's weights are {p.dtype}; "
                        f"convert with x.to({p.dtype})")
    bad = (~torch.isfinite(x)).sum().item()
    if bad:
        raise ValueError(f"x has {bad} non-finite values (NaN or inf); clean the input first")


def check_target(target, n: int, device=None, num_classes: int | None = None) -> torch.Tensor:
    """``target`` (an int, or N class indices as a list, tuple, array or 1-D integer tensor)
    as a LongTensor (N,) on ``device``; each index must lie in ``[0, num_classes)``
    (only the lower bound is checked when ``num_classes`` is None)."""
    if isinstance(target, bool) or (isinstance(target, torch.Tensor) and target.dtype == torch.bool):
        raise TypeError("target must be integer class indices, got a bool")
    if isinstance(target, numbers.Integral):
        t = torch.full((n,), int(target), dtype=torch.long)
    else:
        try:
            t = torch.as_tensor(target)
        except (TypeError, ValueError, RuntimeError) as err:
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


def _snapshot(model: nn.Module):
    mods = []
    for m in model.modules():
        state = vars(m)
        # The dict objects are kept, not only their contents: a user's RemovableHandle
        # refers to the dict it was registered in.
        dicts = [(k, d, dict(d) if d else None) for k in _DICTS if (d := state.get(k)) is not None]
        # Plain flags: `training`, `inplace`, timm's `fused_attn`, `_is_full_backward_hook`...
        flags = {k: v for k, v in state.items() if type(v) in _SCALARS}
        # Buffers are copied: BatchNorm's kernel updates its running statistics in place
        # without bumping their _version (only num_batches_tracked's), so a change is seen
        # per module, and the module's buffers are written back together.
        bufs = [(b, b._version, b.detach().clone()) for b in m._buffers.values() if b is not None]
        mods.append((m, dicts, flags, bufs))
    params = {id(p): (p, p.requires_grad, p.grad, p._version, p.data) for p in model.parameters()}
    return mods, params


def _restore(mods, params) -> None:
    for m, dicts, flags, bufs in mods:
        state = vars(m)
        for k, d, saved in dicts:
            if state.get(k) is not d:
                object.__setattr__(m, k, d)
            if saved is None:
                d.clear()
            elif d.keys() != saved.keys() or any(d[i] is not v for i, v in saved.items()):
                d.clear()
                d.update(saved)  # in the saved order: hooks run in registration order
        for k in [k for k, v in state.items() if type(v) in _SCALARS and k not in flags]:
            delattr(m, k)
        for k, v in flags.items():
            if state.get(k, flags) is not v:
                object.__setattr__(m, k, v)
        if any(b._version != v for b, v, _ in bufs):
            for b, _, saved in bufs:
                b.data.copy_(saved)  # through .data: a caller's autograd graph stays valid
    for p, requires_grad, grad, _, data in params.values():
        if p.data.data_ptr() != data.data_ptr():
            p.data = data
        p.requires_grad_(requires_grad)
        p.grad = grad


@contextmanager
def model_guard(model: nn.Module, *, eval_mode: bool = True, freeze_params: bool = True,
                restore_values: bool = False):
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
    """
    mods, params = _snapshot(model)
    copies = {id(p): p.detach().clone() for p in model.parameters()} if restore_values else None
    ok = False
    try:
        if eval_mode:
            model.eval()
        for p in model.parameters():
            p.grad = None  # a backward in the block must not accumulate into the caller's .grad
            if freeze_params:
                p.requires_grad_(False)
        yield model
        ok = True
    finally:
        changed = sum(p._version != v for p, _, _, v, _ in params.values())
        _restore(mods, params)
        if copies is not None:
            with torch.no_grad():
                for p in model.parameters():
                    p.copy_(copies[id(p)])
        elif changed and ok:
            raise RuntimeError(f"{changed} parameters were modified in place inside model_guard; "
                               "use model_guard(..., restore_values=True)")


def attribution_method(fn=None, **guard_options):
    """Decorator for ``fn(model, x, target, **options)``: checks ``x`` and ``target``
    (target as a LongTensor (N,) on x's device; its upper bound is checked against the
    logits by :func:`class_scores`), then runs ``fn`` under :func:`model_guard` (options
    passed on) with gradients enabled, even inside a caller's ``torch.no_grad()`` or
    ``torch.inference_mode()``."""
    if fn is None:
        return lambda f: attribution_method(f, **guard_options)

    @functools.wraps(fn)
    def wrapper(model, x, target, **options):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        check_input(model, x)
        with torch.inference_mode(False), torch.enable_grad():
            if x.is_inference():  # made under torch.inference_mode(): autograd refuses it
                x = x.clone()
            target = check_target(target, x.shape[0], device=x.device)
            with model_guard(model, **guard_options):
                return fn(model, x, target, **options)

    return wrapper
