"""How alike two maps are: rank correlation and SSIM, and the agreement matrix between
methods."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import _checks as checks

__all__ = ["spearman", "ssim", "agreement", "Agreement"]


# --------------------------------------------------------------------------- similarity
def _ranks(v: torch.Tensor) -> torch.Tensor:
    # Average ranks for ties: a map with many equal values (zeros of a ReLU network)
    # must not get an arbitrary order that manufactures correlation.
    sorted_v, order = v.sort()
    _, inverse, counts = torch.unique_consecutive(sorted_v, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).to(v.dtype)
    average = ends - (counts.to(v.dtype) - 1) / 2  # 1-based
    ranks = torch.empty_like(v)
    ranks[order] = average[inverse]
    return ranks


def _check_pair(a, b, names=("a", "b")):
    for t, name in zip((a, b), names):
        checks.tensor(t, name, dim=3, shape_hint="(N, H, W) (one map: m[None])")
        checks.finite(t, name, cause="compare maps only once they are finite")
    if a.shape != b.shape:
        raise ValueError(f"maps have shapes {tuple(a.shape)} and {tuple(b.shape)}; expected the same (N, H, W)")


def spearman(a: torch.Tensor, b: torch.Tensor, absolute: bool = True) -> torch.Tensor:
    """Spearman rank correlation between maps a[i] and b[i] over pixels, (N,).

    ``a``, ``b``: (N, H, W). ``absolute`` ranks |a| and |b|, as Adebayo et al. (2018) do
    (equation 15 (book/equations.md)). Ties get average ranks; a constant map gives NaN (no ranking to compare).
    """
    _check_pair(a, b)
    return spearman_to(centred_ranks(a, absolute), b, absolute)


def centred_ranks(a: torch.Tensor, absolute: bool = True) -> torch.Tensor:
    """(N, P) ranks of each map's pixels (of |a| with ``absolute``), ties averaged, minus
    their mean: one side of :func:`spearman`, computed once for a map compared often."""
    a = a.detach().flatten(1)
    r = _row_ranks(a.abs() if absolute else a).double()
    return r - r.mean(1, keepdim=True)


def spearman_to(ref: torch.Tensor, b: torch.Tensor, absolute: bool = True) -> torch.Tensor:
    """:func:`spearman` of maps ``b`` (N, H, W) against :func:`centred_ranks` ``ref``."""
    rb = centred_ranks(b, absolute).to(ref.device)
    den = (ref.square().sum(1) * rb.square().sum(1)).sqrt()
    rho = (ref * rb).sum(1) / den.clamp_min(torch.finfo(den.dtype).tiny)
    return torch.where(den > 0, rho, torch.full_like(rho, float("nan"))).float()


def _row_ranks(v: torch.Tensor) -> torch.Tensor:
    """1-based ranks of each row of (N, P), ties averaged (as :func:`_ranks`), all rows at
    once: within a row, a run of equal sorted values shares the mean of its positions."""
    n, p = v.shape
    sorted_v, order = v.sort(dim=1)
    new_group = torch.ones_like(sorted_v, dtype=torch.long)
    new_group[:, 1:] = (sorted_v[:, 1:] != sorted_v[:, :-1]).long()
    group = new_group.cumsum(1) - 1 + torch.arange(n, device=v.device)[:, None] * p  # unique id per row and run
    position = torch.arange(1, p + 1, device=v.device, dtype=v.dtype).expand(n, p)
    total = torch.zeros(n * p, device=v.device, dtype=v.dtype).index_add_(0, group.flatten(), position.flatten())
    count = torch.zeros(n * p, device=v.device, dtype=v.dtype).index_add_(0, group.flatten(),
                                                                           torch.ones_like(position).flatten())
    average = (total / count.clamp_min(1))[group]
    ranks = torch.empty_like(v)
    ranks.scatter_(1, order, average)
    return ranks


def _unit_scale(m: torch.Tensor, percentile: float = 99.0) -> torch.Tensor:
    flat = m.abs().flatten(1)
    top = torch.quantile(flat, percentile / 100, dim=1).clamp_min(torch.finfo(m.dtype).tiny)
    return (flat / top[:, None]).clamp(max=1).view_as(m)


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 7) -> torch.Tensor:
    """Structural similarity (Wang et al., 2004) of |a[i]| and |b[i]|, (N,).

    Each map is divided by its 99th percentile of |value| and clipped to [0, 1], as
    Adebayo et al. (2018) normalise before comparing; then SSIM with a ``window`` x
    ``window`` uniform window, K1 = 0.01, K2 = 0.03, data range 1 and sample covariances
    (scikit-image's defaults), averaged over the valid windows.
    """
    _check_pair(a, b)
    window = checks.integer(window, "window", low=3, high=min(a.shape[-2:]),
                            hint="an odd side of the square window, at most the map's")
    if window % 2 == 0:
        raise ValueError(f"window must be odd (a window centred on its pixel, as scikit-image's), got {window}")
    a, b = _unit_scale(a.double())[:, None], _unit_scale(b.double())[:, None]
    w = window * window

    def mean(t):
        return F.avg_pool2d(t, window, stride=1)

    mu_a, mu_b = mean(a), mean(b)
    cov = w / (w - 1)
    var_a = cov * (mean(a * a) - mu_a ** 2)
    var_b = cov * (mean(b * b) - mu_b ** 2)
    cov_ab = cov * (mean(a * b) - mu_a * mu_b)
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov_ab + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1).float()


@dataclass
class Agreement:
    """Mean Spearman rank correlation of |map| between methods: ``matrix[a, b]`` over
    images (``per_image`` (M, M, N))."""

    names: list
    matrix: torch.Tensor
    per_image: torch.Tensor


def agreement(maps: dict) -> Agreement:
    """Rank correlation between the (N, H, W) maps of several methods on the same images:
    where methods rank pixels alike, they agree on what matters ("convergence is
    evidence", in the chapter's words). Absolute values, as in the sanity check."""
    if not isinstance(maps, dict) or not maps:
        raise TypeError(f"maps must be a non-empty dict {{method name: (N, H, W) map}}, got {maps!r:.80}")
    shapes = {tuple(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__ for m in maps.values()}
    if len(shapes) > 1:
        raise ValueError(f"maps must all have one shape (N, H, W), got {sorted(map(str, shapes))}")
    for name, m in maps.items():
        checks.tensor(m, f"maps[{name!r}]", dim=3, shape_hint="(N, H, W)")
        checks.finite(m, f"maps[{name!r}]", cause="compare maps only once they are finite")
    names = list(maps)
    m = len(names)
    n = maps[names[0]].shape[0]
    per = torch.ones(m, m, n, device=maps[names[0]].device)
    for i in range(m):
        for j in range(i + 1, m):
            per[i, j] = per[j, i] = spearman(maps[names[i]], maps[names[j]])
    return Agreement(names, per.nanmean(2), per)
