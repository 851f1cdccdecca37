"""The ground-truth world: synthetic dermoscopy images with a planted ruler shortcut.

The chapter opens with a skin-lesion classifier that learned to detect rulers rather than
cancer (Narla et al., 2018). This module makes that story reproducible and measurable:

* every image holds one lesion; benign and malignant lesions differ the way the ABCD
  heuristics of dermoscopy say (Asymmetry, Border irregularity, Colour variegation,
  Diameter), driven by one latent "malignancy" value per image;
* the two classes overlap: 38% of lesions are atypical for their class, so a model
  that looks only at the lesion tops out near 92%, not 100%;
* a ruler (a light scale strip with tick marks) lies along a random edge of some images,
  and the split decides how often it comes with each class:

  =========  ========================  ======================
  split      ruler on malignant        ruler on benign
  =========  ========================  ======================
  biased     85%                       5%   (training data)
  unbiased   50%                       50%
  swapped    5%                        85%
  =========  ========================  ======================

* pixel masks of the (visible) lesion and of the ruler come with every image, so any
  attribution map can be scored against the truth.

Skin tone, skin texture, hair strands, vignetting and sensor noise vary from image to
image so that neither class nor ruler can be read off a single pixel.

Everything is drawn from one ``numpy.random.Generator(seed)`` and rendered with
deterministic CPU tensor operations: the same ``(n, split, seed)`` gives the same data,
bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass, field
import math
import numbers

import numpy as np
import torch
import torch.nn.functional as F

from . import _checks

__all__ = ["LesionSet", "make_lesions", "paste_rulers", "SPLITS", "CLASSES", "IMAGE_SIZE",
           "TRAIN_SEED", "EVAL_SEED", "TEST_SEED"]

IMAGE_SIZE = 64
#: Seeds of the data sets. Training draws ``TRAIN_SEED + 1000 * k + epoch`` (see
#: ``chapter6_utils.train``); ``EVAL_SEED`` (the accuracies the models report, the
#: notebooks' images) and ``TEST_SEED`` (the test suite) are far from those, so every
#: reported figure is on images no model was trained on.
TRAIN_SEED = 1_000_000
EVAL_SEED = 2_024
TEST_SEED = 31_337
CLASSES = ("benign", "malignant")
#: P(ruler | benign), P(ruler | malignant) for each split.
SPLITS = {
    "biased": (0.05, 0.85),
    "unbiased": (0.50, 0.50),
    "swapped": (0.85, 0.05),
}
_CHUNK = 128  # images rendered at once: small enough for the tensors to stay in cache (3x faster than 1024)


@dataclass
class LesionSet:
    """A batch of synthetic lesion images and their ground truth.

    Indexing (an int, a slice, a bool or index tensor) gives a LesionSet of those images;
    ``len`` is the number of images.

    Attributes
    ----------
    images : torch.Tensor
        (N, 3, 64, 64) float32 in [0, 1], not ImageNet-normalised (normalise with
        :func:`chapter6_utils.data.normalize`).
    labels : torch.Tensor
        (N,) int64, 0 = benign, 1 = malignant.
    lesion_mask : torch.Tensor
        (N, 64, 64) bool, the lesion's visible pixels.
    ruler_mask : torch.Tensor
        (N, 64, 64) bool, the ruler's pixels (all False without a ruler).
    has_ruler : torch.Tensor
        (N,) bool.
    malignancy : torch.Tensor
        (N,) float32 in [0, 1], the latent value behind the ABCD features.
    split : str
        The split the set was drawn from (see :data:`SPLITS`).
    seed : int
        The seed it was drawn with.
    classes : tuple of str
        The class names, indexed by label (:data:`CLASSES`).
    """

    images: torch.Tensor
    labels: torch.Tensor
    lesion_mask: torch.Tensor
    ruler_mask: torch.Tensor
    has_ruler: torch.Tensor
    malignancy: torch.Tensor
    split: str
    seed: int
    classes: tuple = field(default=CLASSES)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index) -> "LesionSet":
        """Index or slice like a tensor; returns a LesionSet (an int keeps a batch of one)."""
        if isinstance(index, numbers.Integral) and not isinstance(index, bool):
            if not -len(self) <= index < len(self):
                raise IndexError(f"index {index} is out of range for a LesionSet of {len(self)} images")
            index = slice(int(index), int(index) + 1 if index != -1 else None)
        return LesionSet(
            images=self.images[index],
            labels=self.labels[index],
            lesion_mask=self.lesion_mask[index],
            ruler_mask=self.ruler_mask[index],
            has_ruler=self.has_ruler[index],
            malignancy=self.malignancy[index],
            split=self.split,
            seed=self.seed,
            classes=self.classes,
        )

    def select(self, label: int | None = None, ruler: bool | None = None) -> "LesionSet":
        """The images of one class and/or with (or without) a ruler.

        Parameters
        ----------
        label : int, optional
            0 (benign) or 1 (malignant); None keeps both.
        ruler : bool, optional
            True keeps images with a ruler, False those without; None keeps both.

        Returns
        -------
        LesionSet
            The selected images, in their order; e.g. ``data.select(label=1, ruler=True)``
            for malignant lesions with a ruler.
        """
        label = _checks.integer(label, "label", low=0, high=len(self.classes) - 1, none_ok=True,
                                hint=f"a class index: {', '.join(f'{i} {c}' for i, c in enumerate(self.classes))}")
        if ruler is not None and not isinstance(ruler, bool):
            raise TypeError(f"ruler must be True, False or None, got {ruler!r}")
        keep = torch.ones(len(self), dtype=torch.bool)
        if label is not None:
            keep &= self.labels == label
        if ruler is not None:
            keep &= self.has_ruler == bool(ruler)
        return self[keep]

    def summary(self) -> str:
        """One line: size, split, class balance and ruler rate per class.

        Returns
        -------
        str
        """
        parts = [f"{len(self)} images, split={self.split!r}, seed={self.seed}"]
        for c, name in enumerate(self.classes):
            m = self.labels == c
            k = int(m.sum())
            rate = float(self.has_ruler[m].float().mean()) if k else float("nan")
            parts.append(f"{name}: {k} ({rate:.0%} with ruler)")
        return "; ".join(parts)


def paste_rulers(target: LesionSet, donor: LesionSet) -> LesionSet:
    """An intervention: copy each donor image's ruler onto the matching target image.

    The pixels under each donor's ruler mask replace the target's; everything else stays.

    Parameters
    ----------
    target : LesionSet
        The images that receive a ruler.
    donor : LesionSet
        As many images as ``target``, every one with a ruler (``donor.select(ruler=True)``).

    Returns
    -------
    LesionSet
        The edited images; the lesion mask loses the pixels the ruler now covers, the ruler
        mask is the donor's, labels and latent malignancy are the target's.

    Raises
    ------
    ValueError
        If the lengths differ or a donor image has no ruler.
    """
    if len(target) != len(donor):
        raise ValueError(f"target has {len(target)} images but donor has {len(donor)}; slice them to one length")
    if not bool(donor.has_ruler.all()):
        raise ValueError("every donor image needs a ruler: pass donor.select(ruler=True)")
    m = donor.ruler_mask
    return LesionSet(
        images=torch.where(m.unsqueeze(1), donor.images, target.images),
        labels=target.labels.clone(),
        lesion_mask=target.lesion_mask & ~m,
        ruler_mask=m.clone(),
        has_ruler=torch.ones(len(target), dtype=torch.bool),
        malignancy=target.malignancy.clone(),
        split=f"{target.split}+pasted rulers",
        seed=target.seed,
        classes=target.classes,
    )


def _check_args(n, split, seed):
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"n must be a positive integer (n >= 1), got {n!r}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits are {sorted(SPLITS)}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an integer in [0, 2**63), got {seed!r}")


def make_lesions(n: int, split: str = "biased", seed: int = 0, *, draw_rulers: bool = True) -> LesionSet:
    """Generate ``n`` synthetic dermoscopy images with lesion and ruler masks.

    Parameters
    ----------
    n : int
        Number of images, >= 1. Classes are balanced (n // 2 malignant, the rest benign, in
        random order).
    split : {"biased", "unbiased", "swapped"}, default "biased"
        ``"biased"``: a ruler on about 85% of malignant and 5% of benign lesions (the
        training data); ``"unbiased"``: on 50% of each class; ``"swapped"``: on about 85% of
        benign and 5% of malignant lesions (:data:`SPLITS`).
    seed : int, default 0
        In [0, 2**63); the same arguments give identical tensors, bit for bit.
    draw_rulers : bool, default True
        False renders each image as it would be without its ruler: every random draw is the
        same, so every other pixel is identical bit for bit (the ruler's pixels show the skin
        beneath, its vignetting and noise). ``has_ruler`` and ``ruler_mask`` still say where
        the ruler would have been. An intervention: the ruler's true effect on a model is the
        change between the two renderings.

    Returns
    -------
    LesionSet
        images (N, 3, 64, 64) float32 in [0, 1], labels (N,) int64, lesion_mask and
        ruler_mask (N, 64, 64) bool, has_ruler (N,) bool, malignancy (N,) float32.

    Raises
    ------
    ValueError
        For ``n < 1``, an unknown split or a seed that is not an int in [0, 2**63).
    TypeError
        For a ``draw_rulers`` that is not True or False.
    """
    _check_args(n, split, seed)
    if not isinstance(draw_rulers, bool):
        raise TypeError(f"draw_rulers must be True or False, got {draw_rulers!r}")
    rng = np.random.default_rng(int(seed))
    labels = rng.permutation(np.arange(n) % 2)
    p_benign, p_malignant = SPLITS[split]
    has_ruler = rng.random(n) < np.where(labels == 1, p_malignant, p_benign)
    malignancy = _latent_malignancy(rng, labels)

    out = {k: [] for k in ("images", "lesion", "ruler")}
    for start in range(0, n, _CHUNK):
        stop = min(n, start + _CHUNK)
        img, les, rul = _render(rng, malignancy[start:stop], has_ruler[start:stop], draw_rulers)
        out["images"].append(img)
        out["lesion"].append(les)
        out["ruler"].append(rul)
    return LesionSet(
        images=torch.cat(out["images"]),
        labels=torch.from_numpy(labels.astype(np.int64)),
        lesion_mask=torch.cat(out["lesion"]),
        ruler_mask=torch.cat(out["ruler"]),
        has_ruler=torch.from_numpy(has_ruler),
        malignancy=torch.from_numpy(malignancy.astype(np.float32)),
        split=split,
        seed=int(seed),
    )


def _latent_malignancy(rng, labels):
    """Latent malignancy m in [0, 1] per image.

    Typical lesions (62%) sit far from the class boundary (benign m < 0.33, malignant
    m > 0.67). Atypical ones (38%) sit near it, in two narrow clusters (m in [0.41, 0.46]
    and [0.54, 0.59]); each cluster holds four lesions of one class for every one of the
    other: there the lesion says "probably" (80/20), not "surely". A model that reads m
    perfectly is right 0.62 + 0.38 * 0.8 = 92% of the time. That weak evidence (odds 4:1)
    is weaker than a ruler's in the biased split (17:1 present, 6:1 against when absent):
    it is the room a shortcut needs. The gaps between the clusters, and between them and
    the typical lesions, make the evidence readable without pixel-perfect perception.
    """
    n = labels.shape[0]
    kind = rng.random(n)
    u = rng.random(n)
    m_benign = np.where(kind < 0.62, 0.33 * u, np.where(kind < 0.924, 0.41 + 0.05 * u, 0.54 + 0.05 * u))
    return np.where(labels == 1, 1.0 - m_benign, m_benign)


def _smooth_noise(rng, n, channels, coarse, size=IMAGE_SIZE):
    """Random field, smooth at the scale size/coarse, values roughly in [-2, 2]."""
    z = torch.from_numpy(rng.standard_normal((n, channels, coarse, coarse), dtype=np.float32))
    return F.interpolate(z, size=(size, size), mode="bilinear", align_corners=False)


def _render(rng, m, has_ruler, draw_rulers=True):
    """Render one chunk. Returns images (n,3,H,W), lesion mask and ruler mask (n,H,W)."""
    n = m.shape[0]
    S = IMAGE_SIZE
    t = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float32))  # noqa: E731
    col = lambda a: t(a).view(n, -1, 1, 1)  # noqa: E731
    yy, xx = torch.meshgrid(torch.arange(S, dtype=torch.float32),
                            torch.arange(S, dtype=torch.float32), indexing="ij")
    yy, xx = yy[None], xx[None]  # broadcast, never expand: strided copies are slow
    # Features are m plus a little independent jitter each, so that no single feature
    # is a perfect read-out of the class.
    jit = lambda s: np.clip(m + rng.normal(0.0, s, n), 0.0, 1.0)  # noqa: E731

    # --- skin: tone from light to brown, low-frequency blotches, fine texture
    tone = rng.random(n)
    light, dark = np.array([0.93, 0.78, 0.68]), np.array([0.55, 0.38, 0.27])
    skin = t(light[None] * (1 - tone[:, None]) + dark[None] * tone[:, None]).view(n, 3, 1, 1)
    blotch = _smooth_noise(rng, n, 1, 5) * col(rng.uniform(0.01, 0.04, n))
    texture = _smooth_noise(rng, n, 1, 24) * col(rng.uniform(0.005, 0.02, n))
    img = (skin + blotch + texture).expand(n, 3, S, S).clone()

    # --- lesion geometry (A, B, D)
    d_feat, a_feat, b_feat, c_feat = jit(0.02), jit(0.02), jit(0.02), jit(0.02)
    radius = np.clip(7.0 + 10.0 * d_feat + rng.normal(0, 0.4, n), 5.0, 18.5)
    cx = S / 2 + rng.uniform(-4, 4, n)
    cy = S / 2 + rng.uniform(-4, 4, n)
    dx, dy = xx - col(cx).view(n, 1, 1), yy - col(cy).view(n, 1, 1)
    r = torch.sqrt(dx * dx + dy * dy)
    theta = torch.atan2(dy, dx)
    v = lambda a: t(a).view(n, 1, 1)  # noqa: E731
    boundary = 1.0 + v(0.06 + 0.18 * a_feat) * torch.cos(theta - v(rng.uniform(0, 2 * np.pi, n)))
    boundary = boundary + v(0.04 + 0.16 * a_feat) * torch.cos(2 * (theta - v(rng.uniform(0, np.pi, n))))
    for k in (5, 7, 9, 12):  # border irregularity: high harmonics of the outline
        amp = v(0.005 + 0.07 * b_feat * rng.uniform(0.6, 1.0, n) / math.sqrt(k / 5))
        boundary = boundary + amp * torch.cos(k * theta + v(rng.uniform(0, 2 * np.pi, n)))
    edge = v(radius) * boundary - r  # > 0 inside
    softness = v(np.clip(1.4 - 0.8 * b_feat, 0.5, 1.4))  # irregular lesions end abruptly
    alpha = torch.sigmoid(edge / softness)
    lesion_mask = edge > 0

    # --- lesion colour (C): uniform brown when benign, variegated when malignant
    shade = rng.uniform(0.0, 1.0, n)[:, None]
    brown = t(np.array([0.55, 0.36, 0.22])[None] * (1 - shade) + np.array([0.38, 0.22, 0.13])[None] * shade)
    colour = brown.view(n, 3, 1, 1) * (1 - 0.25 * (1 - r / (v(radius) + 1)).clamp(0, 1)).unsqueeze(1)
    blobs = torch.sigmoid(3.0 * _smooth_noise(rng, n, 3, 8))
    var = col(np.clip(c_feat * 1.15 - 0.15, 0, 1))
    for j, rgb in enumerate(([0.10, 0.07, 0.07], [0.36, 0.42, 0.52], [0.66, 0.30, 0.30])):
        w = (var * blobs[:, j:j + 1] * (0.9, 0.7, 0.55)[j]).clamp(0, 1)
        colour = colour * (1 - w) + torch.tensor(rgb).view(1, 3, 1, 1) * w
    img = img * (1 - alpha.unsqueeze(1)) + colour * alpha.unsqueeze(1)

    # --- hair: up to four dark, slightly wavy strands
    # Every image draws the same random numbers, but a strand is drawn only on the images
    # that have it (63% have a first strand, 2% a fourth): blending with a = 0 would leave
    # those pixels bit for bit as they were, at the cost of a full-size pass.
    n_hair = np.minimum(rng.poisson(1.0, n), 4)
    for h in range(4):
        draws = [rng.uniform(lo, hi, n) for lo, hi in
                 ((0, np.pi), (0, S), (0, S), (0, 4), (0.03, 0.12), (0, 6.3), (0.4, 0.8), (0.5, 0.9))]
        rows = np.flatnonzero(n_hair > h)
        if rows.size == 0:
            continue
        ang, px, py, amp, freq, phase, width, opacity = (
            t(d[rows]).view(-1, 1, 1) for d in draws)
        along = (xx - px) * torch.cos(ang) + (yy - py) * torch.sin(ang)
        across = -(xx - px) * torch.sin(ang) + (yy - py) * torch.cos(ang)
        wave = amp * torch.sin(along * freq + phase)
        a = ((1 - (across - wave).abs() / (width + 0.5)).clamp(0, 1) * opacity).unsqueeze(1)
        idx = torch.from_numpy(rows)
        img[idx] = img[idx] * (1 - a) + 0.08 * a

    # --- ruler: a light strip with tick marks along a random edge
    # As with hair: every image draws the ruler's numbers, only images with a ruler draw it.
    side = rng.integers(0, 4, n)  # 0 top, 1 bottom, 2 left, 3 right
    offset, width = rng.integers(0, 4, n), rng.integers(5, 10, n)
    start = rng.integers(0, 16, n)
    length = rng.integers(40, 65, n)
    bright = rng.uniform(0.6, 1.0, n)
    period = rng.integers(3, 5, n)
    shift = rng.integers(0, 3, n)
    tick_depth = rng.uniform(0.55, 0.85, n)
    ruler_mask = torch.zeros(n, S, S, dtype=torch.bool)
    rows = np.flatnonzero(has_ruler)
    if rows.size:
        r_ = lambda a: t(a[rows]).view(-1, 1, 1)  # noqa: E731
        s_, off, wid = r_(side), r_(offset), r_(width)
        dist = torch.where(s_ == 0, yy, torch.where(s_ == 1, S - 1 - yy, torch.where(s_ == 2, xx, S - 1 - xx)))
        pos = torch.where(s_ < 2, xx, yy)
        mask = (dist >= off) & (dist < off + wid) & (pos >= r_(start)) & (pos < r_(start + length))
        strip = t(np.stack([bright, bright * 0.97, bright * 0.86], 1)[rows]).view(-1, 3, 1, 1)
        rel = pos - r_(start) - r_(shift)
        k = torch.floor(rel / r_(period))
        on_tick = (rel - k * r_(period)) < 1
        tick_len = torch.where(torch.remainder(k, 5) == 0, 0.85, 0.5) * wid
        tick = on_tick & ((dist - off) < tick_len)
        ruler_rgb = strip * (1 - r_(tick_depth).unsqueeze(1) * tick.unsqueeze(1).float())
        idx = torch.from_numpy(rows)
        if draw_rulers:
            img[idx] = torch.where(mask.unsqueeze(1), ruler_rgb, img[idx])
        ruler_mask[idx] = mask

    # --- vignetting and sensor noise
    rr = ((xx - S / 2) ** 2 + (yy - S / 2) ** 2) / (S / 2) ** 2
    img = img * (1 - v(rng.uniform(0.0, 0.3, n)) * rr).unsqueeze(1)
    img = img + torch.from_numpy(rng.standard_normal((n, 1, S, S), dtype=np.float32)) * col(rng.uniform(0.005, 0.02, n))
    img = img.clamp(0.0, 1.0).contiguous()
    return img, (lesion_mask & ~ruler_mask).contiguous(), ruler_mask.contiguous()
