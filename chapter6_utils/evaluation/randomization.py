"""Adebayo et al.'s (2018) sanity checks: model-parameter randomisation (equation 15 (book/equations.md))
and data randomisation."""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn

from .. import _checks as checks
from .._guard import check_input, check_target
from .registry import _resolve_methods, get_method, is_vit
from .similarity import spearman, ssim

__all__ = ["randomization_layers", "randomized_models", "model_randomization", "randomization_sweep",
           "RandomizationResult", "data_randomization"]


# --------------------------------------------------------------------------- randomisation
@dataclass(frozen=True)
class _Layer:
    name: str
    module: nn.Module
    own_only: bool = False  # only the module's own parameters (a ViT's tokens), not its children's


def randomization_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The layers :func:`model_randomization` re-initialises, input first, as (name, module).

    A layer is a module with parameters of its own (a convolution, a linear or a
    normalisation layer). In a ViT each transformer block counts as one layer and the
    model's own parameters (class token, position embedding) as one more, "(embeddings)",
    at the input end."""
    return [(layer.name, layer.module) for layer in _layers(model)]


def _layers(model: nn.Module) -> list[_Layer]:
    checks.instance(model, "model", nn.Module, "a torch.nn.Module")
    vit = is_vit(model)
    blocks = {id(b) for b in model.blocks} if vit else set()
    inside = {id(m) for b in model.blocks for m in b.modules()} if vit else set()
    layers = []
    if next(model.parameters(recurse=False), None) is not None:
        layers.append(_Layer("(embeddings)" if vit else "(model)", model, own_only=True))
    for name, mod in model.named_modules():
        if mod is model:
            continue
        if id(mod) in blocks:
            layers.append(_Layer(name, mod))
        elif id(mod) not in inside and next(mod.parameters(recurse=False), None) is not None:
            layers.append(_Layer(name, mod))
    return layers


def _reinitialize(layer: _Layer, seed: int) -> None:
    # Fresh values are drawn on the CPU from their own seed and copied in: a seed gives
    # the same weights on every device, and the caller's random state is left alone.
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        if layer.own_only:
            for p in layer.module.parameters(recurse=False):
                p.copy_(torch.randn(p.shape) * 0.02)  # timm's draw for tokens and embeddings
            return
        fresh = copy.deepcopy(layer.module).to("cpu")
        done = set()
        for sub in fresh.modules():  # each module's own initialisation scheme
            if callable(getattr(sub, "reset_parameters", None)):
                sub.reset_parameters()
                done.update(id(p) for p in sub.parameters(recurse=False))
        for p in fresh.parameters():
            if id(p) not in done:  # parameters no reset_parameters covers (timm's layer scale...)
                p.copy_(torch.randn(p.shape) * 0.02)
        layer.module.load_state_dict(fresh.state_dict())


def randomized_models(model: nn.Module, order: str = "cascading", seed: int = 0):
    """Yield ``(layer_name, randomised_copy)`` for each step of the sanity check, from the
    output down (equation 15 (book/equations.md)). ``"cascading"``: step k has the top k layers re-initialised;
    ``"independent"``: step k has only the k-th layer from the top re-initialised. Layer j
    always gets the same fresh weights for a given ``seed`` (whatever the order). The copy
    is one object re-used between steps (evaluation mode); ``model`` is never touched."""
    checks.choice(order, "order", ("cascading", "independent"))
    seed = checks.integer(seed, "seed", low=0, high=2 ** 48, hint="the re-initialisation draw")
    work = copy.deepcopy(model).eval()
    layers = _layers(work)
    trained = {k: v.clone() for k, v in work.state_dict().items()} if order == "independent" else None
    for j in reversed(range(len(layers))):
        if trained is not None:
            work.load_state_dict(trained)
        _reinitialize(layers[j], seed * 10_007 + j)
        yield layers[j].name, work


@dataclass
class RandomizationResult:
    """Maps of one method along a sanity check.

    Attributes
    ----------
    method, order : str
        What was run.
    layers : list
        ``["trained", <top layer>, ...]``: row k of the tensors below is the model
        after the first k re-initialisations (cascading) or with layer k alone
        re-initialised (independent).
    maps : torch.Tensor
        (K + 1, N, H, W), row 0 the trained model's maps.
    spearman, ssim : torch.Tensor
        (K + 1, N), each map against row 0 (row 0 is 1 by definition).
    """

    method: str
    order: str
    layers: list
    maps: torch.Tensor
    spearman: torch.Tensor
    ssim: torch.Tensor

    def final(self, metric: str = "spearman") -> torch.Tensor:
        """(N,) similarity after the last step (full randomisation for cascading)."""
        return getattr(self, checks.choice(metric, "metric", ("spearman", "ssim")))[-1]


def _result(name, order, layers, maps):
    maps = torch.stack(maps)
    ref = maps[0]
    rho = torch.stack([spearman(ref, m) for m in maps])
    sim = torch.stack([ssim(ref, m) for m in maps])
    return RandomizationResult(name, order, layers, maps, rho, sim)


def randomization_sweep(model, methods, x, target, order: str = "cascading", seed: int = 0,
                        options=None) -> dict[str, RandomizationResult]:
    """:func:`model_randomization` for several methods, sharing each randomised model
    between them (one copy of the model, re-initialised layer by layer)."""
    chosen, names, options = _resolve_methods(methods, options)
    checks.choice(order, "order", ("cascading", "independent"))
    seed = checks.integer(seed, "seed", low=0, high=2 ** 48, hint="the re-initialisation draw")
    check_input(model, x)
    target = check_target(target, x.shape[0], device=x.device)

    def run(net):
        return {m.name: m(net, x, target, **options.get(m.name, {})) for m in chosen}

    steps, maps = ["trained"], [run(model)]
    for layer, randomized in randomized_models(model, order, seed):
        steps.append(layer)
        maps.append(run(randomized))
    return {n: _result(n, order, steps, [m[n] for m in maps]) for n in names}


def model_randomization(model, method, x, target, order: str = "cascading", seed: int = 0,
                        **options) -> RandomizationResult:
    """Adebayo et al.'s (2018) model-parameter randomisation test, equation 15 (book/equations.md).

    Re-initialises the layers of a copy of ``model`` (see :func:`randomization_layers`)
    from the output towards the input with each module's own initialisation scheme,
    ``order="cascading"`` (cumulatively) or ``"independent"`` (one layer at a time),
    recomputes ``method``'s (N, H, W) map after each step and compares it with the trained
    model's: Spearman rank correlation of absolute values (:func:`spearman`) and SSIM
    (:func:`ssim`). A method that passes gives maps that drift away from the trained ones
    as the model loses what it learned. ``model`` itself is never modified.

    Parameters
    ----------
    method : str or Method
        A registry name or :class:`Method`; ``options`` go to it.
    x, target
        As for the method, (N, C, H, W) normalised and int or (N,).
    seed : int, default 0
        The re-initialisation draw (layer j gets the same weights in both orders).
    """
    m = get_method(method)
    m = dataclasses.replace(m, defaults={**m.defaults, **options})
    return randomization_sweep(model, [m], x, target, order, seed)[m.name]


def data_randomization(model, shuffled_model, method, x, target, **options) -> RandomizationResult:
    """Adebayo et al.'s (2018) data randomisation test: ``method``'s maps of ``model``
    against those of the same architecture trained on permuted labels
    (``models.load("lesion_cnn_shuffled")``), as a :class:`RandomizationResult` with two
    rows (``layers = ["trained", "shuffled labels"]``). Maps that stay similar do not
    depend on the relation between images and labels the model learned."""
    method = get_method(method)
    maps = [method(model, x, target, **options), method(shuffled_model, x, target, **options)]
    return _result(method.name, "data", ["trained", "shuffled labels"], maps)
