"""Concept relevance (chapter6_utils.concepts): conservation over a layer's channels,
agreement with zennit-crp 0.6, the guard, and bad input refused by name."""
import pytest
import torch
import torch.nn as nn

from chapter6_utils import concepts, data, lrp, models, synthetic
from chapter6_utils.data import normalize


def rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def x():
    return normalize(synthetic.make_lesions(6, "biased", seed=synthetic.TEST_SEED).images)


# --------------------------------------------------------------------------- conservation
@pytest.mark.parametrize("layer", ["features.5", "features.10", "features.14"])
def test_conditional_maps_of_all_channels_sum_to_the_lrp_map(cnn, x, layer):
    full = lrp.lrp(cnn, x, 1)
    k = cnn.get_submodule(layer if layer != "features.14" else "features.13").out_channels
    parts = [concepts.concept_relevance(cnn, x, 1, layer, c) for c in range(k)]
    assert rel(sum(parts), full) < 1e-5
    # one concept made of every channel is the unconditional map too
    assert rel(concepts.concept_relevance(cnn, x, 1, layer, list(range(k))), full) < 1e-5
    # and the channels do not all carry the same map (the condition does something)
    assert rel(parts[0], full) > 1e-2


def test_channel_relevance_sums_to_the_relevance_at_the_layer(cnn, x):
    _, layers = lrp.lrp(cnn, x, [0, 1, 1, 0, 1, 0], return_layers=True)
    r = concepts.channel_relevance(cnn, x, [0, 1, 1, 0, 1, 0], "features.10", normalise=False)
    at_layer = layers["features.13"].sum((1, 2, 3))  # what reaches features.10's output passes ReLU and pool unchanged
    assert r.shape == (6, 64)
    assert torch.allclose(r.sum(1), at_layer, rtol=1e-4, atol=1e-6)
    share = concepts.channel_relevance(cnn, x, [0, 1, 1, 0, 1, 0], "features.10")
    assert torch.allclose(share.abs().sum(1), torch.ones(6), atol=1e-5)
    assert torch.allclose(share, r / r.abs().sum(1, keepdim=True))
    # the top channel carries positive evidence for the class down to the pixels
    c = int(r[1].argmax())
    cond = concepts.concept_relevance(cnn, x[1:2], 1, "features.10", c)
    assert float(cond.sum()) > 0


# --------------------------------------------------------------------------- zennit-crp
def test_matches_zennit_crp_on_lesion_cnn(cnn, x):
    crp_attribution = pytest.importorskip("crp.attribution")
    from zennit.composites import EpsilonGammaBox
    from zennit.torchvision import VGGCanonizer

    low, high = data.pixel_bounds_like(x)
    composite = EpsilonGammaBox(low=low, high=high, epsilon=1e-6, gamma=0.25, canonizers=[VGGCanonizer()])
    attribution = crp_attribution.CondAttribution(cnn)
    xg = x.clone().requires_grad_(True)
    layer = "features.10"
    ours_channels = concepts.channel_relevance(cnn, x, 1, layer, composite=lrp.epsilon_gamma_box(),
                                               normalise=False)
    live = ours_channels.abs().sum(0).topk(3).indices.tolist()  # channels that carry relevance (some are dead)
    for c in live:
        res = attribution(xg, [{layer: [c], "y": [1]}], composite, record_layer=[layer])
        ours = concepts.concept_relevance(cnn, x, 1, layer, c, composite=lrp.epsilon_gamma_box())
        assert rel(ours.sum(1), res.heatmap) < 1e-5, c  # zennit-crp sums the colour channels
    res = attribution(xg, [{"y": [1]}], composite, record_layer=[layer])
    theirs = res.relevances[layer].sum((2, 3))
    assert rel(ours_channels, theirs) < 1e-5


# --------------------------------------------------------------------------- guard and batches
def test_model_left_as_found_and_batch_equals_one_at_a_time(cnn, x):
    model = models.load("lesion_cnn")
    model.train()
    handle = model.register_forward_hook(lambda *a: None)
    flags = [p.requires_grad for p in model.parameters()]
    params = [p.detach().clone() for p in model.parameters()]
    batch = concepts.concept_relevance(model, x[:3], [0, 1, 1], "features.10", [1, 2])
    concepts.channel_relevance(model, x[:3], 1, "features.5")
    with pytest.raises(ValueError):
        concepts.concept_relevance(model, x[:3], 1, "features.10", 999)
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters()))
    assert len(model._forward_hooks) == 1 and not any(m._forward_hooks for m in model.modules() if m is not model)
    handle.remove()
    singles = torch.cat([concepts.concept_relevance(model, x[i:i + 1], t, "features.10", [1, 2])
                         for i, t in enumerate([0, 1, 1])])
    assert torch.allclose(batch, singles, rtol=1e-4, atol=1e-6)
    before = x.clone()
    with torch.no_grad():  # gradients are switched on inside, as for every method
        concepts.concept_relevance(model, x, 1, model.features[10], 3)
    assert torch.equal(x, before)


def test_works_on_a_resnet_layer():
    model = models.load("lesion_resnet")
    x = normalize(synthetic.make_lesions(2, "biased", seed=synthetic.TEST_SEED).images)
    full = lrp.lrp(model, x, 1)
    k = model.layer2[0].conv2.out_channels
    r = sum(concepts.concept_relevance(model, x, 1, "layer2.0.conv2", c) for c in range(k))
    # the skip path carries the rest of the relevance: a branch's channels are not the whole map
    assert r.shape == full.shape and torch.isfinite(r).all()
    whole = sum(concepts.concept_relevance(model, x, 1, "layer3", c) for c in range(model.layer3[0].conv2.out_channels))
    assert rel(whole, full) < 1e-4  # a block's output carries everything


# --------------------------------------------------------------------------- bad input
def test_bad_input_is_refused_by_name(cnn, x):
    with pytest.raises(ValueError, match="no channels"):
        concepts.concept_relevance(cnn, x, 1, "classifier.1", 0)
    with pytest.raises(ValueError, match="no channels"):
        concepts.channel_relevance(cnn, x, 1, "classifier.0")
    with pytest.raises(ValueError, match="channel 64 is out of range.*64 channels"):
        concepts.concept_relevance(cnn, x, 1, "features.10", [3, 64])
    with pytest.raises(ValueError, match="out of range"):
        concepts.concept_relevance(cnn, x, 1, "features.10", -1)
    with pytest.raises(ValueError, match="empty"):
        concepts.concept_relevance(cnn, x, 1, "features.10", [])
    with pytest.raises(TypeError, match="integers"):
        concepts.concept_relevance(cnn, x, 1, "features.10", [1.5])
    with pytest.raises(ValueError, match="not a module"):
        concepts.concept_relevance(cnn, x, 1, "features.99", 0)
    with pytest.raises(TypeError, match="module name"):
        concepts.channel_relevance(cnn, x, 1, 3)
    with pytest.raises(ValueError, match="out of range"):
        concepts.channel_relevance(cnn, x, 2, "features.10")  # target beyond the two classes
    with pytest.raises(TypeError, match="normalise"):
        concepts.channel_relevance(cnn, x, 1, "features.10", normalise="yes")


class WithSpare(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 2))
        self.spare = nn.Conv2d(4, 4, 1)  # registered, never called

    def forward(self, x):
        return self.body(x)


def test_a_model_lrp_cannot_run_is_named():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GELU(), nn.Flatten(), nn.LazyLinear(2))
    x = torch.randn(1, 3, 8, 8)
    net(x)
    with pytest.raises(lrp.UnsupportedLayerError, match="GELU"):
        concepts.concept_relevance(net, x, 0, "0", 0)
    unused = WithSpare()
    with pytest.raises(ValueError, match="never called"):
        concepts.channel_relevance(unused, x, 0, "spare")
