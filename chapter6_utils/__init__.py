"""Companion package for *Interpreting Machine Learning*, Chapter 6: Deep Learning Interpretability.

Modules (import what you need; nothing heavy happens at import time):

* :mod:`chapter6_utils.data`: ImageNet normalisation, pixel bounds, the chapter's photo.
* :mod:`chapter6_utils.synthetic`: the ground-truth lesion world with its ruler shortcut.
* :mod:`chapter6_utils.models`: ``load(name)`` for the bundled lesion models and the
  ImageNet models, with a visible fallback to random weights offline.
* :mod:`chapter6_utils.train`: ``python -m chapter6_utils.train --all`` regenerates the
  bundled weights.
"""
from __future__ import annotations

import random

__version__ = "0.1.0"
__all__ = ["device", "seed_everything", "__version__"]


def device():
    """``torch.device("cuda")`` when a GPU is available, else the CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) so a notebook reruns identically.
    ``seed``: an int in [0, 2**32) (NumPy's range)."""
    import numpy as np
    import torch

    from . import _checks

    seed = _checks.integer(seed, "seed", low=0, high=2 ** 32 - 1, hint="NumPy's seed range")

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
