"""The two searches: :func:`maximize` in pixel space (equation 10 (book/equations.md)) and :func:`dgn_am` in
the latent space of an image generator (equation 11 (book/equations.md))."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn as nn

from .. import _checks as checks
from .._guard import NonFiniteResultError, guarded, model_guard, non_finite_cause
from ..data import denormalize, gaussian_blur, normalize, pixel_bounds
from .measures import total_variation
from .objectives import Objective, _Recorder, _resolve_layers

__all__ = ["ActMaxResult", "maximize", "dgn_am"]


@dataclass
class ActMaxResult:
    """What :func:`maximize` and :func:`dgn_am` return.

    Attributes
    ----------
    image : torch.Tensor
        (N, 3, H, W) in [0, 1], the final images (not normalised).
    trace : list
        The objective (without penalties), mean over the N images, at step 0..steps
        (``steps + 1`` floats).
    frames : list
        Images (N, 3, H, W) in [0, 1] recorded every ``record_every`` steps and at the end.
    frame_steps : list
        The step of each frame.
    objective : str
        The objective's description.
    latent : torch.Tensor or None
        The final latent codes (N, z) of :func:`dgn_am`, else None.
    """

    image: torch.Tensor
    trace: list
    frames: list = field(default_factory=list)
    frame_steps: list = field(default_factory=list)
    objective: str = ""
    latent: Optional[torch.Tensor] = None


def _check_search_args(model, steps, lr, record_every, n, seed):
    """The settings both searches share, canonical: (steps, lr, record_every, n, seed)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return (checks.integer(steps, "steps", low=0, hint="ascent steps; 0 returns the start"),
            checks.real(lr, "lr", low=0.0, low_open=True, hint="Adam's step size"),
            checks.integer(record_every, "record_every", low=1, none_ok=True),
            checks.integer(n, "n", low=1, hint="images searched at once"),
            checks.seed(seed))


def _check_start(t, name, shape):
    """A starting tensor given by the caller: floating, of ``shape``, finite."""
    checks.tensor(t, name, floating=True, shape_hint=f"of shape {shape}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(t.shape)}; expected {tuple(shape)}")
    return checks.finite(t.detach(), name, cause="a search from NaN or inf stays NaN")


def _check_result(trace, image, what, model, generator=None):
    """The search stayed finite, or an error saying at which step it stopped being so and why."""
    values = torch.stack(trace)
    bad = ~torch.isfinite(values)
    if bool(bad.any()) or not bool(torch.isfinite(image).all()):
        step = int(bad.nonzero()[0]) if bool(bad.any()) else len(trace) - 1
        cause = non_finite_cause(model)
        if generator is not None and "parameters or buffers" not in cause:
            cause = non_finite_cause(generator).replace("the model has", "the generator has")
        raise NonFiniteResultError(f"{what}: the objective became non-finite at step {step}: {cause}; "
                                   "with finite weights, lower lr or use an objective that cannot overflow")
    return values


def _device_of(model):
    p = next(model.parameters(), None)
    return (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float32)


@guarded(x=None, grad=True)
def maximize(model: nn.Module, objective: Objective, steps: int = 256, lr: float = 0.05, l2: float = 0.0,
             blur_every: int = 0, blur_sigma: float = 0.5, tv: float = 0.0, jitter: int = 0, seed: int = 0,
             image_size: Optional[int] = None, record_every: Optional[int] = None, n: int = 1,
             init: Optional[torch.Tensor] = None) -> ActMaxResult:
    """Activation maximisation in pixel space (equation 10 (book/equations.md)).

    Starting from noise, ascend ``a(x) - l2 * mean(x^2) - tv * TV(x)`` with Adam (gradient
    ascent with a per-pixel step size; plain ascent with one ``eta`` stalls where the
    gradient is tiny and overshoots where it is large). ``x`` is the *normalised* image the
    network sees, so ``l2`` pulls towards the dataset's mean colour, not towards black;
    after every step ``x`` is clipped to the normalised values of [0, 1], so the result is
    always a valid image.

    Parameters
    ----------
    model : torch.nn.Module
        A classifier taking ImageNet-normalised (N, 3, H, W) input.
    objective : Objective
        An :class:`Objective`; its layers are checked before the search starts.
    steps : int, default 256
        Number of ascent steps (0 returns the starting noise).
    lr : float, default 0.05
        Adam's step size, in normalised units.
    l2 : float, default 0.0
        Weight of the L2 penalty (per value, i.e. ``lambda * ||x||^2 / D`` with D = 3HW).
    blur_every, blur_sigma : int, float, default 0, 0.5
        Every ``blur_every`` steps (0: never) blur x with a Gaussian
        of ``blur_sigma`` pixels: removes the high frequencies the ascent amplifies.
    tv : float, default 0.0
        Weight of the total-variation penalty (:func:`total_variation`, a mean).
    jitter : int, default 0
        Shift the image by up to ``jitter`` pixels (random, circular) before each
        forward pass, so that no pattern can exploit one exact alignment.
    seed : int, default 0
        Seeds the starting noise and the jitter: the same seed gives the same image.
    image_size : int, optional
        Side of the image (default ``model.ch6.input_size``, else 224).
    record_every : int, optional
        Keep a frame every this many steps (None: only the start and the end).
    n : int, default 1
        Number of images searched at once (each from its own noise).
    init : torch.Tensor, optional
        Optional starting images in [0, 1], (n, 3, H, W), instead of noise.

    Returns
    -------
    ActMaxResult
        :class:`ActMaxResult` with ``image`` (n, 3, H, W) in [0, 1] on the model's device.

    Raises
    ------
    ValueError, TypeError
        For an unknown layer, an out-of-range class, channel or
        position, or bad search settings; before any step is taken.
    """
    steps, lr, record_every, n, seed = _check_search_args(model, steps, lr, record_every, n, seed)
    l2 = checks.real(l2, "l2", low=0.0, hint="weight of the L2 penalty")
    tv = checks.real(tv, "tv", low=0.0, hint="weight of the total-variation penalty")
    blur_sigma = checks.real(blur_sigma, "blur_sigma", low=0.0, hint="the blur's std in pixels")
    blur_every = checks.integer(blur_every, "blur_every", low=0, hint="0: no blur")
    size = checks.integer(image_size, "image_size", low=1, none_ok=True, hint="the side of the image in pixels")
    size = size or int(getattr(getattr(model, "ch6", None), "input_size", 224))
    jitter = checks.integer(jitter, "jitter", low=0, high=size - 1, hint="pixels, less than the image side")
    modules = _resolve_layers(model, objective)
    dev, dtype = _device_of(model)
    gen = torch.Generator().manual_seed(seed)  # CPU generator: same numbers on every device
    if init is not None:
        start = _check_start(init, "init", (n, 3, size, size)).to(dev, dtype).clamp(0, 1)
    else:
        start = (0.5 + 0.1 * torch.randn(n, 3, size, size, generator=gen)).clamp(0, 1).to(dev, dtype)
    low, high = pixel_bounds(dev, dtype)
    shifts = torch.randint(-jitter, jitter + 1, (max(steps, 1), 2), generator=gen).tolist() if jitter else None

    rec = _Recorder(modules)
    try:
        x = normalize(start).requires_grad_(True)
        opt = torch.optim.Adam([x], lr=lr)
        trace, frames, frame_steps = [], [], []

        def keep(step):
            frames.append(_to_pixels(x))
            frame_steps.append(step)

        keep(0)
        for step in range(steps + 1):
            xin = torch.roll(x, shifts[step % len(shifts)], dims=(2, 3)) if shifts else x
            value = objective(rec.run(model, xin))
            if value.dim() != 1 or value.shape[0] != n:
                raise ValueError(f"the objective returned shape {tuple(value.shape)}; expected ({n},)")
            trace.append(value.detach().mean())
            if step == steps:
                break  # the last pass only scores the final image
            loss = -value.sum()
            if l2:
                loss = loss + l2 * (x ** 2).flatten(1).mean(1).sum()
            if tv:
                loss = loss + tv * total_variation(x).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                if blur_every and (step + 1) % blur_every == 0:
                    x.copy_(gaussian_blur(x, blur_sigma))
                x.copy_(torch.maximum(torch.minimum(x, high), low))
            if record_every and (step + 1) % record_every == 0 and step + 1 < steps:
                keep(step + 1)
        if steps:
            keep(steps)
    finally:
        rec.close()
    values = _check_result(trace, frames[-1], "maximize", model)
    return ActMaxResult(image=frames[-1], trace=values.tolist(), frames=frames,
                        frame_steps=frame_steps, objective=objective.description)


def _to_pixels(x_norm):
    # the clip only removes float rounding: x is kept inside the bounds during the search
    return denormalize(x_norm.detach()).clamp(0, 1)


@guarded(x=None, grad=True)
def dgn_am(model: nn.Module, generator: nn.Module, objective: Objective, steps: int = 256, lr: float = 0.05,
           l2_latent: float = 0.01, seed: int = 0, n: int = 1, record_every: Optional[int] = None,
           z_init: Optional[torch.Tensor] = None) -> ActMaxResult:
    """DGN-AM: activation maximisation in a generator's latent space (equation 11 (book/equations.md)).

    Ascend ``a(G(z)) - l2_latent * ||z||^2`` over the latent code ``z`` with Adam, starting
    from ``z ~ N(0, I)`` (seeded). Every candidate is an image the generator can draw, so
    the search cannot wander into the high-frequency patterns that fool a network but
    look like nothing; the L2 term keeps ``z`` where the generator was trained (under the
    standard normal prior, ``||z||^2`` is about the latent dimension). Nguyen et al., 2016.

    Parameters
    ----------
    model : torch.nn.Module
        Classifier taking ImageNet-normalised images.
    generator : torch.nn.Module
        Maps (N, z) codes to (N, 3, H, W) images in [0, 1], e.g.
        ``models.load("lesion_generator")``; its ``latent_dim`` attribute gives z.
    objective, steps, lr, seed, n, record_every
        As in :func:`maximize`.
    l2_latent : float, default 0.01
        The lambda of equation 11 (book/equations.md) (on the sum of squares of z).
    z_init : torch.Tensor, optional
        Optional starting codes (n, z).

    Returns
    -------
    ActMaxResult
        :class:`ActMaxResult` with ``image`` = G(z*) in [0, 1] and ``latent`` = z* (n, z).
    """
    steps, lr, record_every, n, seed = _check_search_args(model, steps, lr, record_every, n, seed)
    if not isinstance(generator, nn.Module):
        raise TypeError(f"generator must be a torch.nn.Module, got {type(generator).__name__}")
    l2_latent = checks.real(l2_latent, "l2_latent", low=0.0, hint="the lambda of equation 11 (book/equations.md)")
    zdim = getattr(generator, "latent_dim", None)
    if zdim is None:
        raise ValueError("the generator has no latent_dim attribute: set generator.latent_dim to the size of its code")
    modules = _resolve_layers(model, objective)
    dev, dtype = _device_of(model)
    if z_init is not None:
        z0 = _check_start(z_init, "z_init", (n, zdim)).to(dev, dtype)
    else:
        z0 = torch.randn(n, zdim, generator=torch.Generator().manual_seed(seed)).to(dev, dtype)

    with model_guard(generator):
        rec = _Recorder(modules)
        try:
            z = z0.clone().requires_grad_(True)
            opt = torch.optim.Adam([z], lr=lr)
            trace, frames, frame_steps = [], [], []
            for step in range(steps + 1):
                img = generator(z)
                if img.dim() != 4 or img.shape[:2] != (n, 3):
                    raise ValueError(f"the generator returned {tuple(img.shape)}; expected ({n}, 3, H, W) images")
                if step == 0 or step == steps or (record_every and step % record_every == 0):
                    frames.append(img.detach().clamp(0, 1))
                    frame_steps.append(step)
                value = objective(rec.run(model, normalize(img)))
                if value.dim() != 1 or value.shape[0] != n:
                    raise ValueError(f"the objective returned shape {tuple(value.shape)}; expected ({n},)")
                trace.append(value.detach().mean())
                if step == steps:
                    break
                loss = -value.sum() + l2_latent * (z ** 2).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        finally:
            rec.close()
    values = _check_result(trace, frames[-1], "dgn_am", model, generator)
    return ActMaxResult(image=frames[-1], trace=values.tolist(), frames=frames,
                        frame_steps=frame_steps, objective=objective.description, latent=z.detach())
