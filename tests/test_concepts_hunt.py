"""The shortcut hunt (chapter6_utils.concepts.hunt): ranking without masks, mask scores,
ablation on a copy and the intervention's measurements."""
import pytest
import torch
import torch.nn as nn

from chapter6_utils import concepts, data, lrp, synthetic
from chapter6_utils.data import normalize


@pytest.fixture(scope="module")
def lesions():
    return synthetic.make_lesions(16, "biased", seed=synthetic.TEST_SEED)


def test_rank_channels_is_the_mean_share_in_any_batching(cnn, lesions):
    x = normalize(lesions.images)
    layers = ["features.5", "features.13"]
    whole = concepts.rank_channels(cnn, x, 1, layers, batch_size=64)
    split = concepts.rank_channels(cnn, x, 1, layers, batch_size=5)
    for layer in layers:
        share = concepts.channel_relevance(cnn, x, 1, layer).mean(0)
        assert torch.allclose(whole[layer].share, share, atol=1e-6)
        assert torch.allclose(split[layer].share, share, atol=1e-6)
        r = whole[layer]
        assert r.n == 16 and sorted(r.order) == list(range(len(share)))
        assert all(share[a] >= share[b] for a, b in zip(r.order, r.order[1:]))
        assert r.top(2) == r.order[:2] and layer in str(r)
    with pytest.raises(ValueError, match="empty"):
        concepts.rank_channels(cnn, x, 1, [])


def group_net():
    """Three 1x1 channels, each reading one input channel, summed into class 1: channel 0
    sees what every image has (bright), channel 2 what only the group's images have."""
    net = nn.Sequential(nn.Conv2d(3, 3, 1, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 8 * 8, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(3)[:, :, None, None])
        net[3].weight.zero_()
        net[3].weight[1] = 1.0
        net[3].bias.zero_()
    return net


def group_images(n=12):
    torch.manual_seed(0)
    x = torch.rand(n, 3, 8, 8) * 0.2
    x[:, 0] += 2.0                       # every image: a bright channel 0, the "lesion"
    group = torch.arange(n) % 3 == 0
    x[group, 2] += 1.0                   # only the group's images: something in channel 2, the "ruler"
    return x, group


def test_contrast_ranks_the_channel_that_responds_only_on_the_group_first():
    net, (x, group) = group_net(), group_images()
    net.train()
    before = [p.detach().clone() for p in net.parameters()]
    plain = concepts.rank_channels(net, x, 1, "0")["0"]
    contrast = concepts.contrast_channels(net, x, 1, "0", group)["0"]
    welch = concepts.contrast_channels(net, x, 1, ["0"], group, statistic="welch")["0"]
    assert plain.top(1) == [0]           # the plain ranking names what matters on every image
    assert contrast.top(1) == [2] and welch.top(1) == [2]
    assert contrast.share[2] > 0 > contrast.share[0]
    assert "group" in str(contrast) and "Welch" in str(welch)
    # left as found: train mode, no hooks, same weights
    assert net.training and not any(m._forward_hooks for m in net.modules())
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_contrast_is_the_difference_of_mean_shares(cnn, lesions):
    x, group = normalize(lesions.images), lesions.has_ruler
    assert 0 < int(group.sum()) < len(group)
    out = concepts.contrast_channels(cnn, x, 1, ["features.2", "features.10"], group, batch_size=5)
    for layer in ("features.2", "features.10"):
        share = concepts.channel_relevance(cnn, x, 1, layer)
        a, b = share[group], share[~group]
        assert torch.allclose(out[layer].share, a.mean(0) - b.mean(0), atol=1e-6)
        se = (a.var(0) / len(a) + b.var(0) / len(b)).sqrt()
        assert torch.allclose(out[layer].sem, se, atol=1e-6)
        assert out[layer].order == out[layer].share.argsort(descending=True).tolist()


def test_contrast_rejects_a_bad_group():
    net, (x, group) = group_net(), group_images()
    with pytest.raises(TypeError, match="bool"):
        concepts.contrast_channels(net, x, 1, "0", group.float())
    with pytest.raises(ValueError, match="one entry per image"):
        concepts.contrast_channels(net, x, 1, "0", group[:-1])
    with pytest.raises(ValueError, match="empty"):
        concepts.contrast_channels(net, x, 1, "0", torch.zeros_like(group))
    with pytest.raises(ValueError, match="every image"):
        concepts.contrast_channels(net, x, 1, "0", torch.ones_like(group))
    with pytest.raises(ValueError, match="statistic"):
        concepts.contrast_channels(net, x, 1, "0", group, statistic="ratio")
    with pytest.raises(ValueError, match="at least two"):
        concepts.contrast_channels(net, x, 1, "0", torch.arange(len(x)) == 0, statistic="welch")
    assert not any(m._forward_hooks for m in net.modules())


def test_mask_share_matches_the_conditional_map(cnn, lesions):
    with_ruler = lesions.select(ruler=True)
    x, mask = normalize(with_ruler.images), with_ruler.ruler_mask
    shares = concepts.mask_share(cnn, x, 1, "features.10", [5, 3], mask)
    assert shares.shape == (2, len(x))
    pos = concepts.concept_relevance(cnn, x, 1, "features.10", 3).sum(1).clamp(min=0)
    by_hand = (pos * mask).sum((1, 2)) / pos.sum((1, 2))
    assert torch.allclose(shares[1], by_hand, atol=1e-5, equal_nan=True)  # in the caller's order
    everywhere = concepts.mask_share(cnn, x, 1, "features.10", 3, torch.ones_like(mask))
    ok = ~torch.isnan(everywhere[0])
    assert ok.any() and torch.allclose(everywhere[0][ok], torch.ones(int(ok.sum())))
    with pytest.raises(ValueError, match="bool tensor"):
        concepts.mask_share(cnn, x, 1, "features.10", 3, mask.float())
    with pytest.raises(ValueError, match="out of range"):
        concepts.mask_share(cnn, x, 1, "features.10", [3, 64], mask)


def test_ablation_zeroes_the_channels_on_a_copy_only(cnn, lesions):
    x = normalize(lesions.images[:4])
    before = [p.detach().clone() for p in cnn.parameters()]
    ablated = concepts.ablate_channels(cnn, "features.10", [2, 7])
    seen = []
    ablated.features[11].register_forward_hook(lambda m, i, o: seen.append(i[0]))
    with torch.no_grad():
        out_a, out = ablated(x), cnn(x)
    assert seen[0][:, [2, 7]].abs().max() == 0 and seen[0][:, 3].abs().max() > 0
    assert not torch.allclose(out_a, out)
    assert not any(m._forward_hooks for m in cnn.modules())
    assert all(torch.equal(a, b) for a, b in zip(before, cnn.parameters()))
    with pytest.raises(ValueError, match="out of range"):
        concepts.ablate_channels(cnn, "features.10", 64)
    relu_copy = concepts.ablate_channels(cnn, "features.11", 99)  # a ReLU: checked when it runs
    with pytest.raises(ValueError, match="out of range"):
        relu_copy(x)


def test_mean_ablation_puts_the_mean_activation_in_place(cnn, lesions):
    x = normalize(lesions.images)
    seen = []
    hook = cnn.features[10].register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        cnn(x)
    hook.remove()
    mean = concepts.mean_activation(cnn, x, "features.10", batch_size=5)
    assert mean.shape == seen[0].shape[1:] and torch.allclose(mean, seen[0].mean(0), atol=1e-5)
    ablated = concepts.ablate_channels(cnn, "features.10", [2, 7], fill=mean)
    inside = []
    ablated.features[11].register_forward_hook(lambda m, i, o: inside.append(i[0]))
    with torch.no_grad():
        ablated(x[:3])
    assert torch.allclose(inside[0][:, [2, 7]], mean[[2, 7]].expand(3, 2, *mean.shape[1:]))
    assert torch.allclose(inside[0][:, 3], seen[0][:3, 3], atol=1e-5)  # the other channels as they were
    assert not any(m._forward_hooks for m in cnn.modules())
    with pytest.raises(ValueError, match="fill"):
        concepts.ablate_channels(cnn, "features.10", 2, fill=mean[:5])
    with pytest.raises(ValueError, match="non-finite"):
        concepts.ablate_channels(cnn, "features.10", 2, fill=torch.full_like(mean, float("nan")))
    with pytest.raises(ValueError, match="fill"):
        concepts.ablate_channels(cnn, "features.10", 2, fill=[0.0] * 64)


def test_intervene_measures_before_and_after(cnn):
    result = concepts.intervene(cnn, "features.13", list(range(64)), n=40)
    u = synthetic.make_lesions(40, "unbiased", seed=synthetic.EVAL_SEED)
    with torch.no_grad():
        acc = float((cnn(normalize(u.images)).argmax(1) == u.labels).float().mean())
    assert result.unbiased[0] == pytest.approx(acc)
    # every channel of the last block zeroed: the features are gone, so a pasted ruler adds nothing
    assert result.gain[1] == pytest.approx(0.0, abs=1e-5) and result.gain[0] > 0
    assert result.n["swapped"] == 40 and result.n["pasted"] > 0
    assert "log-odds" in str(result)


def test_intervene_sweep_is_intervene_on_each_prefix(cnn):
    u = synthetic.make_lesions(40, "unbiased", seed=synthetic.EVAL_SEED)
    s = synthetic.make_lesions(40, "swapped", seed=synthetic.EVAL_SEED + 1)
    order = [5, 1, 12, 13]
    mean = concepts.mean_activation(cnn, normalize(u.images), "features.3")
    for fill, layer in ((None, "features.2"), (mean, "features.3")):
        swept = concepts.intervene_sweep(cnn, layer, order, (1, 3), unbiased=u, swapped=s, fill=fill)
        assert list(swept) == [1, 3]
        for k, e in swept.items():
            one = concepts.intervene(cnn, layer, order[:k], unbiased=u, swapped=s, fill=fill)
            assert e.gain == pytest.approx(one.gain) and e.swapped == pytest.approx(one.swapped)
            assert e.unbiased == pytest.approx(one.unbiased) and e.gain_se == pytest.approx(one.gain_se)
    assert swept[3].gain != pytest.approx(swept[1].gain)
    with pytest.raises(ValueError, match="exceeds"):
        concepts.intervene_sweep(cnn, "features.2", order, (8,), unbiased=u, swapped=s)
    with pytest.raises(ValueError, match="twice"):
        concepts.intervene_sweep(cnn, "features.2", [1, 1], (2,), unbiased=u, swapped=s)
    with pytest.raises(ValueError, match="empty"):
        concepts.intervene_sweep(cnn, "features.2", order, (), unbiased=u, swapped=s)


# --------------------------------------------------------------------------- reference images
def test_reference_images_by_activation_and_by_relevance(cnn, lesions):
    x = normalize(lesions.images)
    layer, channel = "features.10", 5
    act = concepts.reference_images(cnn, x, 1, layer, channel, k=4, mode="activation", batch_size=5)
    rel = concepts.reference_images(cnn, x, 1, layer, channel, k=4, mode="relevance")
    # ActMax by hand: each image's strongest activation of the channel
    seen = []
    hook = cnn.features[10].register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        cnn(x)
    hook.remove()
    best = seen[0][:, channel].flatten(1).max(1).values
    assert act.index.tolist() == best.topk(4).indices.tolist()
    assert torch.allclose(act.value, best.topk(4).values, atol=1e-5)
    # RelMax by hand: the relevance at the layer's output, per position
    for r in (act, rel):
        assert len(r.patch) == 4 and all(p.shape[0] == 3 for p in r.patch)
        for (t, lft, b, rt), p in zip(r.box, r.patch):
            assert p.shape[1:] == (b - t, rt - lft) and 0 < b - t <= 64
    assert all(a >= b for a, b in zip(rel.value, rel.value[1:]))
    # RelMax against zennit-crp's relevance at the layer's output, position by position
    crp_attribution = pytest.importorskip("crp.attribution")
    from zennit.composites import EpsilonGammaBox
    from zennit.torchvision import VGGCanonizer

    low, high = data.pixel_bounds_like(x)
    composite = EpsilonGammaBox(low=low, high=high, epsilon=1e-6, gamma=0.25, canonizers=[VGGCanonizer()])
    res = crp_attribution.CondAttribution(cnn)(x.clone().requires_grad_(True), [{"y": [1]}], composite,
                                                record_layer=[layer])
    theirs = res.relevances[layer][:, channel].flatten(1).max(1).values
    ours = concepts.reference_images(cnn, x, 1, layer, channel, k=4, composite=lrp.epsilon_gamma_box())
    assert ours.index.tolist() == theirs.topk(4).indices.tolist()
    assert torch.allclose(ours.value, theirs.topk(4).values, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="mode"):
        concepts.reference_images(cnn, x, 1, layer, channel, mode="gradient")
    with pytest.raises(ValueError, match="out of range"):
        concepts.reference_images(cnn, x, 1, layer, 64)
