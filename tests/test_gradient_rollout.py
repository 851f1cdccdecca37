"""attention: Chefer et al.'s (2021b) gradient-weighted rollout and the raw CLS map, against
a forward pass and a recursion written out here."""
import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from chapter6_utils import attention, models, synthetic
from chapter6_utils.data import normalize


def tiny_vit():
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=16, patch_size=4, num_classes=3, embed_dim=12, depth=2, num_heads=3,
                            mlp_ratio=2.0, qkv_bias=True).double().eval()
    with torch.no_grad():
        for p in vit.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return vit


def attention_and_gradients_by_hand(vit, x, target):
    """The forward pass of a timm ViT written out (explicit softmax attention), and the
    gradient of the target logit with respect to each block's attention."""
    attns = []
    t = vit.patch_embed.proj(x).flatten(2).transpose(1, 2)
    t = torch.cat([vit.cls_token.expand(len(x), -1, -1), t], 1) + vit.pos_embed
    for blk in vit.blocks:
        a_mod, h = blk.attn, blk.norm1(t)
        n, tokens, _ = h.shape
        q, k, v = a_mod.qkv(h).reshape(n, tokens, 3, a_mod.num_heads, -1).permute(2, 0, 3, 1, 4)
        a = (q @ k.transpose(-2, -1) * a_mod.scale).softmax(-1)
        a.retain_grad()
        attns.append(a)
        t = t + a_mod.proj((a @ v).transpose(1, 2).reshape(n, tokens, -1))
        t = t + blk.mlp(blk.norm2(t))
    logits = vit.head(vit.norm(t)[:, 0])
    logits.gather(1, torch.as_tensor(target).view(-1, 1)).sum().backward()
    return torch.stack([a.detach() for a in attns], 1), torch.stack([a.grad for a in attns], 1)


def chefer_by_hand(attn, grads):
    """Rules 5 and 6 of Chefer et al. (2021b), one image, one layer, one head at a time."""
    n, n_layers, heads, tokens, _ = attn.shape
    side = int(round((tokens - 1) ** 0.5))
    maps = []
    for i in range(n):
        r = torch.eye(tokens, dtype=attn.dtype)
        for layer in range(n_layers):
            cam = sum((grads[i, layer, h] * attn[i, layer, h]).clamp(min=0) for h in range(heads)) / heads
            r = r + cam @ r
        maps.append(r[0, 1:].reshape(side, side))
    return torch.stack(maps)


def test_attention_gradients_and_gradient_rollout_equal_the_written_out_reference():
    vit = tiny_vit()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    attn, grads = attention.attention_gradients(vit, x, [2, 0])
    assert all(p.grad is None and p.requires_grad for p in vit.parameters())  # no weight gradients left behind
    ref_attn, ref_grads = attention_and_gradients_by_hand(vit, x, [2, 0])
    assert torch.allclose(attn, ref_attn, atol=1e-12) and torch.allclose(grads, ref_grads, atol=1e-12)
    assert torch.allclose(attention.gradient_rollout(attn, grads), chefer_by_hand(ref_attn, ref_grads), atol=1e-12)


@pytest.fixture(scope="module")
def lesions():
    return synthetic.make_lesions(3, "biased", seed=synthetic.TEST_SEED)


@pytest.mark.bundled("lesion_vit")
def test_gradient_rollout_is_class_specific_batched_and_leaves_the_model_alone(lesions):
    vit = models.load("lesion_vit")
    x = normalize(lesions.images)
    vit.blocks[2].attn.fused_attn = False
    vit.train()
    fused = [b.attn.fused_attn for b in vit.blocks]
    malignant = attention.gradient_rollout_map(vit, x, 1)
    benign = attention.gradient_rollout_map(vit, x, 0)
    assert malignant.shape == (3, 64, 64) and (malignant >= 0).all()
    assert float((malignant - benign).norm() / malignant.norm()) > 0.1  # rollout itself gives one map for both
    singles = torch.cat([attention.gradient_rollout_map(vit, x[i:i + 1], 1) for i in range(3)])
    assert torch.allclose(singles, malignant, rtol=1e-4, atol=1e-7)
    assert [b.attn.fused_attn for b in vit.blocks] == fused and vit.training
    assert all(p.requires_grad and p.grad is None for p in vit.parameters())
    assert all(not b.attn.attn_drop._forward_hooks for b in vit.blocks)
    with pytest.raises(ValueError, match="out of range"):
        attention.gradient_rollout_map(vit, x, 5)
    assert [b.attn.fused_attn for b in vit.blocks] == fused and vit.training


@pytest.mark.bundled("lesion_vit")
def test_cls_attention_map_is_the_last_blocks_cls_row(lesions):
    vit = models.load("lesion_vit")
    x = normalize(lesions.images)
    m = attention.cls_attention_map(vit, x, 1, mode="nearest")
    attn = attention.attention_maps(vit, x)
    assert torch.allclose(m[:, ::8, ::8], attention.cls_attention(attn, -1, "mean"))
    assert torch.equal(m, attention.cls_attention_map(vit, x, 0, mode="nearest"))


def test_bad_arguments_raise():
    vit = tiny_vit()
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    attn, grads = attention.attention_gradients(vit, x, 0)
    with pytest.raises(ValueError, match="grads"):
        attention.gradient_rollout(attn, grads[:, :1])
    with pytest.raises(ValueError, match="head"):
        attention.cls_attention_map(vit, x, head=None)
    cnn = models.load("lesion_cnn", pretrained=False)
    with pytest.raises(TypeError, match="VisionTransformer"):
        attention.gradient_rollout_map(cnn, torch.randn(1, 3, 64, 64), 0)
    with pytest.raises(FloatingPointError, match="non-finite"):
        attention.gradient_rollout(attn, grads * float("nan"))
