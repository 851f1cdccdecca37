"""LRP (chapter6_utils.lrp): conservation, gradient x input, agreement with Zennit and
Captum, canonisation, the audit table, the guard, and the ruler on the lesion models."""
import copy

import pytest
import torch
import torch.nn as nn
import torchvision

from chapter6_utils import data, lrp, models, synthetic
from chapter6_utils.data import normalize
from chapter6_utils.saliency import gradient_x_input


def rel(a, b):
    return float((a - b).norm() / b.norm())


def freeze(model):
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def bias_free_net(avgpool=False):
    torch.manual_seed(0)
    pool = nn.AdaptiveAvgPool2d(2) if avgpool else nn.MaxPool2d(2)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(6, 8, 3, padding=1, bias=False), nn.ReLU(), pool, nn.Flatten(),
                        nn.Linear(8 * 2 * 2, 10, bias=False), nn.ReLU(), nn.Dropout(0.3),
                        nn.Linear(10, 3, bias=False))
    return freeze(net).double()


# --------------------------------------------------------------------------- LRP-0 on bias-free ReLU networks
@pytest.mark.parametrize("avgpool", [False, True])
def test_lrp0_is_gradient_x_input_and_conserves_every_layer(avgpool):
    net = bias_free_net(avgpool)
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    target = [0, 1, 2]
    r, layers = lrp.lrp(net, x, target, composite=lrp.all_zero(), return_layers=True)
    assert r.shape == x.shape
    assert rel(r, gradient_x_input(net, x, target)) < 1e-10
    score = net(x).gather(1, torch.tensor(target)[:, None]).squeeze(1)
    assert torch.allclose(r.sum((1, 2, 3)), score, rtol=1e-5, atol=0)
    assert len(layers) >= 4 and "output" in layers
    for name, rl in layers.items():
        assert torch.allclose(rl.flatten(1).sum(1), score, rtol=1e-5, atol=1e-12), name


def test_lrp0_conserves_in_float32_and_average_maxpool_conserves_too():
    net = bias_free_net().float()
    x = torch.randn(2, 3, 8, 8)
    score = net(x)[:, 1]
    for mode in ("winner", "average"):
        r = lrp.lrp(net, x, 1, composite=lrp.all_zero(), maxpool=mode)
        assert torch.allclose(r.sum((1, 2, 3)), score, rtol=1e-5), mode
    assert rel(lrp.lrp(net, x, 1, composite=lrp.all_zero(), maxpool="average"),
               lrp.lrp(net, x, 1, composite=lrp.all_zero())) > 1e-3  # a different explanation


# --------------------------------------------------------------------------- Zennit and Captum
def zennit_box(model, x, target, canonizer):
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonGammaBox

    low, high = data.pixel_bounds_like(x)
    composite = EpsilonGammaBox(low=low, high=high, epsilon=1e-6, gamma=0.25, canonizers=[canonizer])
    with Gradient(model=model, composite=composite) as attributor:
        # Zennit starts from the output relevance it is given: the score at the target
        _, relevance = attributor(x, lambda out: torch.eye(out.shape[1], dtype=out.dtype)[[target]] * out)
    return relevance


def random_batchnorm(model):
    """Random BatchNorm statistics (so the merge matters) with eps = 0: Zennit leaves each
    merged BatchNorm computing x / sqrt(1 + eps), a shrink of 5e-6 per layer at the default
    eps; with eps = 0 both canonisations are exact."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 0.0
            m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
    return model


def test_matches_zennit_on_lesion_cnn():
    from zennit.torchvision import VGGCanonizer

    model = models.load("lesion_cnn")
    x = normalize(synthetic.make_lesions(4, "biased", seed=synthetic.EVAL_SEED).images)
    ours = lrp.lrp(model, x, 1, composite=lrp.epsilon_gamma_box())
    assert rel(ours, zennit_box(model, x, 1, VGGCanonizer())) < 1e-4


def test_matches_zennit_on_vgg16():
    from zennit.torchvision import VGGCanonizer

    torch.manual_seed(0)
    model = freeze(torchvision.models.vgg16())
    for m in model.modules():  # torchvision initialises biases to zero: give them a role
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.bias.data.uniform_(-0.05, 0.05)
    x = torch.randn(1, 3, 64, 64)  # 64x64 keeps the test short; VGG's adaptive pool copes
    ours = lrp.lrp(model, x, 7, composite=lrp.epsilon_gamma_box())
    assert rel(ours, zennit_box(model, x, 7, VGGCanonizer())) < 1e-4


def test_matches_zennit_on_resnet18():
    from zennit.torchvision import ResNetCanonizer

    torch.manual_seed(0)
    model = random_batchnorm(freeze(torchvision.models.resnet18()))
    x = torch.randn(1, 3, 112, 112)
    ours = lrp.lrp(model, x, 3, composite=lrp.epsilon_gamma_box())
    assert rel(ours, zennit_box(model, x, 3, ResNetCanonizer())) < 1e-4


def test_epsilon_matches_captum_on_lesion_cnn():
    from captum.attr import LRP

    model = models.load("lesion_cnn")

    class Functional(nn.Module):  # Captum has no rule for nn.Flatten: flatten in forward
        def __init__(self, m):
            super().__init__()
            m = copy.deepcopy(m)
            self.features, self.head = m.features, m.classifier[1:]

        def forward(self, x):
            return self.head(torch.flatten(self.features(x), 1))

    x = normalize(synthetic.make_lesions(4, "biased", seed=synthetic.EVAL_SEED).images)
    theirs = LRP(Functional(model)).attribute(x.clone().requires_grad_(True), target=1).detach()
    ours = lrp.lrp(model, x, 1, composite=lrp.all_epsilon(1e-9))  # Captum's default epsilon
    assert rel(ours, theirs) < 1e-4


# --------------------------------------------------------------------------- canonisation and audit
def test_lesion_resnet_conserves_up_to_what_the_audit_says_was_absorbed():
    model = models.load("lesion_resnet")
    x = normalize(synthetic.make_lesions(2, "biased", seed=synthetic.EVAL_SEED).images)
    table = lrp.conservation(model, x, 1)
    names = [row["layer"] for row in table.rows]
    assert names[0] == "conv1" and names[-1] == "fc" and any(n.endswith(".add") for n in names)
    scale = abs(table.score) + abs(table.input)
    for row in table.rows:
        assert abs(row["leak"]) < 1e-5 * scale, row
    absorbed = sum(row["bias"] + row["stabiliser"] for row in table.rows)
    assert abs(table.score - table.input - absorbed) < 1e-5 * scale
    assert abs(table.score - float(model(x)[:, 1].sum().detach())) < 1e-5 * scale
    assert abs(table.input - float(lrp.lrp(model, x, 1).sum())) < 1e-5 * scale
    assert "score" in str(table)


def test_batchnorm_is_merged_exactly_and_the_copy_shares_tensors():
    model = models.load("lesion_resnet")
    x = torch.randn(2, 3, 64, 64)
    net = lrp.canonize(model, x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert sum(isinstance(m, lrp.Add) for m in net.modules()) == 3
    assert torch.allclose(net(x), model(x), atol=1e-5)
    assert net.fc.weight is model.fc.weight  # nothing copied but the modules


@pytest.mark.parametrize("bad, message", [
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.GELU(), nn.Flatten(), nn.LazyLinear(2)), r"'1' \(GELU\)"),
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2)),
     r"BatchNorm '2' \(BatchNorm2d\): it reads the output of '1' \(ReLU\)"),
])
def test_unsupported_layer_raises_naming_it(bad, message):
    bad(torch.zeros(1, 3, 8, 8))  # materialise the lazy layer
    with pytest.raises(lrp.UnsupportedLayerError, match=message):
        lrp.lrp(bad, torch.randn(1, 3, 8, 8), 0)


def test_bad_options_raise():
    net = bias_free_net()
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="maxpool"):
        lrp.lrp(net, x, 0, maxpool="max")
    with pytest.raises(TypeError, match="composite"):
        lrp.lrp(net, x, 0, composite="chapter")
    hidden_box = lrp.Composite(first=None, lower=lrp.ZBox(-1, 1), upper=lrp.ZBox(-1, 1), dense=lrp.Zero())
    with pytest.raises(ValueError, match="z\\^B"):
        lrp.lrp(net, x, 0, composite=hidden_box)
    with pytest.raises(ValueError, match="epsilon"):
        lrp.Epsilon(-1)


# --------------------------------------------------------------------------- API contract
def state(model):
    return ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()],
            [getattr(m, "inplace", None) for m in model.modules()],
            {(i, k, tuple(v)) for i, m in enumerate(model.modules()) for k, v in vars(m).items()
             if "hooks" in k and isinstance(v, dict)},
            [t.detach().clone() for t in list(model.parameters()) + list(model.buffers())])


@pytest.mark.parametrize("name", ["lesion_cnn", "lesion_resnet"])
def test_model_unchanged_and_batch_equals_one_at_a_time(name):
    model = models.load(name)
    model.train()
    model.register_forward_hook(lambda *a: None)
    before = state(model)
    x = normalize(synthetic.make_lesions(3, "biased", seed=synthetic.EVAL_SEED).images)
    batch = lrp.lrp(model, x, [0, 1, 1])
    lrp.conservation(model, x, 1)
    lrp.lrp(model, x, 1, maxpool="average", return_layers=True)
    after = state(model)
    assert before[:4] == after[:4] and all(torch.equal(a, b) for a, b in zip(before[4], after[4]))
    singles = torch.cat([lrp.lrp(model, x[i:i + 1], t) for i, t in enumerate([0, 1, 1])])
    assert torch.allclose(batch, singles, rtol=1e-4, atol=1e-6)


def test_default_composite_works_with_pixel_bounds_on_the_lesion_models():
    x = normalize(synthetic.make_lesions(2, "biased", seed=synthetic.EVAL_SEED).images)
    low, high = data.pixel_bounds_like(x)
    for name in ("lesion_cnn", "lesion_cnn_clean"):
        model = models.load(name)
        default = lrp.lrp(model, x, 1)
        explicit = lrp.lrp(model, x, 1, composite=lrp.chapter(low, high))
        assert default.shape == x.shape and torch.isfinite(default).all()
        assert torch.allclose(default, explicit)


# --------------------------------------------------------------------------- the ruler
@pytest.mark.bundled("lesion_cnn", "lesion_cnn_clean")
def test_positive_relevance_on_the_ruler_shortcut_vs_clean():
    lesions = synthetic.make_lesions(120, "biased", seed=synthetic.TEST_SEED).select(label=1, ruler=True)
    x, ruler = normalize(lesions.images), lesions.ruler_mask.float()
    shares = {}
    for name in ("lesion_cnn", "lesion_cnn_clean"):
        positive = lrp.lrp(models.load(name), x, 1).sum(1).clamp(min=0)
        shares[name] = ((positive * ruler).sum((1, 2)) / positive.sum((1, 2)).clamp(min=1e-12)).mean().item()
    assert shares["lesion_cnn"] > shares["lesion_cnn_clean"], shares
    assert shares["lesion_cnn"] > ruler.mean().item(), (shares, ruler.mean().item())  # more than its area


# --------------------------------------------------------------------------- the rule-schedule widget
def test_lrp_widget_pure_functions():
    from chapter6_utils import widgets

    one = synthetic.make_lesions(8, "biased", seed=synthetic.EVAL_SEED).select(label=1, ruler=True)[:1]
    model = models.load("lesion_cnn")
    x, masks = normalize(one.images), (one.lesion_mask[0], one.ruler_mask[0])
    m, stats = widgets.lrp_view(model, x, 1, "zB", 0.25, 0.25, masks=masks)
    assert m.shape == (64, 64) and set(stats) >= {"score", "total", "positive_share", "ruler_share"}
    assert abs(stats["total"] - float(lrp.lrp(model, x, 1).sum())) < 1e-5 * (1 + abs(stats["total"]))  # the chapter's
    zero, _ = widgets.lrp_view(model, x, 1, "zero", 0.0, 0.0)
    assert abs(float(zero.sum()) - float(lrp.lrp(model, x, 1, composite=lrp.all_zero()).sum())) < 1e-4
    with pytest.raises(ValueError, match="first"):
        widgets.lrp_schedule("wsquare")
    fig = widgets.lrp_grid(model, x, 1, gamma_values=(0.0, 0.5), epsilon_values=(0.0, 0.25), masks=masks)
    assert len([ax for ax in fig.axes if ax.get_title()]) == 1 + 4
    box = widgets.lrp_explorer(model, x, 1, masks=masks)
    assert box.params() == {"first": "zB", "gamma": 0.25, "epsilon": 0.25} and len(box.cache) == 1
    box.sliders["gamma"].value = 1.0
    assert len(box.cache) == 2
