"""Images in and out of an ImageNet classifier.

Everything the chapter's methods share about pixels lives here: ImageNet
normalisation and its inverse, the box a normalised pixel lives in (the LRP
z^B rule needs it), loading and preprocessing photos, the 1000 class names, and
the chapter's Samoyed photo with an offline fallback.

Shapes: a single image is ``(3, H, W)``, a batch ``(N, 3, H, W)``; display arrays
are ``(H, W, 3)`` floats in ``[0, 1]``.
"""
from __future__ import annotations

import functools
import math
import os
from pathlib import Path
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms.functional as TF
from PIL import Image

from . import _checks, _net

__all__ = [
    "gaussian_blur",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SAMOYED_URL",
    "normalize",
    "denormalize",
    "pixel_bounds",
    "pixel_bounds_like",
    "load_image",
    "preprocess",
    "to_image",
    "imagenet_classes",
    "samoyed",
    "samoyed_tensor",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: The chapter's photo (Figures 4, 5, 9, 10), from the PyTorch Hub repository.
SAMOYED_URL = "https://github.com/pytorch/hub/raw/master/images/dog.jpg"

#: A photo download gets this many seconds in all (not per read) and at most this many bytes.
PHOTO_DEADLINE = 30.0
PHOTO_MAX_BYTES = 50_000_000

ImageLike = Union[Image.Image, np.ndarray, torch.Tensor]


# --------------------------------------------------------------------------- #
# Normalisation
# --------------------------------------------------------------------------- #
def _check_image_tensor(x, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() not in (3, 4) or x.shape[-3] != 3:
        raise ValueError(
            f"{name} has shape {tuple(x.shape)}; expected (3, H, W) or (N, 3, H, W) "
            "with 3 colour channels"
        )


def _stats(x: torch.Tensor, name: str = "x") -> tuple[torch.Tensor, torch.Tensor]:
    if not x.is_floating_point():
        raise TypeError(f"{name} has dtype {x.dtype}; expected a floating-point tensor (uint8 pixels: x.float() / 255)")
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(3, 1, 1)
    return mean, std


def normalize(x: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalise pixels in [0, 1]: ``(x - mean) / std`` per channel.

    Parameters
    ----------
    x : torch.Tensor
        Float pixels in [0, 1], (3, H, W) or (N, 3, H, W), on any device.

    Returns
    -------
    torch.Tensor
        A new tensor of x's shape, device and dtype. Inverse: :func:`denormalize`.

    Raises
    ------
    TypeError
        If ``x`` is not a floating-point tensor (uint8 pixels: ``x.float() / 255``).
    ValueError
        If ``x`` is not (3, H, W) or (N, 3, H, W).
    """
    _check_image_tensor(x)
    mean, std = _stats(x)
    return (x - mean) / std


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """Undo :func:`normalize`: ``x * std + mean`` per channel.

    Parameters
    ----------
    x : torch.Tensor
        A normalised float tensor, (3, H, W) or (N, 3, H, W).

    Returns
    -------
    torch.Tensor
        Pixels (nominally in [0, 1]) of x's shape, device and dtype.

    Raises
    ------
    TypeError, ValueError
        As :func:`normalize`.
    """
    _check_image_tensor(x)
    mean, std = _stats(x)
    return x * std + mean


def pixel_bounds(device=None, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel range ``(low, high)`` of a normalised pixel.

    ``low = (0 - mean) / std`` and ``high = (1 - mean) / std``: the values black and white
    take after :func:`normalize`. The LRP z^B rule for the input layer (equation 8
    (book/equations.md); Montavon et al., 2017) assumes ``l_i <= x_i <= h_i`` in the space
    the network sees, which is the normalised one, not [0, 1].

    Parameters
    ----------
    device : torch.device or str, optional
        Where the bounds live (default: the CPU).
    dtype : torch.dtype, default torch.float32
        A floating-point dtype.

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        ``low`` and ``high``, each (1, 3, 1, 1), which broadcasts against (N, 3, H, W);
        :func:`pixel_bounds_like` gives full-size copies.

    Raises
    ------
    TypeError
        If ``dtype`` is not a floating-point torch dtype.
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    mean = torch.tensor(IMAGENET_MEAN, device=device, dtype=dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device, dtype=dtype).view(1, 3, 1, 1)
    return (0 - mean) / std, (1 - mean) / std


def pixel_bounds_like(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`pixel_bounds` with x's shape, device and dtype.

    Parameters
    ----------
    x : torch.Tensor
        A float tensor, (3, H, W) or (N, 3, H, W).

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        ``low`` and ``high`` shaped like ``x``: contiguous copies, not expanded views,
        because z^B implementations make them require grad or write them in place, which a
        stride-0 view does not allow.

    Raises
    ------
    TypeError, ValueError
        As :func:`normalize`.
    """
    _check_image_tensor(x)
    _stats(x)  # floating point, or an error naming x
    low, high = pixel_bounds(device=x.device, dtype=x.dtype)
    if x.dim() == 3:
        low, high = low[0], high[0]
    return low.expand_as(x).clone(), high.expand_as(x).clone()


# --------------------------------------------------------------------------- #
# Loading and preprocessing
# --------------------------------------------------------------------------- #
def _is_url(s) -> bool:
    return isinstance(s, str) and s.lower().startswith(("http://", "https://"))


def _open_rgb(path: Path, source: str) -> Image.Image:
    with Image.open(path) as im:
        # convert() reads the pixels, so the file can be closed on leaving the block.
        img = im.convert("RGB")
    img.info["source"] = source
    return img


def _fetch_image(url: str, what: str, source: str) -> Image.Image:
    """The image at ``url`` from the download cache (checked: it must decode) or the network;
    a cached file that does not decode is reported, removed and downloaded again."""
    decoded: list = []

    def check(path: Path) -> None:  # decoding is the check; keep the result
        decoded.append(_open_rgb(path, source))

    _net.fetch(url, _net.cache_path_for(url), kind="cache", what=what, check=check,
               deadline=PHOTO_DEADLINE, max_bytes=PHOTO_MAX_BYTES)
    return decoded[-1]


def load_image(path_or_url: Union[str, os.PathLike]) -> Image.Image:
    """Open a local image file or an http(s) URL as an RGB PIL image.

    A URL is downloaded once (30 s in all, 50 MB at most) into
    :func:`chapter6_utils._net.cache_dir` and read from there afterwards without touching
    the network; a cached file that no longer decodes is reported and downloaded again.

    Parameters
    ----------
    path_or_url : str or os.PathLike
        A file path (``~`` is expanded) or an ``http://`` / ``https://`` URL.

    Returns
    -------
    PIL.Image.Image
        RGB; ``img.info["source"]`` records where it came from.

    Raises
    ------
    FileNotFoundError
        If no file exists at the path.
    ConnectionError
        Offline, for a URL not in the cache (at once), or when the download fails.
    """
    if _is_url(path_or_url):
        url = path_or_url
        try:
            return _fetch_image(url, f"image {url}", url)
        except ConnectionError as err:
            raise ConnectionError(
                f"{err}. Download it on a machine with internet access and pass the local file "
                "instead, e.g. load_image('path/to/image.jpg')."
            ) from err

    path = Path(path_or_url).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no image file at {str(path)!r}")
    return _open_rgb(path, str(path))


def _to_float_chw(image) -> torch.Tensor:
    """Any supported image to a float32 ``(3, H, W)`` tensor in ``[0, 1]``."""
    if isinstance(image, Image.Image):
        return TF.pil_to_tensor(image.convert("RGB")).float().div_(255.0)

    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 2:  # greyscale photos such as skimage.data.camera()
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(
                f"numpy image has shape {arr.shape}; expected (H, W, 3) (or (H, W) greyscale)"
            )
        if arr.dtype == np.uint8:
            t = torch.from_numpy(np.ascontiguousarray(arr)).float().div_(255.0)
        elif np.issubdtype(arr.dtype, np.floating):
            t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
            _check_unit_range(t, "numpy float image")
        else:
            raise TypeError(f"numpy image has dtype {arr.dtype}; expected uint8 or float in [0, 1]")
        return t.permute(2, 0, 1).contiguous()

    if isinstance(image, torch.Tensor):
        t = image.detach()
        if t.dim() == 4 and t.shape[0] == 1:
            t = t[0]
        if t.dim() != 3 or t.shape[0] != 3:
            raise ValueError(
                f"tensor image has shape {tuple(image.shape)}; expected (3, H, W) in [0, 1]"
            )
        if t.dtype == torch.uint8:  # e.g. torchvision.io.read_image
            return t.cpu().float().div_(255.0)
        if not t.is_floating_point():
            raise TypeError(f"tensor image has dtype {t.dtype}; expected float in [0, 1] or uint8")
        t = t.cpu().float()
        _check_unit_range(t, "tensor image")
        return t

    raise TypeError(
        f"cannot preprocess a {type(image).__name__}; pass a PIL image, a numpy "
        "(H, W, 3) uint8/float array or a (3, H, W) tensor in [0, 1]"
    )


def _check_unit_range(t: torch.Tensor, what: str) -> None:
    # A normalised tensor fed back in is the usual mistake; it would be normalised twice.
    lo, hi = float(t.min()), float(t.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(
            f"{what} has values in [{lo:.3g}, {hi:.3g}]; expected [0, 1] "
            "(is it already normalised? use to_image() or denormalize() first)"
        )


def preprocess(image: ImageLike, size: int = 224) -> torch.Tensor:
    """Turn a photo into a classifier input, normalised.

    The standard ImageNet evaluation recipe, scaled to ``size``: resize the short side to
    ``round(size * 256 / 224)`` (256 for 224), then centre-crop ``size``. An image that is
    already ``size`` x ``size`` is used as is, so that ``to_image(preprocess(img))`` gives
    ``img`` back.

    Parameters
    ----------
    image : PIL.Image.Image, numpy.ndarray or torch.Tensor
        A PIL image, a numpy (H, W, 3) array (uint8, or float in [0, 1]; (H, W) greyscale
        is repeated to three channels), or a (3, H, W) tensor in [0, 1] (uint8 allowed).
    size : int, default 224
        The side of the square input in pixels.

    Returns
    -------
    torch.Tensor
        Float32, (1, 3, size, size), on the CPU.

    Raises
    ------
    TypeError
        If ``image`` is of another type or dtype.
    ValueError
        If its shape is not one of the above, its float values leave [0, 1] (an input
        normalised already), or ``size < 1``.
    """
    size = _checks.integer(size, "size", low=1, hint="the side of the square input in pixels")
    t = _to_float_chw(image)
    if tuple(t.shape[-2:]) != (size, size):
        t = TF.resize(t, round(size * 256 / 224), antialias=True)
        t = TF.center_crop(t, [size, size])
        # Bilinear weights are non-negative, but guard against rounding past 0 or 1.
        t = t.clamp_(0.0, 1.0)
    return normalize(t).unsqueeze(0).contiguous()


def to_image(x: torch.Tensor) -> np.ndarray:
    """A normalised image tensor as a displayable array.

    Denormalises, clamps to [0, 1] and returns float32 numpy for ``plt.imshow``.

    Parameters
    ----------
    x : torch.Tensor
        Normalised, (1, 3, H, W) or (3, H, W), any device.

    Returns
    -------
    numpy.ndarray
        (H, W, 3) float32 in [0, 1].

    Raises
    ------
    ValueError
        If ``x`` holds more than one image (index the batch first) or is not RGB.
    """
    _check_image_tensor(x)
    if x.dim() == 4:
        if x.shape[0] != 1:
            raise ValueError(
                f"x has shape {tuple(x.shape)}; to_image shows one image, expected "
                "(1, 3, H, W) or (3, H, W); index the batch first"
            )
        x = x[0]
    img = denormalize(x.detach().cpu().float()).clamp_(0.0, 1.0)
    return img.permute(1, 2, 0).contiguous().numpy()


# --------------------------------------------------------------------------- #
# Class names and sample photos
# --------------------------------------------------------------------------- #
@functools.lru_cache(maxsize=1)
def _imagenet_classes() -> tuple[str, ...]:
    # The names ship inside torchvision's weight metadata: no download needed.
    return tuple(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet class names, index = class id (258 is ``"Samoyed"``).

    Read from torchvision's weight metadata: no download.

    Returns
    -------
    list of str
        A fresh list of 1000 names (editing it changes nothing here).
    """
    return list(_imagenet_classes())  # a copy, so callers cannot edit the cache


def _chelsea() -> Image.Image:
    import skimage.data  # imported here: only the fallback needs scikit-image

    img = Image.fromarray(skimage.data.chelsea()).convert("RGB")
    img.info["source"] = "chelsea (offline fallback)"
    return img


def samoyed() -> Image.Image:
    """The chapter's Samoyed photo (Figures 4, 5, 9, 10) as an RGB PIL image.

    Read from the cache if it was downloaded before (and still decodes); otherwise
    downloaded (30 s in all) when online. Offline, or if anything fails, it returns
    scikit-image's ``chelsea`` cat photo instead (it ships with scikit-image) and prints
    one line saying so.

    Returns
    -------
    PIL.Image.Image
        RGB; ``img.info["source"]`` is ``"samoyed"`` or ``"chelsea (offline fallback)"``.
    """
    try:
        return _fetch_image(SAMOYED_URL, "Samoyed photo", "samoyed")
    except Exception as exc:  # any failure: the notebook must still run
        if isinstance(exc, ConnectionError) and not _net.online():
            reason = "offline"
        else:
            reason = f"could not download the Samoyed photo ({type(exc).__name__}: {exc})"
    _net.notice(
        f"{reason}: using scikit-image's 'chelsea' photo instead of the chapter's "
        "Samoyed (pytorch/hub images/dog.jpg)."
    )
    return _chelsea()


def samoyed_tensor(size: int = 224) -> torch.Tensor:
    """:func:`samoyed` through :func:`preprocess`.

    Parameters
    ----------
    size : int, default 224
        The side of the square input in pixels.

    Returns
    -------
    torch.Tensor
        (1, 3, size, size), normalised.

    Raises
    ------
    ValueError, TypeError
        If ``size`` is not an int >= 1.
    """
    size = _checks.integer(size, "size", low=1, hint="the side of the square input in pixels")
    return preprocess(samoyed(), size)


# --------------------------------------------------------------------------- blur
def _gaussian_kernel(sigma: float, radius: int, device, dtype) -> torch.Tensor:
    t = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, sigma: float, padding: str = "reflect") -> torch.Tensor:
    """Separable Gaussian blur of a batch, kernel radius ``ceil(3 sigma)``.

    The kernel is cut to the image (radius at most H - 1 and W - 1) before it is built, so
    a huge ``sigma`` is a nearly flat blur, not a huge kernel.

    Parameters
    ----------
    x : torch.Tensor
        Float, (N, C, H, W).
    sigma : float
        Standard deviation in pixels, >= 0; 0 returns ``x`` unblurred.
    padding : {"reflect", "replicate", "circular", "constant"}, default "reflect"
        ``"reflect"`` keeps the image edge from darkening, as the blur regulariser of
        activation maximisation needs; ``"replicate"`` repeats the edge pixels, as the
        blurred baseline of the deletion and insertion curves uses.

    Returns
    -------
    torch.Tensor
        (N, C, H, W), like ``x``.

    Raises
    ------
    TypeError, ValueError
        If ``x`` is not a float (N, C, H, W) tensor, ``sigma`` is negative or not finite,
        or ``padding`` is not one of the four.
    """
    _checks.tensor(x, "x", dim=4, floating=True, shape_hint="(N, C, H, W)")
    sigma = _checks.real(sigma, "sigma", low=0.0, hint="the blur's standard deviation in pixels; 0: no blur")
    padding = _checks.choice(padding, "padding", ("reflect", "replicate", "circular", "constant"))
    if sigma == 0:
        return x
    r, C = min(max(1, math.ceil(3 * sigma)), x.shape[-1] - 1, x.shape[-2] - 1), x.shape[1]
    k = _gaussian_kernel(sigma, r, x.device, x.dtype)
    x = F.pad(x, (r, r, r, r), mode=padding)
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(C, 1, 1, -1), groups=C)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C)
