"""Canonisation of timm Vision Transformers for LRP, on a light copy.

timm's ``Attention`` computes ``softmax(q k^T / sqrt(d)) v`` inside its ``forward`` (with
``F.scaled_dot_product_attention`` when ``fused_attn`` is on): no hook can reach the
softmax or the two products. The copy replaces each ``Attention`` with the same
computation written as modules (:class:`MatMul`, :class:`Softmax`) that carry rules; the
class token and position embeddings become one :class:`TokenEmbedding` layer, and the
model's forward is rebuilt from its parts (patch embedding, tokens, blocks, final norm,
pooling, head) by :class:`CanonicalViT`. The copy shares every parameter with the user's
model, which is never written to (``fused_attn`` included).

Only what is known is accepted: timm's ``VisionTransformer``, ``PatchEmbed``, ``Block``,
``Attention`` and ``Mlp`` (exact classes, no forward replaced on an instance) around
linear layers, LayerNorms, the activations of :data:`.transformer.ACTIVATIONS`, dropout,
drop-path and layer scale. Anything else (another attention or block class, an
attention-pooling head, a gated attention, a module with its own ``forward``) raises
:class:`~.canonize.UnsupportedLayerError` naming the module: never a silent partial rule.
Written against timm 1.0.31's ``Attention.forward``; the tests compare the copy's logits
with the model's (fused attention on and off) so that a timm release that changes it fails
there.
"""
from __future__ import annotations

import torch.nn as nn

from .canonize import UnsupportedLayerError
from .transformer import ACTIVATIONS, LAYER_NORMS

__all__ = ["MatMul", "Softmax", "TokenEmbedding", "CanonicalViT", "canonize_vit", "is_transformer"]


class MatMul(nn.Module):
    """``a @ b`` as a module, so that the product can carry an LRP rule."""

    def forward(self, a, b):
        return a @ b


class Softmax(nn.Module):
    """The attention softmax over the last dimension, as a module."""

    def forward(self, x):
        return x.softmax(dim=-1)


class _Attention(nn.Module):
    """timm's ``Attention`` (fused or not) written out: the same children and the same
    output, ``proj(norm(softmax(q k^T * scale) v))`` per head, with ``scores``,
    ``softmax`` and ``context`` as hookable modules."""

    def __init__(self, attn):
        super().__init__()
        self.num_heads, self.head_dim, self.scale = attn.num_heads, attn.head_dim, attn.scale
        self.qkv, self.q_norm, self.k_norm = attn.qkv, attn.q_norm, attn.k_norm
        self.scores, self.softmax, self.attn_drop, self.context = MatMul(), Softmax(), attn.attn_drop, MatMul()
        self.norm = getattr(attn, "norm", None) or nn.Identity()
        self.proj, self.proj_drop = attn.proj, attn.proj_drop

    def forward(self, x, attn_mask=None, is_causal=False):
        if attn_mask is not None or is_causal:
            raise UnsupportedLayerError("LRP through a ViT supports unmasked self-attention only "
                                        "(attn_mask=None, is_causal=False)")
        n, t, _ = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        a = self.attn_drop(self.softmax(self.scores(q * self.scale, k.transpose(-2, -1))))
        out = self.context(a, v).transpose(1, 2).reshape(n, t, self.num_heads * self.head_dim)
        return self.proj_drop(self.proj(self.norm(out)))


class TokenEmbedding(nn.Module):
    """timm's ``_pos_embed``: class (and register) tokens prepended, position embeddings
    added; patch tokens (N, P, D) -> tokens (N, prefix + P, D)."""

    def __init__(self, vit):
        super().__init__()
        object.__setattr__(self, "_vit", vit)  # not a child: its parameters stay the model's

    def forward(self, patches):
        return self._vit._pos_embed(patches)


class CanonicalViT(nn.Module):
    """A timm ``VisionTransformer``'s forward (``forward_features`` + ``forward_head``)
    rebuilt from its parts, every operation a module. ``lrp_stages`` names the blocks:
    the conservation audit reports relevance at their boundaries."""

    def __init__(self, vit):
        super().__init__()
        self.patch_embed, self.embed = vit.patch_embed, TokenEmbedding(vit)
        self.patch_drop, self.norm_pre = vit.patch_drop, vit.norm_pre
        self.blocks, self.norm = vit.blocks, vit.norm
        self.fc_norm, self.head_drop, self.head = vit.fc_norm, vit.head_drop, vit.head
        self.global_pool, self.num_prefix_tokens = vit.global_pool, vit.num_prefix_tokens
        self.include_prefix = bool(getattr(vit, "pool_include_prefix", False))
        self.lrp_stages = tuple(f"blocks.{i}" for i in range(len(vit.blocks)))

    def _pool(self, x):
        if self.global_pool == "token":
            return x[:, 0]
        x = x if self.include_prefix else x[:, self.num_prefix_tokens:]
        if self.global_pool == "avg":
            return x.mean(dim=1)
        if self.global_pool == "max":
            return x.amax(dim=1)
        return 0.5 * (x.amax(dim=1) + x.mean(dim=1))  # "avgmax"

    def forward(self, x):
        x = self.norm_pre(self.patch_drop(self.embed(self.patch_embed(x))))
        x = self.norm(self.blocks(x))
        return self.head(self.head_drop(self.fc_norm(self._pool(x))))


def _timm():
    from timm.layers import Attention, DropPath, LayerScale, Mlp, PatchDropout, PatchEmbed
    from timm.models.vision_transformer import Block, VisionTransformer

    containers = (VisionTransformer, PatchEmbed, Block, Mlp, Attention, nn.Sequential)
    leaves = (nn.Conv2d, nn.Linear, nn.Dropout, nn.Identity, DropPath, PatchDropout, LayerScale)
    return VisionTransformer, Block, Attention, containers, leaves


_TORCH_PARTS = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer, nn.LayerNorm)


def _transformer_parts(model: nn.Module):
    return [(n, m) for n, m in model.named_modules()
            if type(m).__module__.startswith("timm.") or isinstance(m, _TORCH_PARTS)]


def is_transformer(model: nn.Module) -> bool:
    """True when ``model`` holds transformer parts (a timm module, a PyTorch attention or
    transformer layer, a LayerNorm): such a model goes to :func:`canonize_vit`, which
    accepts what it knows and names anything else."""
    return bool(_transformer_parts(model))


def _unsupported(name, m, why):
    return UnsupportedLayerError(f"LRP cannot handle module '{name or '(model)'}' of type {type(m).__name__}: {why}")


def _check(model: nn.Module) -> None:
    try:
        vit_cls, block_cls, attn_cls, containers, leaves = _timm()
    except ImportError as err:
        raise UnsupportedLayerError(f"LRP through a transformer needs timm >= 1.0.16 ({err})") from err
    if isinstance(model, vit_cls) and type(model) is not vit_cls:
        raise _unsupported("", model, "a subclass of timm's VisionTransformer: LRP's transformer rules rebuild "
                           "timm's own forward and cannot see what this class changed")
    if type(model) is not vit_cls:
        name, part = next(((n, m) for n, m in _transformer_parts(model) if n), ("", model))
        raise _unsupported(name, part, f"LRP's transformer rules support timm's VisionTransformer models only, "
                           f"and this is part of a {type(model).__name__} (a wrapper, a subclass or another "
                           "architecture has a forward the rules cannot see)")
    for i, block in enumerate(model.blocks):
        if type(block) is not block_cls:
            raise _unsupported(f"blocks.{i}", block, "LRP's transformer rules know timm's Block only; "
                               "this block has its own forward")
    if getattr(model, "attn_pool", None) is not None or model.global_pool not in ("token", "avg", "max", "avgmax"):
        raise _unsupported("", model, f"pooling {model.global_pool!r} (attention pooling heads are not supported; "
                           "use global_pool='token' or 'avg')")
    known_leaves = leaves + LAYER_NORMS + ACTIVATIONS
    for name, m in model.named_modules():
        if "forward" in vars(m):
            raise _unsupported(name, m, "its forward was replaced on the instance")
        if list(m.children()):
            if type(m) not in containers:
                raise _unsupported(name, m, "LRP's transformer rules know timm's VisionTransformer, PatchEmbed, "
                                   "Block, Attention and Mlp only; this block has its own forward")
        elif type(m) not in known_leaves:
            raise _unsupported(name, m, "no LRP rule for it; supported are " +
                               ", ".join(t.__name__ for t in dict.fromkeys(known_leaves)))
        if type(m) is attn_cls:
            if getattr(m, "gate", None) is not None:
                raise _unsupported(name, m, "gated attention (an element-wise gate) has no LRP rule here")
            if not isinstance(m.qkv, nn.Linear):
                raise _unsupported(name, m, "attention without a fused qkv projection is not supported")
        if isinstance(m, nn.Conv2d) and name != "patch_embed.proj":
            raise _unsupported(name, m, "the only convolution supported in a ViT is the patch embedding")


def _copy_tree(model: nn.Module) -> nn.Module:
    """New module objects with the same parameters, buffers and plain attributes, and no
    hooks: what ``canonize``'s light copy makes, without ``deepcopy``'s walk through every
    attribute (4x faster on ViT-S/16, whose copy is made on every call)."""
    done = {}

    def clone(m):
        if id(m) in done:
            return done[id(m)]
        new = object.__new__(type(m))
        state = dict(vars(m))
        for key, value in state.items():
            if "hook" in key and isinstance(value, dict):
                state[key] = type(value)()  # the user's hooks stay on the user's model
        state["_parameters"], state["_buffers"] = dict(m._parameters), dict(m._buffers)
        state["_modules"] = type(m._modules)()
        new.__dict__.update(state)
        done[id(m)] = new
        for name, child in m._modules.items():
            new._modules[name] = None if child is None else clone(child)
        return new

    return clone(model)


def canonize_vit(model: nn.Module) -> CanonicalViT:
    """A copy of the timm ViT ``model`` (sharing its tensors) as explicit modules for LRP;
    see the module docstring. Raises :class:`UnsupportedLayerError` naming any module
    it does not know."""
    _check(model)
    attn_cls = _timm()[2]
    vit = _copy_tree(model)
    for block in vit.blocks:
        if type(block.attn) is attn_cls:
            block.attn = _Attention(block.attn)
    return CanonicalViT(vit)
