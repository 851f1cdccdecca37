"""Saliency maps: the gradient of a class score at the input pixels (chapter 6, "Saliency Maps").

Every function is ``method(model, x, target, **options)`` with ``x`` a normalised
(N, C, H, W) batch and ``target`` an int or N class indices; ``S_c`` is the pre-softmax
score of class ``c = target[i]`` of image ``i``. Each image gets the gradient of its own
score in one backward pass: the images of a batch do not interact in an eval-mode network,
so the gradient of ``sum_i S_{c_i}(x_i)`` with respect to ``x_i`` is that of ``S_{c_i}(x_i)``.
A batch gives the maps of its images one at a time (up to float rounding). Every function
leaves the model as it found it (:func:`chapter6_utils._guard.model_guard`) and computes
on x's device.

* :func:`gradient`: dS_c/dx, (N, C, H, W).
* :func:`gradient_x_input`: dS_c/dx * x, (N, C, H, W).
* :func:`saliency_map`: equation 1 (book/equations.md), (N, H, W) (Simonyan et al., 2013).
* :func:`smoothgrad`: equation 2 (book/equations.md), (N, H, W) (Smilkov et al., 2017);
  ``average="magnitude"`` (the chapter's) or ``"signed"`` (the paper's).
"""
from __future__ import annotations

import numbers

import torch

from . import _checks as checks
from ._guard import attribution_method, class_scores

__all__ = ["gradient", "gradient_x_input", "saliency_map", "smoothgrad", "default_batch_size",
           "DEFAULT_BATCH_VALUES", "AVERAGES"]

#: How many input values (copies x C x H x W) ``smoothgrad(batch_size=None)`` puts through
#: one forward/backward pass, by device type: what 8 noisy copies of a 224x224 RGB image
#: hold on a CPU, 64 on a GPU; smaller images get proportionally more copies per pass
#: (activation memory grows with the pixel count). Measured (benchmarks/run.py --only
#: smoothgrad, n = 25): on this project's 2-core CPU, ResNet-18 at 224x224 took 1.2 s in
#: batches of 8, 1.5-1.7 s in batches of 5, 13 or 25 and 2.1 s one copy at a time; the
#: lesion CNN at 64x64 ran within 10% of its best with 8 to 98 copies per pass and 2x
#: slower with 256 or more (out of cache). On an H200, ResNet-18 ran 10x faster with all
#: 25 copies in one pass than one at a time, 4x faster with 64 copies per pass than with
#: 8 over 8 images; 64 copies per pass keep VGG-16 near 5 GiB of GPU memory.
DEFAULT_BATCH_VALUES = {"cpu": 8 * 3 * 224 * 224, "cuda": 64 * 3 * 224 * 224}
#: What ``smoothgrad`` averages over the noisy copies: each copy's map (the chapter's
#: equation 2 (book/equations.md)) or the signed gradients (Smilkov et al.'s definition).
AVERAGES = ("magnitude", "signed")
_MASK64 = (1 << 64) - 1


def _input_gradient(model, x, target, target_max):
    x = x.detach().requires_grad_(True)
    # The model gets a copy that is not a leaf: a first op in place (nn.ReLU(inplace=True))
    # is then allowed by autograd and still differentiated back to x.
    # target_max: the range check needs no device sync between forward and backward.
    scores = class_scores(model(x.clone()), target, target_max)
    (grad,) = torch.autograd.grad(scores.sum(), x)
    return grad


@attribution_method
def gradient(model, x, target):
    """The gradient dS_c/dx of the class score at the input, (N, C, H, W) like ``x``.

    The signed sensitivity behind equation 1 (book/equations.md) (Simonyan et al., 2013); equals Captum's
    ``Saliency(model).attribute(x, target, abs=False)``.
    """
    return _input_gradient(model, x, target, int(target.max()))


@attribution_method
def gradient_x_input(model, x, target):
    """Gradient times input, ``dS_c/dx * x``, (N, C, H, W) like ``x``.

    A first-order Taylor view of ``S_c`` around the all-zero input (Shrikumar et al.,
    2016); ``x`` is the normalised input the model sees, so zero is the mean colour.
    """
    return _input_gradient(model, x, target, int(target.max())) * x


def _channel_max_abs(grad):
    return grad.abs().amax(dim=1)


@attribution_method
def saliency_map(model, x, target):
    """Vanilla saliency, equation 1 (book/equations.md): ``M[i, j] = max_k |dS_c / dx[k, i, j]|``, (N, H, W).

    Simonyan, Vedaldi & Zisserman (2013), "Deep inside convolutional networks". Unsigned:
    it says where a nudge would change the score, not in which direction.
    """
    return _channel_max_abs(_input_gradient(model, x, target, int(target.max())))


def default_batch_size(x: torch.Tensor) -> int:
    """The noisy copies per pass ``smoothgrad`` uses for ``x`` when ``batch_size=None``:
    ``DEFAULT_BATCH_VALUES`` of x's device type (the CPU's for other types) divided by
    the size of one image, at least 1."""
    checks.tensor(x, "x", dim=4, shape_hint="(N, C, H, W)")
    budget = DEFAULT_BATCH_VALUES.get(x.device.type, DEFAULT_BATCH_VALUES["cpu"])
    return max(1, budget // x[0].numel())


def _splitmix64(z: int) -> int:
    # A well-mixed 64-bit seed per (seed, copy), so that nearby seeds give unrelated noise.
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) >> 1  # 63 bits: torch seeds are signed on some paths


def _noise(seed: int, n_samples: int, shape, like: torch.Tensor) -> torch.Tensor:
    """``eps_0 ... eps_(n-1)``, (n_samples, C, H, W) standard normal on like's device and
    dtype: one generator, one draw for all the copies (a generator per copy cost more than
    the noise on small models)."""
    gen = torch.Generator(device=like.device)
    gen.manual_seed(_splitmix64(seed & _MASK64))
    return torch.randn((n_samples,) + tuple(shape), generator=gen, device=like.device, dtype=like.dtype)


def _check_options(n_samples, sigma, batch_size, seed, average):
    if average not in AVERAGES:
        raise ValueError(f"average must be 'magnitude' (the chapter's equation 2 (book/equations.md): the mean of the copies' "  # noqa: E501
                         f"|gradient| maps) or 'signed' (Smilkov et al.: the mean of the signed gradients, "
                         f"then |.| and the channel max), got {average!r}")

    def is_int(v):
        return isinstance(v, numbers.Integral) and not isinstance(v, bool)

    if not is_int(n_samples) or n_samples < 1:
        raise ValueError(f"n_samples must be an int >= 1 (the number of noisy copies), got {n_samples!r}")
    if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real) or not sigma >= 0 or sigma == float("inf"):
        raise ValueError(f"sigma must be a finite number >= 0 (noise std as a fraction of the image's "
                         f"value range; the chapter uses 0.15), got {sigma!r}")
    if batch_size is not None and (not is_int(batch_size) or batch_size < 1):
        raise ValueError(f"batch_size must be None or an int >= 1 (noisy copies per forward pass), got {batch_size!r}")
    if seed is not None and not is_int(seed):
        raise TypeError(f"seed must be None or an int, got {type(seed).__name__}")


@attribution_method
def smoothgrad(model, x, target, *, n_samples: int = 25, sigma: float = 0.15,
               batch_size: int | None = None, seed: int | None = None, average: str = "magnitude"):
    """SmoothGrad, equation 2 (book/equations.md): maps of noisy copies averaged, (N, H, W).

    With ``x_it = clamp(x_i + std_i * eps_t, min(x_i), max(x_i))``, ``eps_t`` standard
    normal noise of shape (C, H, W) and, as in the chapter, ``std_i = sigma * (max(x_i) -
    min(x_i))`` from image i's own value range (over all its channels and pixels):

    * ``average="magnitude"`` (default, the chapter's equation 2 (book/equations.md)):
      ``M_hat(x_i) = 1/n sum_t M(x_it)`` with ``M`` equation 1 (book/equations.md), the channel max of
      |gradient|. Every copy's map is already unsigned, so gradients that flip sign from
      copy to copy add up instead of cancelling.
    * ``average="signed"`` (Smilkov et al.'s definition): the signed gradients are
      averaged, ``G_i = 1/n sum_t dS_c/dx (x_it)``, and the map is ``max_k |G_i[k]|``.
      Here sign flips cancel: this is the variant in which "the noise averages out".
      Never larger than the magnitude average, pixel by pixel.

    Smilkov, Thorat, Kim, Viegas & Wattenberg (2017), "SmoothGrad: removing noise by
    adding noise".

    Parameters
    ----------
    n_samples : int, default 25
        Noisy copies per image (chapter: 25); ``n_samples=1, sigma=0`` gives
        :func:`saliency_map` exactly.
    sigma : float, default 0.15
        Noise level as a fraction of the image's value range (chapter: 0.15).
    batch_size : int, optional
        Noisy copies per forward/backward pass, across images and copies;
        None picks :func:`default_batch_size` (at 224x224 RGB: 8 on a CPU, 64 on a
        GPU; at 64x64: 98 and 784). It changes speed and memory, not the result
        (beyond float rounding).
    seed : int, optional
        Makes the noise reproducible. One generator (on x's device), seeded from
        ``seed``, draws ``eps_0 ... eps_(n-1)`` at once before the first pass
        (``n_samples`` x C x H x W values), and every image of the batch uses the
        same ``eps_t`` (scaled to its own range): so the maps do not depend on
        ``batch_size``, and a batch gets the same noise as its images one at a time
        with the same seed. The flip side: with one seed, the noise patterns (not their
        scale) are shared between the images of a call; their errors are correlated,
        which matters only when averaging maps over images. None draws the seed from
        torch's global generator, so ``torch.manual_seed`` (``seed_everything``)
        makes the call reproducible too. A seed gives other noise on CUDA than on CPU.
    average : {"magnitude", "signed"}, default "magnitude"
        ``"magnitude"`` or ``"signed"``, see above. The same seed gives both
        the same noisy copies.

    Returns
    -------
    torch.Tensor
        (N, H, W) on x's device, non-negative.
    """
    _check_options(n_samples, sigma, batch_size, seed, average)
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)))
    n, shape, target_max = x.shape[0], x.shape[1:], int(target.max())
    if batch_size is None:
        batch_size = default_batch_size(x)
    flat = x.detach().flatten(1)
    lo = flat.amin(1).view(n, 1, 1, 1)
    hi = flat.amax(1).view(n, 1, 1, 1)
    std = sigma * (hi - lo)
    signed = average == "signed"
    eps = _noise(seed, n_samples, shape, x)
    # The running sum: of the copies' maps (N, H, W), or of their gradients (N, C, H, W).
    total = torch.zeros((n,) + tuple(shape if signed else shape[1:]), device=x.device, dtype=x.dtype)
    # The n * N copies in copy-major order (copy t outer, image i inner) and cut into
    # batches: within a batch, the copies of one t are a run of consecutive images, so
    # eps_t is drawn once for all of them, and every image adds its maps in the order
    # t = 0, 1, ... whatever the batching.
    for start in range(0, n * n_samples, batch_size):
        stop = min(start + batch_size, n * n_samples)
        runs = [(t, max(start - t * n, 0), min(stop - t * n, n)) for t in range(start // n, (stop - 1) // n + 1)]
        noisy = torch.cat([torch.clamp(x[a:b] + std[a:b] * eps[t], lo[a:b], hi[a:b])
                           for t, a, b in runs])
        # target_max of all images: the first batch may not hold every image.
        grads = _input_gradient(model, noisy, torch.cat([target[a:b] for _, a, b in runs]), target_max)
        maps = grads if signed else _channel_max_abs(grads)
        for (_, a, b), m in zip(runs, maps.split([b - a for _, a, b in runs])):
            total[a:b] += m
    mean = total / n_samples
    return _channel_max_abs(mean) if signed else mean
