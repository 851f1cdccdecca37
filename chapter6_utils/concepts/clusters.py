"""SpRAy: spectral relevance analysis (Lapuschkin et al., 2019, "Unmasking Clever Hans
predictors and assessing what machines really learn").

The LRP maps of many predictions of one class are clustered: maps that put their
relevance in the same places fall into one cluster, so a strategy the model uses on a
part of the data (a ruler along one edge) shows as a cluster whose mean map lights up
there. No mask is used. Steps, as in the paper: positive relevance, pooled to a coarse
grid and normalised; a symmetric k-nearest-neighbour graph; the eigenvalues of its
normalised Laplacian, whose largest gap among the smallest (the eigengap) suggests how
many clusters the graph holds; k-means on the leading eigenvectors.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import _checks as checks

__all__ = ["Spray", "spray", "purity"]


@dataclass
class Spray:
    """What :func:`spray` returns. ``labels``: (N,) cluster of each map; ``k``: clusters;
    ``eigenvalues``: (max_k + 1,) the smallest eigenvalues of the normalised Laplacian;
    ``eigengap``: ``eigenvalues[k] - eigenvalues[k - 1]``, the gap that chose ``k``;
    ``mean_maps``: (k, H, W) each cluster's mean of the normalised positive maps;
    ``sizes``: (k,) maps per cluster."""
    labels: torch.Tensor
    k: int
    eigenvalues: torch.Tensor
    eigengap: float
    mean_maps: torch.Tensor
    sizes: torch.Tensor


def _kmeans(z, k, seed, restarts=10, iters=100):
    gen = torch.Generator().manual_seed(seed)
    best, best_cost = None, float("inf")
    for _ in range(restarts):
        # k-means++ seeding
        centres = [z[torch.randint(len(z), (1,), generator=gen)].squeeze(0)]
        for _ in range(1, k):
            d = torch.cdist(z, torch.stack(centres)).min(1).values ** 2
            centres.append(z[torch.multinomial(d / d.sum() if d.sum() > 0 else torch.ones_like(d), 1,
                                               generator=gen)].squeeze(0))
        c = torch.stack(centres)
        for _ in range(iters):
            lab = torch.cdist(z, c).argmin(1)
            new = torch.stack([z[lab == j].mean(0) if (lab == j).any() else c[j] for j in range(k)])
            if torch.allclose(new, c):
                break
            c = new
        cost = float(((z - c[lab]) ** 2).sum())
        if cost < best_cost:
            best, best_cost = lab, cost
    return best


def spray(maps: torch.Tensor, *, k: int | None = None, max_k: int = 8, size: int = 8,
          neighbours: int = 10, seed: int = 0) -> Spray:
    """Cluster relevance maps by where they put their positive relevance.

    Parameters
    ----------
    maps : torch.Tensor
        (N, H, W) or (N, C, H, W) relevance maps (colour summed), e.g. LRP maps of
        the predictions of one class; N >= max_k + 2.
    k : int, optional
        Clusters; None chooses it by the eigengap among 2 to ``max_k``.
    size : int, default 8
        Maps are average-pooled to ``size`` x ``size`` before comparing (the paper
        pools too: alignment of small details is not what a strategy is).
    neighbours : int, default 10
        Each map's nearest neighbours in the graph (Euclidean, normalised maps).
    seed : int, default 0
        For k-means' restarts.

    Returns
    -------
    Spray
        A :class:`Spray`.
    """
    if not isinstance(maps, torch.Tensor) or maps.dim() not in (3, 4) or not maps.is_floating_point():
        raise ValueError("maps must be a float tensor (N, H, W) or (N, C, H, W) of relevance maps")
    if maps.dim() == 4:
        maps = maps.sum(1)
    maps = maps.detach().cpu().double()
    if not torch.isfinite(maps).all():
        raise ValueError("maps hold non-finite values (NaN or inf); compute them again")
    n = maps.shape[0]
    max_k = checks.integer(max_k, "max_k", low=2, hint="the most clusters considered")
    size = checks.integer(size, "size", low=1, hint="the pooled grid's side")
    if n < max_k + 2:
        raise ValueError(f"{n} maps are too few for up to {max_k} clusters; give at least {max_k + 2}")
    neighbours = checks.integer(neighbours, "neighbours", low=1, high=max(1, n - 1),
                                hint="nearest neighbours per map, fewer than the maps")
    if k is not None:
        k = checks.integer(k, "k", low=2, high=max_k, hint="clusters, at most max_k")
    pos = maps.clamp(min=0)
    norm = pos.flatten(1).norm(dim=1)
    if bool((norm == 0).any()):
        raise ValueError(f"{int((norm == 0).sum())} maps have no positive relevance; leave them out "
                         "(they explain nothing for this class)")
    pooled = F.adaptive_avg_pool2d(pos[:, None], size).flatten(1)
    pooled = pooled / pooled.norm(dim=1, keepdim=True)
    dist = torch.cdist(pooled, pooled)
    near = dist.topk(neighbours + 1, largest=False).indices[:, 1:]
    w = torch.zeros(n, n, dtype=torch.float64)
    w.scatter_(1, near, 1.0)
    w = ((w + w.T) > 0).double()  # symmetric: i and j are linked if either is a neighbour of the other
    d = w.sum(1)
    lap = torch.eye(n, dtype=torch.float64) - w / torch.sqrt(d[:, None] * d[None, :])
    values, vectors = torch.linalg.eigh(lap)
    values = values[:max_k + 1].clamp(min=0)
    gaps = values[1:] - values[:-1]  # gaps[j] = lambda_{j+1} - lambda_j: j + 1 clusters
    if k is None:
        k = int(gaps[1:].argmax()) + 2  # at least two clusters
    emb = vectors[:, :k]
    emb = emb / emb.norm(dim=1, keepdim=True).clamp(min=1e-12)
    labels = _kmeans(emb.float(), k, seed)
    unit = pos / norm[:, None, None]
    means = torch.stack([unit[labels == j].mean(0) for j in range(k)]).float()
    sizes = torch.bincount(labels, minlength=k)
    return Spray(labels, k, values.float(), float(gaps[k - 1]), means, sizes)


def purity(labels: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Per cluster, the share of its members for which ``truth`` (N,) bool holds (e.g.
    ``LesionSet.has_ruler``): (k,)."""
    if labels.shape != truth.shape or truth.dtype != torch.bool:
        raise ValueError("labels and truth must have one entry per map; truth bool")
    k = int(labels.max()) + 1
    return torch.stack([truth[labels == j].float().mean() for j in range(k)])
