"""Attention in Vision Transformers and attention rollout (chapter 6, "Attention in Vision Transformers").

A ViT's attention weights are read, not attributed: nothing here takes a class, and the
maps say where the CLS token gathered information from, not why the model decided.

* :func:`attention_maps`: the softmax attention of every block, (N, L, heads, T, T),
  equation 12 (book/equations.md) (Dosovitskiy et al., 2020).
* :func:`cls_attention`: one layer's CLS row without the CLS column, on the patch grid.
* :func:`rollout`: attention rollout, equation 13 (book/equations.md) (Abnar & Zuidema, 2020), (N, h, w).
* :func:`upsample_to_image`: a patch-grid map at image resolution, for overlays.
* :func:`rollout_map`: ``(model, x) -> (N, H, W)`` rollout at x's resolution, for
  comparisons with attribution methods.
* :func:`cls_attention_map`: one block's raw CLS attention at x's resolution, (N, H, W).
* Class-specific, beyond attention alone: :func:`attention_gradients` (the attention and
  the gradient of ``S_c`` with respect to it) and :func:`gradient_rollout` /
  :func:`gradient_rollout_map`, Chefer et al.'s (2021b) gradient-weighted rollout.
* :func:`token_layout`: the model's prefix tokens (CLS, registers, distillation token)
  and the rows its head reads (``readout``), which :func:`rollout` and
  :func:`cls_attention` take.

Which row is explained. A ViT's head reads the CLS token (``global_pool="token"``), the
mean of CLS and distillation token (DeiT's distilled models), or the mean of the patch
tokens (``global_pool="avg"``, no CLS token needed). The map is rollout's (or one layer's
attention's) row of what the head reads, ``readout``: ``"token"`` (row 0, the CLS token),
``"avg"`` (the mean of the patch rows: the average of the patches' rollouts is the
rollout of their average, because rollout is linear in the row it starts from) or a tuple
of prefix-token rows averaged (``(0, 1)`` for CLS and distillation token). The columns of
every prefix token (CLS, registers, distillation) are dropped: the map covers the patches.
Heads that read tokens otherwise (``global_pool="max"``, ``"avgmax"``, attention pooling
``"map"``, or none) have no such row and are refused.

Why not the chapter's hook on ``block.attn.attn_drop``: timm's ``Attention`` computes with
``F.scaled_dot_product_attention`` when ``attn.fused_attn`` is True (the default), a path
that never calls ``attn_drop``, so that hook records nothing. :func:`attention_maps` turns
the fused path off for its own forward pass (under :func:`~chapter6_utils._guard.model_guard`,
so every flag is back afterwards, also on error), hooks ``attn_drop``, and checks that
every attention module reported exactly once.
"""
from __future__ import annotations

import math
import numbers

import torch
import torch.nn as nn

from . import _checks as checks
from ._guard import attribution_method, check_target, class_scores, guarded
from ._hooks import record_outputs, upsample

__all__ = ["attention_maps", "cls_attention", "rollout", "upsample_to_image", "rollout_map",
           "attention_modules", "token_layout", "HEAD_FUSIONS", "READOUTS"]

HEAD_FUSIONS = ("mean", "max", "min")
#: The named readouts of :func:`rollout` and :func:`cls_attention` (a tuple of prefix rows works too).
READOUTS = ("token", "avg", "all")


def attention_modules(model: nn.Module) -> list:
    """The timm ``Attention`` modules of ``model`` in forward order (one per block); a
    clear ``TypeError`` when the model is not a timm Vision Transformer."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    from timm.layers import Attention

    mods = [m for m in model.modules() if type(m) is Attention]
    if not mods:
        raise TypeError(f"{type(model).__name__} has no timm Attention modules: attention maps need a "
                        "timm VisionTransformer (e.g. models.load('lesion_vit') or "
                        "models.load('vit_small_patch16_224')); for a CNN use a gradient method "
                        "such as chapter6_utils.saliency.saliency_map")
    return mods


@guarded(x="x", grad=False)
def attention_maps(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The softmax attention of every block, equation 12 (book/equations.md): ``A_h = softmax(Q_h K_h^T / sqrt(d_k))``.

    Dosovitskiy et al. (2020), "An image is worth 16x16 words". One forward pass in eval
    mode without gradients; the fused attention path is off during that pass and
    ``fused_attn`` (like every other flag, hook and mode) is as it was afterwards, even on
    error. Works the same with fused attention on or off, for a batch as for one image.

    Parameters
    ----------
    model : torch.nn.Module
        A timm VisionTransformer taking ImageNet-normalised input (``lesion_vit``,
        ``vit_small_patch16_224``, ``vit_small_patch8_224.dino``).
    x : torch.Tensor
        (N, 3, H, W) normalised input.

    Returns
    -------
    torch.Tensor
        (N, L, heads, T, T) float tensor on x's device; ``[i, l, h, q, k]`` is how much
        token ``q`` attends to token ``k`` in head ``h`` of block ``l``; T counts the CLS
        token (index 0) and the patches; every row sums to 1.
    """
    mods = attention_modules(model)
    for m in mods:
        m.fused_attn = False  # the explicit path: softmax, then attn_drop (identity in eval)
    with record_outputs([m.attn_drop for m in mods], detach=True, append=True) as seen:
        model(x)
    captured = [a for i in range(len(mods)) for a in seen.get(i, [])]
    if len(captured) != len(mods):
        raise RuntimeError(f"captured {len(captured)} attention matrices from {len(mods)} attention modules; "
                           "this timm version computes attention differently (check Attention.forward)")
    return torch.stack(captured, dim=1)


def _check_attn(attn) -> None:
    if not isinstance(attn, torch.Tensor) or attn.dim() != 5 or attn.shape[-1] != attn.shape[-2] \
            or 0 in attn.shape:
        shape = tuple(attn.shape) if isinstance(attn, torch.Tensor) else type(attn).__name__
        raise ValueError(f"attn has shape {shape}; expected (N, L, heads, T, T) from attention_maps(model, x)")
    checks.tensor(attn, "attn", floating=True)
    # A NaN row would otherwise be zeroed by the renormalisation and vanish from the map.
    checks.finite(attn, "attn", cause="attention weights are softmax outputs; NaN or inf come from non-finite "
                                      "weights or input of the model")
    if bool((attn < 0).any()):
        raise ValueError("attn has negative values; attention weights are softmax outputs in [0, 1] "
                         "(pass attention_maps(model, x))")


def _grid(tokens: int, num_prefix_tokens: int) -> tuple[int, int]:
    num_prefix_tokens = checks.integer(num_prefix_tokens, "num_prefix_tokens", low=0, high=tokens - 1,
                                       hint="tokens before the patches: CLS, registers, distillation token; "
                                            "the model's num_prefix_tokens")
    patches = tokens - num_prefix_tokens
    side = math.isqrt(patches)
    if side * side != patches:
        raise ValueError(f"{tokens} tokens minus {num_prefix_tokens} prefix token(s) is not a square patch grid; "
                         "set num_prefix_tokens to the model's (model.num_prefix_tokens)")
    return side, side


def _readout_rows(readout, tokens: int, num_prefix_tokens: int):
    """The token rows the head reads, as a slice or list, from ``readout``."""
    if isinstance(readout, str):
        checks.choice(readout, "readout", READOUTS + ("a tuple of prefix-token rows",))
        if readout == "avg":
            return slice(num_prefix_tokens, tokens)  # the patch tokens
        if readout == "all":
            return slice(0, tokens)  # average pooling that includes the prefix tokens
        if num_prefix_tokens < 1:
            raise ValueError("readout='token' reads the CLS token (row 0), but num_prefix_tokens=0: the model has "
                             "no CLS token. For an average-pooled ViT (global_pool='avg') use readout='avg', or "
                             "take both from token_layout(model)")
        return [0]
    if not isinstance(readout, (tuple, list)) or not readout:
        raise TypeError(f"readout must be one of {READOUTS} or a non-empty tuple of prefix-token rows, got {readout!r}")
    rows = [checks.integer(r, "readout row", low=0, high=num_prefix_tokens - 1,
                           hint=f"a prefix token; the model has {num_prefix_tokens}") for r in readout]
    return rows


def token_layout(model: nn.Module) -> tuple[int, object]:
    """``(num_prefix_tokens, readout)`` of a timm Vision Transformer: the tokens before the
    patches (CLS, registers, distillation token) and the rows its head reads, for
    :func:`rollout` and :func:`cls_attention`.

    ``global_pool="token"``: ``"token"`` (the CLS row); a distilled DeiT (``dist_token``):
    ``(0, 1)``, the CLS and distillation rows averaged as its two heads are; ``"avg"``: the
    mean of the patch rows (``"all"``, every row, when ``pool_include_prefix``). Raises ``ValueError``
    for heads that read no fixed average of tokens (``"max"``, ``"avgmax"``, attention
    pooling ``"map"``, none).
    """
    checks.instance(model, "model", nn.Module, "a timm VisionTransformer")
    prefix = int(getattr(model, "num_prefix_tokens", 1))
    pool = getattr(model, "global_pool", "token")
    name = type(model).__name__
    if getattr(model, "attn_pool", None) is not None or pool == "map":
        raise ValueError(f"{name} pools its tokens with an attention-pooling layer (global_pool='map'), whose "
                         "attention attention_maps does not capture: rollout has no row to follow for it")
    if getattr(model, "dist_token", None) is not None:
        return prefix, (0, 1)
    if pool == "token":
        if getattr(model, "cls_token", True) is None:
            raise ValueError(f"{name} has global_pool='token' but no CLS token")
        return prefix, "token"
    if pool == "avg":
        return prefix, "all" if getattr(model, "pool_include_prefix", False) else "avg"
    raise ValueError(f"{name} has global_pool={pool!r}: its head reads no fixed average of tokens (a maximum "
                     "picks a token per feature, and '' returns every token), so rollout has no row to explain; "
                     "rollout handles 'token' (CLS), 'avg' (patch mean) and DeiT's distillation token")


def _fuse(a: torch.Tensor, head_fusion: str, dim: int) -> torch.Tensor:
    if head_fusion == "mean":
        return a.mean(dim)
    if head_fusion == "max":
        return a.amax(dim)
    if head_fusion == "min":
        return a.amin(dim)
    raise ValueError(f"head_fusion must be one of {HEAD_FUSIONS}, got {head_fusion!r}")


def cls_attention(attn: torch.Tensor, layer: int, head=None, num_prefix_tokens: int = 1,
                  readout="token") -> torch.Tensor:
    """The CLS token's attention to the patches at one layer, on the patch grid.

    Row 0 of ``A_h`` (equation 12 (book/equations.md)) without the prefix columns (CLS, registers,
    distillation token), reshaped to the (h, w) patch grid; the values are the raw
    attention weights (with the prefix columns dropped, they sum to 1). For a ViT whose
    head reads other tokens, ``readout`` picks the row (see the module docstring and
    :func:`token_layout`): ``"avg"`` averages the patch rows, a tuple averages those
    prefix rows.

    Parameters
    ----------
    attn : torch.Tensor
        (N, L, heads, T, T) from :func:`attention_maps`.
    layer : int
        Block index, negative counts from the last (-1: the last block).
    head : int or {"mean", "max", "min"}, optional
        An int (one head) -> (N, h, w); None (every head) -> (N, heads, h, w);
        "mean", "max" or "min" (heads fused) -> (N, h, w).
    num_prefix_tokens : int, default 1
        Tokens before the patches (1 for the CLS token alone).
    readout : {"token", "avg", "all"} or tuple of int, default "token"
        ``"token"`` (row 0), ``"avg"``, ``"all"`` or a tuple of prefix rows.
    """
    _check_attn(attn)
    n_layers, n_heads, tokens = attn.shape[1], attn.shape[2], attn.shape[-1]
    layer = checks.integer(layer, "layer", low=-n_layers, high=n_layers - 1, hint="a block index")
    h, w = _grid(tokens, num_prefix_tokens)
    rows = _readout_rows(readout, tokens, num_prefix_tokens)
    row = attn[:, layer][:, :, rows].mean(2)[..., num_prefix_tokens:]  # (N, heads, h*w)
    if head is None:
        return row.reshape(attn.shape[0], n_heads, h, w)
    if isinstance(head, str):
        return _fuse(row, head, 1).reshape(attn.shape[0], h, w)
    if isinstance(head, bool) or not isinstance(head, numbers.Integral) or not -n_heads <= head < n_heads:
        raise ValueError(f"head must be None, one of {HEAD_FUSIONS} or an int in [-{n_heads}, {n_heads}), got {head!r}")
    return row[:, head].reshape(attn.shape[0], h, w)


def _alphas(alpha, n_layers: int, like: torch.Tensor) -> torch.Tensor:
    if isinstance(alpha, bool) or isinstance(alpha, str):
        raise TypeError(f"alpha must be a float in [0, 1] or one per layer, got {alpha!r}")
    try:
        a = torch.as_tensor(alpha, dtype=like.dtype).flatten()
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"alpha must be a float in [0, 1] or one per layer, got {alpha!r}") from err
    if a.numel() == 1:
        a = a.expand(n_layers)
    if a.numel() != n_layers:
        raise ValueError(f"alpha has {a.numel()} values for {n_layers} layers; give one float or one per layer")
    if not bool(((a >= 0) & (a <= 1)).all()):  # NaN fails both comparisons
        raise ValueError(f"alpha must lie in [0, 1] (weight of the attention against the residual identity), got {alpha!r}")  # noqa: E501
    return a.to(like.device)


def rollout(attn: torch.Tensor, head_fusion: str = "mean", discard_ratio: float = 0.0, alpha=0.5,
            num_prefix_tokens: int = 1, readout="token") -> torch.Tensor:
    """Attention rollout, equation 13 (book/equations.md) (Abnar & Zuidema, 2020, "Quantifying attention flow
    in transformers").

    Per layer l: fuse the heads (``head_fusion``: mean, max or min over heads); set the
    lowest ``discard_ratio`` of the fused T x T weights to zero, chosen among all weights
    but the self-weights of the readout rows (for the CLS readout the CLS self-weight
    ``[0, 0]``, as in vit-explain), which are never dropped (``floor(discard_ratio * T *
    T)`` weights at most, and never all of a row's); mix in the residual stream,
    ``A_hat_l = alpha_l A_l + (1 - alpha_l) I``; renormalise each row to sum to 1. Then
    ``R_1 = A_hat_1`` and ``R_l = A_hat_l R_{l-1}``. The map is the readout row of
    ``R_L`` (row CLS; see the module docstring for ViTs without one) without the prefix
    columns (CLS, registers, distillation token).

    ``alpha=0.5`` is the chapter's equal weighting of attention and residual path;
    Exercise 4's per-layer weighting is ``alpha`` with one value per layer (alpha = 1:
    attention only; alpha = 0: the identity, a map of zeros for a prefix readout and of
    1 / patches for ``"avg"``). The rows of a max- or min-fused matrix do not sum to 1
    before the mixing: as in equation 13 (book/equations.md) the identity is added to them as they are, and
    only the sum is renormalised. With alpha = 1 and discarding, a row can lose all its
    weights: it stays zero (no NaN).

    Parameters
    ----------
    attn : torch.Tensor
        (N, L, heads, T, T) from :func:`attention_maps`; finite and non-negative
        (a NaN row raises instead of vanishing in the renormalisation).
    head_fusion : {"mean", "max", "min"}, default "mean"
        "mean", "max" or "min".
    discard_ratio : float, default 0.0
        In [0, 1): the fraction of each layer's fused weights set to zero.
    alpha : float or sequence of float, default 0.5
        A float in [0, 1], or L of them (one per layer, first layer first).
    num_prefix_tokens : int, default 1
        Tokens before the patches (1 for the CLS token alone; CLS and
        4 registers: 5); :func:`token_layout` reads it off a model.
    readout : {"token", "avg", "all"} or tuple of int, default "token"
        The row(s) explained: ``"token"`` (row 0, the CLS token), ``"avg"``
        (mean of the patch rows, for ``global_pool="avg"``), ``"all"`` (mean of all
        rows) or a tuple of prefix rows averaged (``(0, 1)``: CLS and distillation).

    Returns
    -------
    torch.Tensor
        (N, h, w) non-negative maps on attn's device. Each map plus the rollout's weight on
        the prefix tokens (the dropped columns: CLS, registers, distillation token) sums to
        1, whenever no row was emptied (alpha < 1, or no discarding). Batches give the
        maps of their images one at a time.
    """
    _check_attn(attn)
    checks.choice(head_fusion, "head_fusion", HEAD_FUSIONS)
    discard_ratio = checks.real(discard_ratio, "discard_ratio", low=0.0, high=1.0, high_open=True,
                                hint="0.9 drops the lowest 90% of the weights")
    n, n_layers, tokens = attn.shape[0], attn.shape[1], attn.shape[-1]
    h, w = _grid(tokens, num_prefix_tokens)
    rows = _readout_rows(readout, tokens, num_prefix_tokens)
    alphas = _alphas(alpha, n_layers, attn)
    fused = _fuse(attn, head_fusion, 2)  # (N, L, T, T)
    kept = torch.arange(tokens)[rows] if isinstance(rows, slice) else torch.tensor(rows)
    kept = (kept * (tokens + 1)).unique()  # flat indices of the readout rows' self-weights
    k = min(int(discard_ratio * tokens * tokens), tokens * tokens - len(kept))
    if k > 0:
        # Keeping the T*T - k largest is the same as dropping the k lowest, and cheaper
        # at the usual high ratios (topk of 10% rather than of 90%).
        flat = fused.flatten(2)
        ranked = flat.clone()
        ranked[..., kept.to(flat.device)] = float("inf")  # the readout's self-weights are always kept
        keep = ranked.topk(tokens * tokens - k, dim=-1).indices
        fused = torch.zeros_like(flat).scatter(-1, keep, flat.gather(-1, keep)).view_as(fused)
    eye = torch.eye(tokens, dtype=attn.dtype, device=attn.device)
    a = alphas.view(1, n_layers, 1, 1)
    mixed = a * fused + (1 - a) * eye
    total = mixed.sum(-1, keepdim=True)
    # Only alpha = 1 with discarding can leave a row with nothing: it stays zero (that
    # token passes nothing on) rather than becoming NaN. (attn is finite: checked above.)
    mixed = torch.where(total > 0, mixed / total.clamp_min(torch.finfo(mixed.dtype).tiny), 0.0)
    # Only the readout row of R_L = A_hat_L ... A_hat_1 is needed (the mean of several rows
    # is the row of their mean): multiplying that row through the layers from the top costs
    # L vector-matrix products (T^2 each), not L matrix products (T^3 each).
    row = mixed[:, -1, rows].mean(1, keepdim=True)  # (N, 1, T)
    for layer in range(n_layers - 2, -1, -1):
        row = row @ mixed[:, layer]
    return row[:, 0, num_prefix_tokens:].reshape(n, h, w)


def upsample_to_image(m: torch.Tensor, image_size, mode: str = "bilinear") -> torch.Tensor:
    """A patch-grid map (h, w) or (N, h, w) at image resolution, (N, H, W) (or (H, W)).

    ``image_size``: an int or (H, W). ``mode="bilinear"`` (smooth, for overlays; never
    leaves the range of the map's values) or ``"nearest"`` (each patch's weight on all its
    pixels: when the patches tile the image, mask shares are then exactly patch-weighted).
    The package's one upsampler, :func:`chapter6_utils._hooks.upsample`.
    """
    return upsample(m, image_size, mode)


def rollout_map(model: nn.Module, x: torch.Tensor, target=None, *, head_fusion: str = "mean",
                discard_ratio: float = 0.0, alpha=0.5, mode: str = "bilinear") -> torch.Tensor:
    """Attention rollout (equation 13 (book/equations.md)) of ``model`` on ``x`` at x's resolution, (N, H, W).

    :func:`attention_maps`, then :func:`rollout` of the rows the model's head reads, with
    its prefix tokens dropped (both from :func:`token_layout`: the CLS row, CLS and
    distillation rows of a distilled DeiT, the patch mean of an average-pooled ViT), then
    :func:`upsample_to_image`: the shape every attribution method returns, for
    comparisons and evaluation. The model is left exactly as found (``fused_attn``
    included, also on error).

    ``target`` is accepted for the ``method(model, x, target)`` interface and checked,
    but attention does not depend on the class: every target gives the same map. This is
    a map of where information flowed to the token(s) the head reads, not an attribution.
    """
    if target is not None:
        check_target(target, x.shape[0] if isinstance(x, torch.Tensor) and x.dim() == 4 else 1)
    mods = attention_modules(model)  # a clear error for a model that is not a ViT, before reading its layout
    # every option checked before the forward pass
    checks.choice(mode, "mode", ("bilinear", "nearest"))
    checks.choice(head_fusion, "head_fusion", HEAD_FUSIONS)
    checks.real(discard_ratio, "discard_ratio", low=0.0, high=1.0, high_open=True)
    _alphas(alpha, len(mods), torch.zeros(()))
    prefix, readout = token_layout(model)  # refuses heads rollout cannot follow
    attn = attention_maps(model, x)
    maps = rollout(attn, head_fusion=head_fusion, discard_ratio=discard_ratio, alpha=alpha,
                   num_prefix_tokens=prefix, readout=readout)
    return upsample_to_image(maps, x.shape[-2:], mode=mode)


# --------------------------------------------------------------------------- beyond raw attention
def cls_attention_map(model: nn.Module, x: torch.Tensor, target=None, *, layer: int = -1, head="mean",
                      mode: str = "bilinear") -> torch.Tensor:
    """One block's raw CLS attention (row 0 of equation 12 (book/equations.md) without the prefix columns,
    heads fused by ``head``: "mean", "max", "min" or an int) at x's resolution, (N, H, W).

    Like :func:`rollout_map`, ``target`` is accepted for the ``method(model, x, target)``
    interface and checked, but attention does not depend on it."""
    if target is not None:
        check_target(target, x.shape[0] if isinstance(x, torch.Tensor) and x.dim() == 4 else 1)
    if head is None:
        raise ValueError("head must be 'mean', 'max', 'min' or an int: a map has one head or a fusion of them")
    prefix, readout = token_layout(model)  # the rows the head reads; refuses heads with none
    attn = attention_maps(model, x)
    maps = cls_attention(attn, layer, head, num_prefix_tokens=prefix, readout=readout)
    return upsample_to_image(maps, x.shape[-2:], mode=mode)


@attribution_method
def attention_gradients(model: nn.Module, x: torch.Tensor, target) -> tuple[torch.Tensor, torch.Tensor]:
    """The softmax attention of every block and the gradient of the class score ``S_c``
    (pre-softmax) with respect to it, each (N, L, heads, T, T).

    One forward pass with the fused path off (flags, hooks and modes as they were
    afterwards, also on error) and one backward pass. ``target``: an int or N indices."""
    mods = attention_modules(model)
    for m in mods:
        m.fused_attn = False  # the explicit path, whose softmax output attn_drop receives
    x0 = x.detach().requires_grad_(True)  # so that the attention carries a graph
    with record_outputs([m.attn_drop for m in mods], append=True) as seen:
        # a non-leaf copy: a model whose first op is in place stays differentiable
        scores = class_scores(model(x0.clone()), target, int(target.max()))
    captured = [a for i in range(len(mods)) for a in seen.get(i, [])]
    if len(captured) != len(mods):
        raise RuntimeError(f"captured {len(captured)} attention matrices from {len(mods)} attention modules; "
                           "this timm version computes attention differently (check Attention.forward)")
    grads = torch.autograd.grad(scores.sum(), captured)
    return torch.stack([a.detach() for a in captured], dim=1), torch.stack(grads, dim=1)


def gradient_rollout(attn: torch.Tensor, grads: torch.Tensor, num_prefix_tokens: int = 1,
                     readout="token") -> torch.Tensor:
    """Chefer et al.'s (2021b) gradient-weighted attention rollout, class-specific.

    Per block l, the heads' attention weighted by the gradient of the class score and
    kept where positive, ``A_bar_l = mean_h (dS_c/dA_l,h * A_l,h)^+``; then ``R_0 = I``
    and ``R_l = R_(l-1) + A_bar_l R_(l-1)`` (the identity carries the residual stream).
    The map is the row of ``R_L`` the head reads (``readout``, as for :func:`rollout`:
    row CLS for a CLS-token ViT) without the prefix columns. Chefer, Gur and Wolf
    (2021), "Generic attention-model explainability for interpreting bi-modal and
    encoder-decoder transformers", ICCV, rules 5 and 6; as in their code for ViTs, the
    rows of ``R`` are not renormalised (rollout, equation 13 (book/equations.md), renormalises).

    Parameters
    ----------
    attn, grads : torch.Tensor
        (N, L, heads, T, T) from :func:`attention_gradients`.
    num_prefix_tokens : int, default 1
        Tokens before the patches (1 for the CLS token).
    readout : {"token", "avg", "all"} or tuple of int, default "token"
        The row(s) explained, as for :func:`rollout` (:func:`token_layout`).

    Returns
    -------
    torch.Tensor
        (N, h, w) non-negative maps on the patch grid; target-dependent through ``grads``.
    """
    _check_attn(attn)
    if not isinstance(grads, torch.Tensor) or grads.shape != attn.shape:
        shape = tuple(grads.shape) if isinstance(grads, torch.Tensor) else type(grads).__name__
        raise ValueError(f"grads has shape {shape}; expected attn's {tuple(attn.shape)} (attention_gradients)")
    n, n_layers, tokens = attn.shape[0], attn.shape[1], attn.shape[-1]
    h, w = _grid(tokens, num_prefix_tokens)
    rows = _readout_rows(readout, tokens, num_prefix_tokens)
    weighted = (grads * attn).clamp(min=0).mean(dim=2)  # (N, L, T, T)
    r = torch.eye(tokens, dtype=attn.dtype, device=attn.device).expand(n, tokens, tokens)
    for layer in range(n_layers):
        r = r + weighted[:, layer] @ r
    out = r[:, rows, num_prefix_tokens:].mean(1).reshape(n, h, w)
    if not bool(torch.isfinite(out).all()):
        raise FloatingPointError("gradient rollout produced non-finite values (the attention or its gradient "
                                 "holds NaN or inf: check the model's output for this input)")
    return out


def gradient_rollout_map(model: nn.Module, x: torch.Tensor, target, *, mode: str = "bilinear") -> torch.Tensor:
    """:func:`attention_gradients`, then :func:`gradient_rollout`, then
    :func:`upsample_to_image`: Chefer et al.'s (2021b) class-specific map at x's
    resolution, (N, H, W), non-negative. Unlike :func:`rollout_map`, ``target`` matters."""
    prefix, readout = token_layout(model)  # the rows the head reads; refuses heads with none
    attn, grads = attention_gradients(model, x, target)
    return upsample_to_image(gradient_rollout(attn, grads, prefix, readout), x.shape[-2:], mode=mode)


__all__ += ["cls_attention_map", "attention_gradients", "gradient_rollout", "gradient_rollout_map"]
