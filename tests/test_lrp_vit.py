"""LRP through timm Vision Transformers (chapter6_utils.lrp.transformer, .vit): agreement
with an independent float64 reference written from the papers' equations, per-block
conservation, the model left as found, batches, fused attention, unsupported blocks."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Attention
from timm.models.vision_transformer import Block, VisionTransformer

from chapter6_utils import data, lrp, models, synthetic


def rel(a, b):
    return float((a - b).norm() / b.norm())


def tiny_vit(seed=0, bias=True, depth=2):
    """A 2-block ViT in float64 (16x16 input, 4x4 patches: 16 patches + CLS, width 12,
    3 heads) with every parameter random, so that biases, LayerNorm affines, the class
    token and the position embeddings all play a role."""
    torch.manual_seed(seed)
    vit = VisionTransformer(img_size=16, patch_size=4, num_classes=3, embed_dim=12, depth=depth, num_heads=3,
                            mlp_ratio=2.0, qkv_bias=bias).double().eval()
    with torch.no_grad():
        for name, p in vit.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p) if bias else torch.zeros_like(p))
            elif name.endswith("norm1.weight") or name.endswith("norm2.weight") or name == "norm.weight":
                p.copy_(1 + 0.3 * torch.randn_like(p))
            else:
                p.copy_(0.4 * torch.randn_like(p))
    for p in vit.parameters():
        p.requires_grad_(False)
    return vit


# --------------------------------------------------------------------------- the reference
# Written from the equations of Bach et al. (2015; epsilon rule), Montavon et al. (2017;
# z^B), Ali et al. (2022; LN-rule, attention held constant) and Achtibat et al. (2024;
# uniform rule, softmax rule, identity rule), one explicit relevance matrix per layer:
# R_in[i] = sum_j C[i, j] R_out[j]. It reads the model's parameters and nothing else of
# the package; one image at a time.
def stab(z, eps):
    return z + eps * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


def eps_linear(x, w, b, r_out, eps):
    """Epsilon rule for z = W x + b on one token (or a stack of tokens, (T, in))."""
    z = x @ w.T + (b if b is not None else 0)
    contrib = x[..., :, None] * w.T[None]                  # (T, in, out): x_i w_ji
    return (contrib / stab(z, eps)[..., None, :] * r_out[..., None, :]).sum(-1)


def ln_rule(x, ln, r_out, eps):
    """LayerNorm with the std held constant: a linear layer y = W x + b per token,
    W[j, i] = (delta_ij - 1/D) w_j / std; epsilon rule on it."""
    d = x.shape[-1]
    std = torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + ln.eps)  # (T, 1)
    centre = torch.eye(d, dtype=x.dtype) - 1.0 / d
    out = []
    for t in range(x.shape[0]):
        w = centre.T * ln.weight[:, None] / std[t]           # (out j, in i)
        out.append(eps_linear(x[t:t + 1], w, ln.bias, r_out[t:t + 1], eps)[0])
    return torch.stack(out)


def layer_norm(x, ln):
    return F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)


def product_rule(a, b, r_out, eps, share_a, share_b):
    """Uniform rule for z = a @ b (a: (T, K), b: (K, S)): each term a_tk b_ks gets
    a_tk b_ks / stab(z_ts) R_ts; share_a of it goes to a_tk, share_b to b_ks."""
    z = a @ b
    terms = a[:, :, None] * b[None] / stab(z, eps)[:, None, :] * r_out[:, None, :]  # (T, K, S)
    return share_a * terms.sum(2), share_b * terms.sum(0)


def softmax_rule(s, r_out):
    """AttnLRP's softmax rule per row: R_in = s_in * (R - A * sum R), A = softmax(s_in)."""
    a = s.softmax(-1)
    return s * (r_out - a * r_out.sum(-1, keepdim=True))


def reference(vit, x, target, variant, box, eps=1e-6, stab_box=1e-6):
    """Input relevance (3, H, W) of one image under AttnLRP or CP-LRP, with z^B (``box``)
    or the epsilon rule on the patch embedding."""
    p = vit.patch_embed.patch_size[0]
    c, h, w = x.shape
    grid = h // p
    pix = x.reshape(c, grid, p, grid, p).permute(1, 3, 0, 2, 4).reshape(grid * grid, c * p * p)  # (P, 48)
    wconv = vit.patch_embed.proj.weight.reshape(vit.embed_dim, -1)
    low, high = (b.expand(1, c, h, w)[0] for b in data.pixel_bounds(dtype=x.dtype))
    lowp = low.reshape(c, grid, p, grid, p).permute(1, 3, 0, 2, 4).reshape(grid * grid, -1)
    highp = high.reshape(c, grid, p, grid, p).permute(1, 3, 0, 2, 4).reshape(grid * grid, -1)
    emb = pix @ wconv.T + vit.patch_embed.proj.bias
    tokens = torch.cat([vit.cls_token[0], emb]) + vit.pos_embed[0]
    # forward, keeping what the backward pass needs
    cache, xt = [], tokens
    for blk in vit.blocks:
        at, heads, dh = blk.attn, blk.attn.num_heads, blk.attn.head_dim
        h1 = layer_norm(xt, blk.norm1)
        qkv = h1 @ at.qkv.weight.T + (at.qkv.bias if at.qkv.bias is not None else 0)
        q, k, v = qkv.reshape(-1, 3, heads, dh).permute(1, 2, 0, 3)   # (heads, T, dh) each
        qs = q * at.scale
        s = qs @ k.transpose(-1, -2)
        a = s.softmax(-1)
        o = a @ v
        merged = o.permute(1, 0, 2).reshape(-1, heads * dh)
        att = merged @ at.proj.weight.T + at.proj.bias
        x1 = xt + att
        h2 = layer_norm(x1, blk.norm2)
        f1 = h2 @ blk.mlp.fc1.weight.T + blk.mlp.fc1.bias
        g = F.gelu(f1)
        f2 = g @ blk.mlp.fc2.weight.T + blk.mlp.fc2.bias
        cache.append((xt, h1, qs, k, v, s, a, merged, x1, att, h2, f1, g, f2))
        xt = x1 + f2
    final = layer_norm(xt, vit.norm)
    logits = final[0] @ vit.head.weight.T + vit.head.bias
    # backward
    r_logits = torch.zeros_like(logits)
    r_logits[target] = logits[target]
    r_cls = eps_linear(final[0:1], vit.head.weight, vit.head.bias, r_logits[None], eps)[0]
    r_final = torch.zeros_like(final)
    r_final[0] = r_cls
    r = ln_rule(xt, vit.norm, r_final, eps)
    for blk, (xt, h1, qs, k, v, s, a, merged, x1, att, h2, _f1, g, f2) in zip(reversed(vit.blocks), reversed(cache)):
        at, heads, dh = blk.attn, blk.attn.num_heads, blk.attn.head_dim
        out = x1 + f2                                        # residual: LRP-0, proportional split
        r_x1, r_f2 = x1 / out * r, f2 / out * r
        r_g = eps_linear(g, blk.mlp.fc2.weight, blk.mlp.fc2.bias, r_f2, eps)
        r_f1 = r_g                                           # identity rule through GELU
        r_h2 = eps_linear(h2, blk.mlp.fc1.weight, blk.mlp.fc1.bias, r_f1, eps)
        r_x1 = r_x1 + ln_rule(x1, blk.norm2, r_h2, eps)
        r_xt, r_att = xt / x1 * r_x1, att / x1 * r_x1
        r_merged = eps_linear(merged, at.proj.weight, at.proj.bias, r_att, eps)
        r_o = r_merged.reshape(-1, heads, dh).permute(1, 0, 2)
        r_q, r_k, r_v = torch.zeros_like(qs), torch.zeros_like(k), torch.zeros_like(v)
        for hd in range(heads):
            if variant == "attnlrp":
                r_a, r_v[hd] = product_rule(a[hd], v[hd], r_o[hd], eps, 0.5, 0.5)
                r_s = softmax_rule(s[hd], r_a)
                r_q[hd], r_kt = product_rule(qs[hd], k[hd].T, r_s, eps, 0.5, 0.5)
                r_k[hd] = r_kt.T
            else:                                            # CP-LRP: A constant, all to v
                _, r_v[hd] = product_rule(a[hd], v[hd], r_o[hd], eps, 0.0, 1.0)
        r_qkv = torch.stack([r_q, r_k, r_v]).permute(2, 0, 1, 3).reshape(xt.shape[0], -1)
        r_h1 = eps_linear(h1, at.qkv.weight, at.qkv.bias, r_qkv, eps)
        r = r_xt + ln_rule(xt, blk.norm1, r_h1, eps)
    r_emb = (emb / tokens[1:]) * r[1:]                        # CLS and positions absorb the rest
    if not box:
        r_pix = eps_linear(pix, wconv, vit.patch_embed.proj.bias, r_emb, eps)
        return r_pix.reshape(grid, grid, c, p, p).permute(2, 0, 3, 1, 4).reshape(c, h, w), logits
    z = pix @ wconv.T - lowp @ wconv.clamp(min=0).T - highp @ wconv.clamp(max=0).T
    contrib = (pix[:, :, None] * wconv.T[None] - lowp[:, :, None] * wconv.clamp(min=0).T[None]
               - highp[:, :, None] * wconv.clamp(max=0).T[None])
    r_pix = (contrib / stab(z, stab_box)[:, None, :] * r_emb[:, None, :]).sum(-1)  # (P, 48)
    return r_pix.reshape(grid, grid, c, p, p).permute(2, 0, 3, 1, 4).reshape(c, h, w), logits


@pytest.mark.parametrize("box", [False, True])
@pytest.mark.parametrize("variant", ["attnlrp", "cplrp"])
def test_agrees_with_the_float64_reference(variant, box):
    vit = tiny_vit()
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    targets = [0, 2, 1]
    composite = lrp.attn_lrp(box=box) if variant == "attnlrp" else lrp.cp_lrp(box=box)
    ours = lrp.lrp(vit, x, targets, composite=composite)
    refs = []
    for i, t in enumerate(targets):
        r, logits = reference(vit, x[i], t, variant, box)
        assert torch.allclose(logits, vit(x[i:i + 1])[0], atol=1e-10)  # the reference's forward is the model's
        refs.append(r)
    err = rel(ours, torch.stack(refs))
    assert err < 1e-6, err


# --------------------------------------------------------------------------- conservation
def test_cp_lrp_conserves_per_block_and_attnlrp_leaks_at_the_softmax():
    vit = tiny_vit(seed=1, bias=False)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    cp = lrp.conservation(vit, x, [1, 2], composite=lrp.cp_lrp(epsilon=0.0))
    blocks = [r for r in cp.rows if r["type"] == "Block"]
    assert [r["layer"] for r in blocks] == ["blocks.0", "blocks.1"]
    for r in blocks:
        assert abs(r["r_out"] - r["r_in"]) < 1e-6 * abs(r["r_out"]), r
        assert r["bias"] == 0 and abs(r["stabiliser"]) < 1e-12
    attn = lrp.conservation(vit, x, [1, 2], composite=lrp.attn_lrp(epsilon=0.0))
    leaks = [r["leak"] for r in attn.rows if r["type"] == "Block"]
    softmax = [r["leak"] for r in attn.layers if r["type"] == "Softmax"]
    assert all(abs(v) > 1e-6 for v in leaks)                 # the softmax rule does not conserve
    assert sum(leaks) == pytest.approx(sum(softmax), rel=1e-9, abs=1e-12)  # and nothing else leaks
    # score = input + absorbed + leaked, to rounding, for both
    for table in (cp, attn):
        absorbed = sum(r["bias"] + r["stabiliser"] + r["leak"] for r in table.rows)
        assert abs(table.score - table.input - absorbed) < 1e-9 * abs(table.score)
    assert "Block" in str(attn) and "Softmax" in str(attn.detail())


@pytest.mark.bundled("lesion_vit")
@pytest.mark.parametrize("make", [lrp.attn_lrp, lrp.cp_lrp])
def test_audit_closes_on_lesion_vit(make):
    model = models.load("lesion_vit")
    x = data.normalize(synthetic.make_lesions(3, "biased", seed=3).images)
    table = lrp.conservation(model, x, 1, composite=make())
    names = [r["layer"] for r in table.rows]
    assert names[:2] == ["patch_embed.proj", "embed"] and names[-2:] == ["norm", "head"]
    assert sum(r["type"] == "Block" for r in table.rows) == len(model.blocks)
    scale = abs(table.score) + abs(table.input)
    rest = table.score - table.input - sum(r["bias"] + r["stabiliser"] + r["leak"] for r in table.rows)
    assert abs(rest) < 1e-5 * scale
    assert abs(table.score - float(model(x)[:, 1].sum().detach())) < 1e-5 * scale
    assert abs(table.input - float(lrp.lrp(model, x, 1, composite=make()).sum())) < 1e-5 * scale
    for r in table.layers:  # every layer but the softmax conserves up to what it absorbed
        if r["type"] != "Softmax":
            assert abs(r["leak"]) < 1e-4 * scale, r


# --------------------------------------------------------------------------- the canonised copy
@pytest.mark.parametrize("name", ["lesion_vit", "lesion_vit_seed2"])
def test_canonised_copy_computes_the_models_logits_fused_or_not(name):
    model = models.load(name)
    x = data.normalize(synthetic.make_lesions(4, "biased", seed=0).images)
    net = lrp.canonize(model, x)
    assert isinstance(net, lrp.vit.CanonicalViT) and net.head.weight is model.head.weight
    for fused in (True, False):
        for b in model.blocks:
            b.attn.fused_attn = fused
        with torch.no_grad():
            assert torch.allclose(net(x), model(x), atol=1e-5)
    assert all(type(b.attn) is Attention for b in model.blocks)  # the model keeps its own modules


def state(model):
    return ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()],
            {(i, k, v) for i, m in enumerate(model.modules()) for k, v in vars(m).items()
             if type(v) in (bool, int, float, str)},
            {(i, k, tuple(v)) for i, m in enumerate(model.modules()) for k, v in vars(m).items()
             if "hooks" in k and isinstance(v, dict)},
            [t.detach().clone() for t in list(model.parameters()) + list(model.buffers())])


@pytest.mark.bundled("lesion_vit")
def test_model_left_as_found_batch_equals_singles_fused_equals_unfused():
    model = models.load("lesion_vit")
    model.train()
    model.blocks[0].attn.fused_attn = False
    model.register_forward_hook(lambda *a: None)
    x = data.normalize(synthetic.make_lesions(3, "biased", seed=2).images)
    x_before = x.clone()
    before = state(model)
    targets = [0, 1, 1]
    batch = lrp.lrp(model, x, targets)
    lrp.conservation(model, x, 1, composite=lrp.cp_lrp())
    lrp.lrp(model, x, 1, return_layers=True)
    after = state(model)
    assert before[:4] == after[:4] and all(torch.equal(a, b) for a, b in zip(before[4], after[4]))
    assert torch.equal(x, x_before)
    singles = torch.cat([lrp.lrp(model, x[i:i + 1], t) for i, t in enumerate(targets)])
    assert torch.allclose(batch, singles, rtol=1e-4, atol=1e-7)
    for b in model.blocks:
        b.attn.fused_attn = not b.attn.fused_attn
    assert torch.allclose(lrp.lrp(model, x, targets), batch, rtol=1e-4, atol=1e-7)


@pytest.mark.bundled("lesion_vit")
def test_lrp_is_class_specific_and_return_layers_on_a_vit():
    model = models.load("lesion_vit")
    x = data.normalize(synthetic.make_lesions(2, "biased", seed=4).images)
    benign, malignant = lrp.lrp(model, x, 0), lrp.lrp(model, x, 1)
    assert rel(benign, malignant) > 0.1
    r, layers = lrp.lrp(model, x, 1, return_layers=True)
    assert torch.allclose(r, malignant)
    assert isinstance(layers["blocks.0.attn.scores"], tuple)  # q and k^T: two shapes
    assert layers["blocks.0.attn.softmax"].shape == (2, 4, 65, 65)
    assert layers["output"].shape == (2, 2)


def test_imagenet_vit_at_224_runs_and_its_audit_closes():
    model = models.load("vit_small_patch16_224", pretrained=False)
    torch.manual_seed(0)
    x = torch.randn(1, 3, 224, 224)
    r = lrp.lrp(model, x, 258)
    assert r.shape == x.shape and torch.isfinite(r).all()
    table = lrp.conservation(model, x, 258)
    rest = table.score - table.input - sum(row["bias"] + row["stabiliser"] + row["leak"] for row in table.rows)
    assert abs(rest) < 1e-4 * (abs(table.score) + abs(table.input))
    assert abs(table.input - float(r.sum())) < 1e-4 * (abs(table.score) + abs(table.input))


# --------------------------------------------------------------------------- what it refuses
class CustomBlock(Block):
    def forward(self, x, attn_mask=None, is_causal=False):
        return x + self.mlp(self.norm2(x)) * 2


class CustomAttention(nn.Module):
    def __init__(self, attn):
        super().__init__()
        self.qkv, self.proj = attn.qkv, attn.proj

    def forward(self, x, attn_mask=None, is_causal=False):
        return self.proj(self.qkv(x)[..., :x.shape[-1]].tanh())


def _custom_block():
    vit = tiny_vit()
    vit.blocks[1] = CustomBlock(12, 3)
    return vit


def _custom_attention():
    vit = tiny_vit()
    vit.blocks[0].attn = CustomAttention(vit.blocks[0].attn)
    return vit


def _instance_forward():
    vit = tiny_vit()
    vit.blocks[0].mlp.forward = lambda x: x
    return vit


def _unknown_activation():
    vit = tiny_vit()
    vit.blocks[1].mlp.act = nn.Hardswish()
    return vit


def _wrapped():
    return nn.Sequential(nn.Identity(), tiny_vit())


def _torch_transformer():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 4, 4)
            self.layer = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            t = self.conv(x).flatten(2).transpose(1, 2)
            return self.head(self.layer(t).mean(1))
    return Net().double().eval()


@pytest.mark.parametrize("make, message", [
    (_custom_block, "'blocks.1' of type CustomBlock"),
    (_custom_attention, "'blocks.0.attn' of type CustomAttention"),
    (_instance_forward, "'blocks.0.mlp' of type Mlp: its forward was replaced"),
    (_unknown_activation, "'blocks.1.mlp.act' of type Hardswish"),
    (_wrapped, "'1' of type VisionTransformer"),
    (_torch_transformer, "'layer' of type TransformerEncoderLayer"),
])
def test_an_unknown_block_raises_naming_it(make, message):
    model = make()
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    with pytest.raises(lrp.UnsupportedLayerError, match=message):
        lrp.lrp(model, x, 0)
    with pytest.raises(lrp.UnsupportedLayerError, match=message):
        lrp.conservation(model, x, 0)


def test_attention_pooling_and_composite_mismatches_raise():
    torch.manual_seed(0)
    pooled = VisionTransformer(img_size=16, patch_size=4, num_classes=3, embed_dim=12, depth=1, num_heads=3,
                               global_pool="map", class_token=False).eval()
    with pytest.raises(lrp.UnsupportedLayerError, match="attn_pool|AttentionPoolLatent|pooling"):
        lrp.lrp(pooled, torch.randn(1, 3, 16, 16), 0)
    vit = tiny_vit()
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    with pytest.raises(TypeError, match="attn_lrp"):
        lrp.lrp(vit, x, 0, composite=lrp.chapter())
    cnn = models.load("lesion_cnn", pretrained=False)
    with pytest.raises(TypeError, match="Vision Transformers"):
        lrp.lrp(cnn, torch.randn(1, 3, 64, 64), 0, composite=lrp.attn_lrp())
    with pytest.raises(ValueError, match="epsilon"):
        lrp.attn_lrp(epsilon=-1)


def test_a_gamma_rule_on_the_linear_layers_runs_and_its_audit_closes():
    vit = tiny_vit()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    base = lrp.attn_lrp()
    composite = lrp.TransformerComposite(first=base.first, linear=lrp.Gamma(0.25), head=base.head, norm=base.norm,
                                         activation=base.activation, softmax=base.softmax, product=base.product)
    r = lrp.lrp(vit, x, 1, composite=composite)
    assert rel(r, lrp.lrp(vit, x, 1)) > 1e-3
    table = lrp.conservation(vit, x, 1, composite=composite)
    rest = table.score - table.input - sum(row["bias"] + row["stabiliser"] + row["leak"] for row in table.rows)
    assert abs(rest) < 1e-9 * abs(table.score)
    gamma_rows = [row for row in table.layers if row["rule"].startswith("gamma")]
    assert gamma_rows and all(abs(row["leak"]) < 1e-9 * abs(table.score) for row in gamma_rows)


def test_model_left_as_found_when_lrp_raises():
    vit = tiny_vit()
    before = state(vit)
    with pytest.raises(ValueError):
        lrp.lrp(vit, torch.randn(1, 3, 16, 16, dtype=torch.float64), 7)  # 3 classes
    after = state(vit)
    assert before[:4] == after[:4]
