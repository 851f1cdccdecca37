"""The randomisation tests as the field runs them now, every cell a mean over images and
randomisation seeds with a 95% interval, and a verdict from a stated rule.

Tests (:data:`TESTS`; each compares a method's map on the trained model with its map on
a changed one, Spearman rank correlation of |map| unless said otherwise):

* ``"cascading"``: Adebayo et al.'s (2018) top-down cascade, equation 15
  (book/equations.md), read after the *top half* of the layers is re-initialised. (Read
  after every layer is random, as the chapter's rule did, any map that depends on the
  first convolution passes: the rule could not fail.)
* ``"bottom_up"``: the cascade from the input up, read after the bottom half, the order
  Hedström et al. (2023) recommend.
* ``"independent"``: the output layer alone re-initialised (Adebayo et al., 2018): does the
  map depend on the layer that makes the class?
* ``"emprt"``: Hedström et al.'s (2023) efficient MPRT: the relative rise of the map's
  complexity (entropy of a 100-bin histogram of its values) once every layer is random,
  ``(H_random - H_trained) / H_trained``; a map that loses its structure rises.
* ``"smprt"``: Hedström et al.'s (2023) smooth MPRT: maps averaged over ``n_noise`` noisy
  copies of the input before comparing, after the top half is re-initialised (the noise
  that makes gradients speckle is averaged out of both sides first).
* ``"data"``: Adebayo et al.'s data randomisation: the same architecture trained on
  shuffled labels (one model: the interval is over images only).

All the re-initialisations of one seed share one copy of the model, and every method runs
on each copy in turn. Beside the tests, :attr:`SanityReport.edge` holds the random-weight
lesson: how close each method's map on the fully random network is to the model-free edge
map of the input.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .. import _checks as checks
from .._guard import check_input, check_target
from .controls import Estimate, bootstrap, edge_map, verdict
from .randomization import _layers, _reinitialize
from .registry import _resolve_methods
from .similarity import centred_ranks, spearman, spearman_to

__all__ = ["TESTS", "Test", "SanityReport", "sanity_checks", "map_entropy"]


@dataclass(frozen=True)
class Test:
    """A test's statistic and the rule that turns its interval into a verdict."""

    name: str
    statistic: str
    threshold: float
    better: str  # "below" or "above" the threshold

    @property
    def rule(self) -> str:
        side = "<" if self.better == "below" else ">"
        return f"pass if the 95% interval of {self.statistic} lies {side} {self.threshold:g}"


TESTS: dict[str, Test] = {t.name: t for t in [
    Test("cascading", "ρ after the top half of the layers is re-initialised (output first)", 0.5, "below"),
    Test("bottom_up", "ρ after the bottom half of the layers is re-initialised (input first)", 0.5, "below"),
    Test("independent", "ρ with the output layer alone re-initialised", 0.5, "below"),
    Test("emprt", "the relative rise of the map's histogram entropy, all layers random (eMPRT)", 0.0, "above"),
    Test("smprt", "ρ of noise-averaged maps after the top half is re-initialised (sMPRT)", 0.5, "below"),
    Test("data", "ρ with the same architecture trained on shuffled labels", 0.5, "below"),
]}


def map_entropy(m: torch.Tensor, n_bins: int = 100) -> torch.Tensor:
    """Entropy (nats) of a ``n_bins``-bin histogram of each map's values, (N,), bins
    spanning each map's own range (as ``numpy.histogram`` and Quantus's
    ``discrete_entropy`` do). A constant map has entropy 0."""
    checks.tensor(m, "m", dim=3, shape_hint="(N, H, W)")
    out = []
    for v in m.detach().flatten(1).double().cpu():
        lo, hi = float(v.min()), float(v.max())
        if hi == lo:
            lo, hi = lo - 0.5, hi + 0.5  # numpy's range for a constant array: one full bin
        p = torch.histc(v, bins=n_bins, min=lo, max=hi)
        p = p[p > 0] / p.sum()
        out.append(-(p * p.log()).sum())
    return torch.stack(out)


@dataclass
class SanityReport:
    """:func:`sanity_checks`'s results.

    Attributes
    ----------
    methods : list
        The method (and control) names, in order; ``labels`` their names in tables.
    layers : list
        The randomised layers, input first.
    values : dict
        ``values[test][method]``: (S, N) per seed and image, or (N,) for ``"data"``.
    estimates, verdicts : dict
        ``[test][method]``: :class:`Estimate` and its verdict.
    edge, edge_trained : dict
        ``[method]``: Spearman ρ of the map on the fully random network
        (an :class:`Estimate` over seeds and images) and on the trained network (over
        images) with the input's edge map: the random-weight lesson.
    curve : dict
        ``[method]``: (K + 1, S, N) ρ after 0..K cascading steps (``curve=True``; S the
        seeds drawn, ``curve_seeds`` or all).
    trained, random : dict
        ``[method]``: maps (N, H, W) of the trained model and (S, N, H, W)
        of the fully random one.
    """

    methods: list
    labels: dict
    layers: list
    values: dict = field(default_factory=dict)
    estimates: dict = field(default_factory=dict)
    verdicts: dict = field(default_factory=dict)
    edge: dict = field(default_factory=dict)
    edge_trained: dict = field(default_factory=dict)
    curve: dict = field(default_factory=dict)
    trained: dict = field(default_factory=dict)
    random: dict = field(default_factory=dict)

    def __str__(self):
        tests = list(self.estimates)
        head = f"{'method':<26}" + "".join(f"{t:>30}" for t in tests)
        lines = [head, "-" * len(head)]
        for m in self.methods:
            cells = "".join(f"{format(self.estimates[t][m], '.2f')} {self.verdicts[t][m][:4]:<4}".rjust(30)
                            for t in tests)
            lines.append(f"{self.labels[m][:25]:<26}{cells}")
        return "\n".join(lines)

    _repr_pretty_ = lambda self, p, cycle: p.text(str(self))  # noqa: E731  (IPython display)


def _noisy(x: torch.Tensor, n_noise: int, noise: float) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(12_345)  # the same noisy copies for every model and seed
    scale = noise * float(x.max() - x.min())
    return [x + (torch.randn(x.shape, generator=gen) * scale).to(x) for _ in range(n_noise)]


def sanity_checks(model: nn.Module, methods, x: torch.Tensor, target, *, seeds=(0, 1, 2), tests=None,
                  shuffled_model: nn.Module | None = None, curve: bool = False, curve_seeds: int | None = None,
                  n_noise: int = 3, noise: float = 0.1, options=None, n_boot: int = 1000) -> SanityReport:
    """Run the randomisation tests of :data:`TESTS` for ``methods`` (registry names,
    controls such as ``"edge"``, or Methods) on ``x``.

    ``model`` is never modified: each seed re-initialises a copy.

    Parameters
    ----------
    x, target
        (N, C, H, W) normalised images (N >= 32 for an interval) and the class.
    seeds : sequence of int, default (0, 1, 2)
        Re-initialisation draws (at least 3); layer j of seed s gets the same
        weights in every test (as in :func:`randomized_models`).
    tests : str or list of str, optional
        Names from :data:`TESTS` (default: all; ``"data"`` needs ``shuffled_model``).
    curve : bool, default False
        Also compute ρ after every cascading step (for the similarity curves).
    curve_seeds : int, optional
        Draw the curve for the first ``curve_seeds`` seeds only (default: all). The
        curve is a picture; the tests read their own steps for every seed either way,
        and each seed's curve costs K - 2 extra passes of every method.
    n_noise, noise : int, float, default 3, 0.1
        sMPRT's noisy copies and their std, as a share of x's range.
    """
    chosen, names, options = _resolve_methods(methods, options)
    explicit = tests is not None
    tests = list(TESTS) if tests is None else ([tests] if isinstance(tests, str) else list(tests))
    for t in tests:
        if t not in TESTS:
            raise ValueError(f"unknown test {t!r}; tests: {', '.join(TESTS)}")
    if "data" in tests and shuffled_model is None:
        if explicit:
            raise ValueError("the 'data' test needs shuffled_model (models.load('lesion_cnn_shuffled'))")
        tests = [t for t in tests if t != "data"]  # by default, the tests that need nothing more
    if isinstance(seeds, int) or not isinstance(seeds, (list, tuple, range)) or not seeds:
        raise TypeError(f"seeds must be a list of re-initialisation seeds (at least 3), got {seeds!r}")
    seeds = [checks.integer(s, "seeds", low=0, high=2 ** 48, hint="re-initialisation draws") for s in seeds]
    if len(seeds) < 3:
        raise ValueError(f"seeds holds {len(seeds)} randomisation seeds; an interval needs at least 3")
    n_noise = checks.integer(n_noise, "n_noise", low=1, hint="sMPRT's noisy copies of the input")
    noise = checks.real(noise, "noise", low=0.0, low_open=True, hint="sMPRT's noise std, a share of x's range")
    check_input(model, x)
    target = check_target(target, x.shape[0], device=x.device)
    layers = _layers(model)
    if len(layers) < 2:
        raise ValueError(f"the model has {len(layers)} layer(s) with parameters; the randomisation tests need at "
                         "least 2 (see evaluation.randomization_layers)")
    if curve_seeds is not None:
        curve_seeds = checks.integer(curve_seeds, "curve_seeds", low=1, high=len(seeds),
                                     hint="seeds the similarity curve is drawn for")
    k, half = len(layers), len(layers) // 2
    top = list(range(k - 1, k - 1 - half, -1))

    def run(net, inputs=x):
        return {m.name: m(net, inputs, target, **options.get(m.name, {})).detach() for m in chosen}

    def smooth(net):
        runs = [run(net, xn) for xn in _noisy(x, n_noise, noise)]
        return {n: torch.stack([r[n] for r in runs]).mean(0) for n in names}

    report = SanityReport(names, {m.name: m.label or m.name for m in chosen}, [layer.name for layer in layers])
    trained = run(model)
    report.trained = trained
    smooth_trained = smooth(model) if "smprt" in tests else None
    ranked_smooth = {n: centred_ranks(m) for n, m in smooth_trained.items()} if smooth_trained else None
    rho = {t: {n: [] for n in names} for t in tests}
    curves = {n: [] for n in names}
    random_maps = {n: [] for n in names}
    edges = edge_map(model, x, target)
    edge_ranks = centred_ranks(edges)
    edge_rho = {n: [] for n in names}

    work = copy.deepcopy(model).eval()
    work_layers = _layers(work)
    state = {key: v.clone() for key, v in work.state_dict().items()}

    def randomised(idx, s):
        """The trained weights with the layers ``idx`` re-drawn from randomisation seed ``s``."""
        work.load_state_dict(state)
        for j in idx:
            _reinitialize(work_layers[j], s * 10_007 + j)
        return work

    ranked = {n: centred_ranks(trained[n]) for n in names}  # the trained side of every comparison, ranked once

    def sim(maps, ref=None):
        ref = ranked if ref is None else ref
        return {n: spearman_to(ref[n], maps[n]) for n in names}

    for si, s in enumerate(seeds):
        steps = []
        on_curve = curve and (curve_seeds is None or si < curve_seeds)
        if on_curve:  # every cascading step, output first; steps `half` and `k` serve the tests
            for i in range(1, k + 1):
                maps_i = run(randomised(range(k - 1, k - 1 - i, -1), s))
                steps.append(sim(maps_i))
                if i == half:
                    at_half = steps[-1]
            full_maps = maps_i
        else:
            at_half = sim(run(randomised(top, s))) if "cascading" in tests else None
            full_maps = run(randomised(range(k), s))
        for n in names:
            if on_curve:
                curves[n].append(torch.stack([torch.ones(x.shape[0])] + [st[n].cpu() for st in steps]))
            random_maps[n].append(full_maps[n].cpu())
            edge_rho[n].append(spearman_to(edge_ranks, full_maps[n]).cpu())
        if "cascading" in tests:
            for n in names:
                rho["cascading"][n].append(at_half[n].cpu())
        if "emprt" in tests:
            for n in names:
                h0, h1 = map_entropy(trained[n]), map_entropy(full_maps[n])
                rho["emprt"][n].append(torch.where(h0 > 0, (h1 - h0) / h0, torch.full_like(h0, float("nan"))))
        if "bottom_up" in tests:
            r = sim(run(randomised(range(half), s)))
            for n in names:
                rho["bottom_up"][n].append(r[n].cpu())
        if "independent" in tests:
            r = sim(run(randomised([k - 1], s)))
            for n in names:
                rho["independent"][n].append(r[n].cpu())
        if "smprt" in tests:
            r = sim(smooth(randomised(top, s)), ranked_smooth)
            for n in names:
                rho["smprt"][n].append(r[n].cpu())
    work.load_state_dict(state)
    if "data" in tests:
        r = sim(run(shuffled_model))
        for n in names:
            rho["data"][n] = r[n].cpu()

    for t in tests:
        report.values[t] = {n: (v if isinstance(v, torch.Tensor) else torch.stack(v)) for n, v in rho[t].items()}
        report.estimates[t] = {n: bootstrap(v, n_boot=n_boot) for n, v in report.values[t].items()}
        report.verdicts[t] = {n: verdict(e, TESTS[t].threshold, TESTS[t].better) for n, e in
                              report.estimates[t].items()}
    report.edge = {n: bootstrap(torch.stack(v), n_boot=n_boot) for n, v in edge_rho.items()}
    report.edge_trained = {n: bootstrap(spearman(edges, trained[n]).cpu(), n_boot=n_boot) for n in names}
    report.random = {n: torch.stack(v) for n, v in random_maps.items()}
    if curve:
        report.curve = {n: torch.stack(v, 1) for n, v in curves.items()}
    return report


def estimate_of(report: SanityReport, test: str, method: str) -> Estimate:
    """``report.estimates[test][method]`` with errors that name what is missing."""
    if test not in report.estimates:
        raise ValueError(f"test {test!r} was not run; run: {', '.join(report.estimates)}")
    if method not in report.estimates[test]:
        raise ValueError(f"method {method!r} was not run; run: {', '.join(report.methods)}")
    return report.estimates[test][method]
