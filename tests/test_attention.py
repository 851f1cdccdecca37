"""attention: attention maps of timm ViTs (eq. 12), CLS maps, attention rollout (eq. 13)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from chapter6_utils import attention, models, synthetic, widgets
from chapter6_utils.data import normalize


@pytest.fixture(scope="module")
def vit():
    return models.load("lesion_vit")


@pytest.fixture(scope="module")
def lesions():
    return synthetic.make_lesions(3, "biased", seed=synthetic.TEST_SEED)


@pytest.fixture(scope="module")
def attn(vit, lesions):
    return attention.attention_maps(vit, normalize(lesions.images))


def flags(model):
    return [m.fused_attn for m in attention.attention_modules(model)]


def qkv_reference(model, x):
    """Equation 12 recomputed by hand from each block's input and weights: softmax(q k^T / sqrt(d))."""
    inputs = []
    handles = [m.register_forward_pre_hook(lambda mod, args: inputs.append(args[0].detach()))
               for m in attention.attention_modules(model)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    out = []
    for m, t in zip(attention.attention_modules(model), inputs):
        n, tokens, _ = t.shape
        qkv = F.linear(t, m.qkv.weight, m.qkv.bias).reshape(n, tokens, 3, m.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k = m.q_norm(qkv[0]), m.k_norm(qkv[1])
        out.append((q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5).softmax(-1))
    return torch.stack(out, 1)


def rollout_reference(attn, head_fusion, discard_ratio, alpha):
    """Equation 13, one image and one layer at a time, in float64 numpy."""
    a = attn.double().numpy()
    n, n_layers, _, tokens, _ = a.shape
    alphas = np.broadcast_to(np.asarray(alpha, dtype=np.float64), (n_layers,))
    side = int(round((tokens - 1) ** 0.5))
    maps = []
    for i in range(n):
        r = np.eye(tokens)
        for layer in range(n_layers):
            fused = {"mean": np.mean, "max": np.max, "min": np.min}[head_fusion](a[i, layer], axis=0)
            flat = fused.flatten()
            k = int(discard_ratio * tokens * tokens)
            others = np.argsort(flat[1:], kind="stable")[:k] + 1  # index 0 = CLS->CLS, never dropped
            flat[others] = 0.0
            fused = flat.reshape(tokens, tokens)
            hat = alphas[layer] * fused + (1 - alphas[layer]) * np.eye(tokens)
            total = hat.sum(axis=1, keepdims=True)
            hat = np.divide(hat, total, out=np.zeros_like(hat), where=total > 0)  # an emptied row stays 0
            r = hat @ r
        maps.append(r[0, 1:].reshape(side, side))
    return torch.from_numpy(np.stack(maps))


def test_attention_maps_shape_rows_and_equation_12(vit, lesions, attn):
    assert attn.shape == (3, 6, 4, 65, 65)
    assert torch.allclose(attn.sum(-1), torch.ones(()), atol=1e-5)
    assert (attn >= 0).all()
    assert torch.allclose(attn, qkv_reference(vit, normalize(lesions.images)), atol=1e-6)


def test_fused_on_equals_fused_off_and_flags_restored(vit, lesions, attn):
    x = normalize(lesions.images)
    mods = attention.attention_modules(vit)
    saved = flags(vit)
    try:
        for setting in ([True] * 6, [False] * 6, [True, False, True, False, True, False]):
            for m, f in zip(mods, setting):
                m.fused_attn = f
            other = attention.attention_maps(vit, x)
            assert flags(vit) == setting
            assert torch.allclose(other, attn, atol=1e-6)
    finally:
        for m, f in zip(mods, saved):
            m.fused_attn = f


def test_chapter_snippet_captures_nothing_with_fused_attention(vit, lesions):
    assert all(flags(vit))  # timm's default here: the path the chapter's hook misses
    captured = []
    hooks = [b.attn.attn_drop.register_forward_hook(lambda m, i, o: captured.append(i[0])) for b in vit.blocks]
    with torch.no_grad():
        vit(normalize(lesions.images))
    for h in hooks:
        h.remove()
    assert captured == []


def test_model_left_as_found_even_on_error(vit, lesions):
    def boom(module, args, output):
        raise RuntimeError("boom")

    n_hooks = len(vit.head._forward_hooks)
    handle = vit.head.register_forward_hook(boom)
    vit.train()
    try:
        with pytest.raises(RuntimeError, match="boom"):
            attention.attention_maps(vit, normalize(lesions.images))
        assert all(flags(vit)) and vit.training
        assert all(not m.attn_drop._forward_hooks for m in attention.attention_modules(vit))
        assert len(vit.head._forward_hooks) == n_hooks + 1
    finally:
        handle.remove()
        vit.eval()
    assert all(p.requires_grad for p in vit.parameters())


def test_batch_equals_one_at_a_time(vit, lesions, attn):
    x = normalize(lesions.images)
    single = torch.cat([attention.attention_maps(vit, x[i:i + 1]) for i in range(len(x))])
    assert torch.allclose(single, attn, atol=1e-6)


@pytest.mark.parametrize("head_fusion", attention.HEAD_FUSIONS)
@pytest.mark.parametrize("discard_ratio", [0.0, 0.5, 0.9])
def test_rollout_equals_reference(attn, head_fusion, discard_ratio):
    per_layer = [1.0, 0.9, 0.7, 0.5, 0.3, 0.1]
    for alpha in (0.5, per_layer):
        ref = rollout_reference(attn, head_fusion, discard_ratio, alpha)
        ours = attention.rollout(attn, head_fusion=head_fusion, discard_ratio=discard_ratio, alpha=alpha)
        assert ours.shape == (3, 8, 8)
        assert torch.allclose(ours.double(), ref, atol=1e-5), (head_fusion, discard_ratio, alpha)
        single = torch.cat([attention.rollout(attn[i:i + 1], head_fusion=head_fusion, discard_ratio=discard_ratio,
                                              alpha=alpha) for i in range(len(attn))])
        assert torch.allclose(single, ours, atol=1e-6)


def test_rollout_edge_cases_and_errors(attn):
    assert torch.allclose(attention.rollout(attn, alpha=0.0), torch.zeros(3, 8, 8))  # identity only
    assert torch.allclose(attention.rollout(attn[:, :1], alpha=1.0), attention.cls_attention(attn, 0, "mean"))
    with pytest.raises(ValueError, match="head_fusion"):
        attention.rollout(attn, head_fusion="median")
    with pytest.raises(ValueError, match="discard_ratio"):
        attention.rollout(attn, discard_ratio=1.0)
    with pytest.raises(ValueError, match="per layer"):
        attention.rollout(attn, alpha=[0.5, 0.5])
    with pytest.raises(ValueError, match="alpha"):
        attention.rollout(attn, alpha=1.5)
    with pytest.raises(ValueError, match="N, L, heads, T, T"):
        attention.rollout(attn[0])


def test_cls_attention(attn):
    assert torch.equal(attention.cls_attention(attn, 2, 1), attn[:, 2, 1, 0, 1:].reshape(3, 8, 8))
    assert attention.cls_attention(attn, -1).shape == (3, 4, 8, 8)
    assert torch.allclose(attention.cls_attention(attn, -1, "max"), attention.cls_attention(attn, 5).amax(1))
    with pytest.raises(ValueError, match="layer"):
        attention.cls_attention(attn, 6)
    with pytest.raises(ValueError, match="head"):
        attention.cls_attention(attn, 0, 4)


def test_not_a_vit_gets_a_clear_error(lesions):
    cnn = models.load("lesion_cnn")
    for call in (attention.attention_maps, attention.rollout_map):
        with pytest.raises(TypeError, match="VisionTransformer"):
            call(cnn, normalize(lesions.images))


def test_upsample_and_rollout_map(vit, lesions, attn):
    r = attention.rollout(attn)
    near = attention.upsample_to_image(r, 64, mode="nearest")
    assert near.shape == (3, 64, 64)
    assert torch.allclose(near.sum((1, 2)), r.sum((1, 2)) * 64, rtol=1e-5)
    assert attention.upsample_to_image(r[0], (32, 48)).shape == (32, 48)
    x = normalize(lesions.images)
    m = attention.rollout_map(vit, x, target=1, head_fusion="max", discard_ratio=0.9)
    assert m.shape == (3, 64, 64) and (m >= 0).all()
    assert torch.allclose(m, attention.rollout_map(vit, x, target=0, head_fusion="max", discard_ratio=0.9))
    assert torch.allclose(m, attention.upsample_to_image(attention.rollout(attn, "max", 0.9), 64), atol=1e-6)
    with pytest.raises(ValueError, match="target"):
        attention.rollout_map(vit, x, target=[0, 1])


def test_imagenet_vit_at_224():
    vit = models.load("vit_small_patch16_224", pretrained=False)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    a = attention.attention_maps(vit, x)
    assert a.shape == (1, 12, 6, 197, 197)
    assert torch.allclose(a, qkv_reference(vit, x), atol=1e-5)
    assert attention.rollout(a, "max", 0.9).shape == (1, 14, 14)
    assert all(flags(vit))


def test_rollout_finds_the_ruler(vit):
    """On malignant lesions with rulers, lesion_vit's rollout puts more of its mass on the
    ruler than the ruler's share of the image area."""
    pool = synthetic.make_lesions(400, "biased", seed=synthetic.EVAL_SEED)
    s = pool.select(label=1, ruler=True)[:24]
    assert len(s) == 24
    maps = attention.upsample_to_image(attention.rollout(attention.attention_maps(vit, normalize(s.images))), 64,
                                       mode="nearest")
    share = ((maps * s.ruler_mask).flatten(1).sum(1) / maps.flatten(1).sum(1)).mean()
    area = s.ruler_mask.float().mean()
    assert share > 1.3 * area, (float(share), float(area))


def test_widget_functions(vit, lesions):
    one = lesions[:1]
    x = normalize(one.images)
    a = attention.attention_maps(vit, x)
    masks = (one.lesion_mask[0], one.ruler_mask[0])
    c, r, stats = widgets.attention_view(a, 64, 3, 2, "max", 0.9, masks=masks)
    assert c.shape == r.shape == (64, 64)
    assert torch.allclose(c[::8, ::8], attention.cls_attention(a, 3, 2)[0])
    assert torch.allclose(r[::8, ::8], attention.rollout(a, "max", 0.9)[0])
    assert 0 <= stats["rollout_ruler_share"] <= 1 and 0 < stats["cls_self"] < 1
    fig = widgets.attention_figure(x, (c, r, stats), masks=masks)
    assert len(fig.axes) >= 3
    grid = widgets.attention_grid(vit, x, layers=(0, 5), masks=masks)
    assert len(grid.axes) >= 6
    box = widgets.attention_explorer(vit, x, masks=masks)
    box.sliders["layer"].value = 5
    assert (5, "mean", "mean", 0.0) in box.cache


# --------------------------------------------------------------------------- prefix tokens and pooling
def _small_vit(**kw):
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(img_size=32, patch_size=8, num_classes=3, embed_dim=32, depth=3, num_heads=2,
                             mlp_ratio=2.0, **kw).eval()


def _small_deit():
    from timm.models.deit import VisionTransformerDistilled

    torch.manual_seed(0)
    return VisionTransformerDistilled(img_size=32, patch_size=8, num_classes=3, embed_dim=32, depth=3,
                                      num_heads=2, mlp_ratio=2.0).eval()


def full_rollout(attn, alpha=0.5):
    """R_L of equation 13, the whole T x T matrix, mean fusion, float64 (one image)."""
    a = attn.double().mean(2)[0]
    t = a.shape[-1]
    r = torch.eye(t, dtype=torch.float64)
    for layer in range(a.shape[0]):
        hat = alpha * a[layer] + (1 - alpha) * torch.eye(t, dtype=torch.float64)
        r = (hat / hat.sum(-1, keepdim=True)) @ r
    return r


LAYOUTS = {  # model, expected (num_prefix_tokens, readout), the rows the head reads
    "cls+4 registers": (lambda: _small_vit(reg_tokens=4), (5, "token"), [0]),
    "no CLS, avg pool": (lambda: _small_vit(class_token=False, global_pool="avg"), (0, "avg"), list(range(16))),
    "no CLS, 2 registers, avg pool": (lambda: _small_vit(class_token=False, reg_tokens=2, global_pool="avg"),
                                      (2, "avg"), list(range(2, 18))),
    "CLS, avg pool": (lambda: _small_vit(global_pool="avg"), (1, "avg"), list(range(1, 17))),
    "CLS, avg pool over all tokens": (lambda: _small_vit(global_pool="avg", pool_include_prefix=True), (1, "all"),
                                      list(range(17))),
    "distilled DeiT": (_small_deit, (2, (0, 1)), [0, 1]),
}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_rollout_reads_the_prefix_tokens_and_pooling(name):
    build, layout, rows = LAYOUTS[name]
    model = build()
    assert attention.token_layout(model) == layout
    prefix, readout = layout
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    attn = attention.attention_maps(model, x)
    assert attn.shape[-1] == prefix + 16
    maps = attention.rollout_map(model, x, mode="nearest")
    for i in range(2):
        r = full_rollout(attn[i:i + 1])
        want = r[rows].mean(0)  # the rows the head reads, averaged as the head averages them
        ours = attention.rollout(attn[i:i + 1], num_prefix_tokens=prefix, readout=readout)[0]
        assert torch.allclose(ours.double().flatten(), want[prefix:], atol=1e-6)
        # The sum identity: the map plus the weight on the prefix columns (CLS, registers,
        # distillation token) is 1.
        assert abs(float(ours.double().sum() + want[:prefix].sum()) - 1) < 1e-5
        assert torch.allclose(maps[i, ::8, ::8], ours, atol=1e-6)
        one_layer = attention.cls_attention(attn[i:i + 1], -1, "mean", num_prefix_tokens=prefix, readout=readout)[0]
        assert torch.allclose(one_layer.double().flatten(), attn[i, -1].double().mean(0)[rows].mean(0)[prefix:],
                              atol=1e-6)
    with pytest.raises(ValueError, match="readout row"):
        attention.rollout(attn, num_prefix_tokens=prefix, readout=(prefix,))


def test_token_zero_is_not_taken_for_a_cls_token_that_is_not_there():
    model = _small_vit(class_token=False, global_pool="avg")
    attn = attention.attention_maps(model, torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="no CLS token.*readout='avg'"):
        attention.rollout(attn, num_prefix_tokens=0)
    with pytest.raises(ValueError, match="no CLS token"):
        attention.cls_attention(attn, 0, num_prefix_tokens=0)


@pytest.mark.parametrize("pool", ["max", "avgmax", "map"])
def test_heads_rollout_cannot_follow_are_refused(pool):
    model = _small_vit(class_token=False, global_pool=pool) if pool != "map" else _small_vit(global_pool="map")
    with pytest.raises(ValueError, match="global_pool="):
        attention.rollout_map(model, torch.randn(1, 3, 32, 32))


def test_discarding_keeps_the_readout_self_weights_and_the_sum_identity_holds():
    model = _small_vit(reg_tokens=4)
    attn = attention.attention_maps(model, torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    for readout in ("token", "avg", (0, 2)):
        maps = attention.rollout(attn, discard_ratio=0.95, num_prefix_tokens=5, readout=readout)
        assert maps.shape == (3, 4, 4) and torch.isfinite(maps).all() and (maps >= 0).all()
        assert bool((maps.flatten(1).sum(1) <= 1 + 1e-6).all())


def test_non_finite_attention_raises_instead_of_vanishing(attn):
    bad = attn.clone()
    bad[0, 2, 1, 7] = float("nan")  # one NaN row in one head
    for call in (lambda: attention.rollout(bad), lambda: attention.cls_attention(bad, 0)):
        with pytest.raises(ValueError, match=r"attn has 65 non-finite values \(65 NaN, 0 inf\)"):
            call()
    bad[0, 2, 1, 7] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        attention.rollout(bad)
    with pytest.raises(ValueError, match="negative"):
        attention.rollout(attn - 1)
