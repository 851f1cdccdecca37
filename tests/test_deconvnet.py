"""Deconvnet, guided backpropagation and the Zeiler-Fergus projection (chapter6_utils.deconvnet)."""
import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.stats import spearmanr

from chapter6_utils import data, models, saliency, synthetic
from chapter6_utils import deconvnet as D


@pytest.fixture(scope="module")
def cnn(device):
    return models.load("lesion_cnn", device=device)


@pytest.fixture(scope="module")
def vgg(device):
    torch.manual_seed(0)
    model = models.load("vgg16", pretrained=False, device=device)
    # Captum computes weight gradients too; a test model can spare them (ours freezes them itself).
    return model.requires_grad_(False)


@pytest.fixture(scope="module")
def lesions(device):
    s = synthetic.make_lesions(48, "biased", seed=synthetic.TEST_SEED)
    return s, data.normalize(s.images).to(device)


def fingerprint(model):
    """Everything a method could leave behind: values, flags, hooks, requires_grad."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    mods = [(n, m.training, getattr(m, "inplace", None), len(m._forward_hooks), len(m._forward_pre_hooks),
             len(m._backward_hooks)) for n, m in model.named_modules()]
    return state, mods, [p.requires_grad for p in model.parameters()]


def assert_same(model, before):
    state, mods, grads = fingerprint(model)
    assert mods == before[1] and grads == before[2]
    for k, v in before[0].items():
        assert torch.equal(state[k], v), k


def test_relu_rules_figure_7():
    a = torch.tensor([5.0, 3.0, -1.0, 4.0])
    g = torch.tensor([-0.5, 0.8, -0.3, 0.6])
    assert D.relu_backward(a, g, "backprop").tolist() == pytest.approx([-0.5, 0.8, 0.0, 0.6])
    assert D.relu_backward(a, g, "deconvnet").tolist() == pytest.approx([0.0, 0.8, 0.0, 0.6])
    assert D.relu_backward(a, g, "guided").tolist() == pytest.approx([0.0, 0.8, 0.0, 0.6])
    a2 = torch.tensor([-1.0, 2.0])
    g2 = torch.tensor([0.7, -0.2])
    assert D.relu_backward(a2, g2, "deconvnet").tolist() == pytest.approx([0.7, 0.0])  # mask ignored
    assert D.relu_backward(a2, g2, "guided").tolist() == pytest.approx([0.0, 0.0])
    with pytest.raises(ValueError, match="rule must be one of"):
        D.relu_backward(a, g, "lrp")


@pytest.mark.parametrize("which", ["cnn", "vgg"])
def test_equal_to_captum(which, cnn, vgg, lesions, device):
    from captum.attr import Deconvolution, GuidedBackprop

    model = cnn if which == "cnn" else vgg
    x = (lesions[1][:4] if which == "cnn"
         else torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)).to(device))
    target = [1, 0, 1, 1] if which == "cnn" else [3, 7]
    before = fingerprint(model)
    for ours, theirs in [(D.deconvnet, Deconvolution), (D.guided_backprop, GuidedBackprop)]:
        a = ours(model, x, target)
        assert_same(model, before)
        with pytest.warns(UserWarning):
            b = theirs(model).attribute(x.clone(), target=target)
        assert a.shape == x.shape
        assert a.abs().max() > 0
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert_same(model, before)


def test_backprop_rule_is_the_gradient_and_batches_match(cnn, lesions):
    x = lesions[1][:3]
    g = saliency.gradient(cnn, x, 1)
    xx = x.clone().requires_grad_(True)
    with D.relu_rule(cnn, "backprop"):
        out = cnn(xx)[:, 1].sum()
    (ours,) = torch.autograd.grad(out, xx)
    torch.testing.assert_close(ours, g, atol=1e-7, rtol=0)
    batch = D.guided_backprop(cnn, x, 1)
    one = torch.cat([D.guided_backprop(cnn, x[i:i + 1], 1) for i in range(3)])
    torch.testing.assert_close(batch, one, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(D.guided_backprop(cnn, x, 1), D.deconvnet(cnn, x, 1))


def _deconv_gradient_of_max(model, x, layer, channel):
    """The rule road: the deconvnet-rule backward of the strongest activation A, seeded
    with A's value (A * dA/dx when A > 0)."""
    out = {}
    h = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: out.__setitem__("a", o))
    xx = x.clone().requires_grad_(True)
    try:
        with D.relu_rule(model, "deconvnet"):
            model(xx)
    finally:
        h.remove()
    a = out["a"][:, channel].flatten(1)
    value, pos = a.max(1)
    (g,) = torch.autograd.grad(a.gather(1, pos[:, None]).squeeze(1), xx, grad_outputs=value.detach())
    return g


@pytest.mark.parametrize("which,layer,channel", [("cnn", "features.3", 2), ("cnn", "features.11", 7),
                                                 ("cnn", "features.13", 4), ("vgg", "features.29", 5),
                                                 ("vgg", "features.14", 0)])
def test_project_meets_the_deconvnet_gradient(which, layer, channel, cnn, vgg, lesions, device):
    model = cnn if which == "cnn" else vgg
    x = (lesions[1][:3] if which == "cnn"
         else torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2)).to(device))
    before = fingerprint(model)
    p = D.project(model, x, layer, channel)
    assert_same(model, before)
    ref = _deconv_gradient_of_max(model, x, layer, channel)
    assert p.shape == x.shape and ref.abs().max() > 0
    torch.testing.assert_close(p, ref, atol=1e-5 * float(ref.abs().max()), rtol=0)
    assert D.project(model, x, layer, channel)[0].abs().sum() > 0
    # The module object is accepted as well as its name; more activations give more signal.
    p2 = D.project(model, x, dict(model.named_modules())[layer], channel)
    torch.testing.assert_close(p, p2)
    assert D.project(model, x, layer, channel, top_k=4).abs().sum() >= p.abs().sum() * (1 - 1e-6)


def test_unpool_uses_the_switches():
    pool = nn.Sequential(nn.MaxPool2d(2))
    x = torch.tensor([[1.0, 2.0, 0.0, 1.0], [4.0, 3.0, 5.0, 2.0], [0.0, 1.0, 2.0, 2.5], [3.0, 0.5, 1.0, 0.0]])
    p = D.project(pool, x.view(1, 1, 4, 4).expand(1, 3, 4, 4).contiguous(), "0", 0, top_k=4)
    expected = torch.tensor([[0, 0, 0, 0], [4.0, 0, 5.0, 0], [0, 0, 0, 2.5], [3.0, 0, 0, 0]])
    torch.testing.assert_close(p[0, 0], expected)
    assert p[0, 1:].abs().sum() == 0


class _FunctionalNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.relu, self.conv2, self.fc = nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(F.relu(self.conv2(self.relu(self.conv(x)))).mean((2, 3)))


def test_errors_name_the_problem_and_leave_the_model_alone(cnn, lesions):
    x = lesions[1][:2]
    net = _FunctionalNet()
    before = fingerprint(net)
    for fn in (D.deconvnet, D.guided_backprop):
        with pytest.raises(TypeError, match=r"torch\.nn\.functional\.relu.*'_FunctionalNet'.*nn\.ReLU module"):
            fn(net, torch.randn(1, 3, 16, 16), 0)
        assert_same(net, before)
    with pytest.raises(ValueError, match="cannot invert 'fc' .*previous module 'conv2'"):
        D.project(net, torch.randn(1, 3, 16, 16), "fc", 0)
    assert_same(net, before)
    with pytest.raises(ValueError, match="no nn.ReLU"):
        no_relu = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(1), nn.Linear(72, 2))
        D.guided_backprop(no_relu, torch.randn(1, 3, 8, 8), 0)
    resnet = models.load("lesion_resnet")
    before = fingerprint(resnet)
    with pytest.raises(ValueError, match=r"cannot invert 'bn1' \(BatchNorm2d\)"):
        D.project(resnet, x.cpu(), "layer1", 0)
    assert_same(resnet, before)
    before = fingerprint(cnn)
    with pytest.raises(ValueError, match=r"cannot invert 'classifier.0' \(Flatten\)"):
        D.project(cnn, x, "classifier.1", 0)
    with pytest.raises(ValueError, match="'features.99' is not a module"):
        D.project(cnn, x, "features.99", 0)
    with pytest.raises(ValueError,
                       match=r"channel must be an int >= 0 and <= 63 \(layer 'features.11' has 64 channels\), got 64"):
        D.project(cnn, x, "features.11", 64)
    with pytest.raises(ValueError, match="top_k"):
        D.project(cnn, x, "features.11", 0, top_k=0)
    assert_same(cnn, before)


def test_top_activations(cnn, lesions):
    x = lesions[1][:32]
    t = D.top_activations(cnn, x, "features.8", 3, k=5)
    assert t.value.shape == (5,) and bool((t.value[:-1] >= t.value[1:]).all())
    out = {}
    h = cnn.features[8].register_forward_hook(lambda m, i, o: out.__setitem__("a", o))
    with torch.no_grad():
        cnn(x)
    h.remove()
    best = out["a"][:, 3].flatten(1).max(1).values
    torch.testing.assert_close(t.value, best.topk(5).values)
    i, (r, c) = int(t.index[0]), t.position[0].tolist()
    assert out["a"][i, 3, r, c] == t.value[0]
    # Receptive field of features.8 (4 convs 3x3, one 2x2 pool): 14 pixels, centred near 2*r.
    top, left, bottom, right = t.box[0]
    assert bottom - top <= 14 and right - left <= 14 and top <= 2 * r <= bottom
    assert t.patch[0].shape[-2:] == (bottom - top, right - left)
    assert D.receptive_field(cnn, x, "features.8", r, c) == t.box[0]
    assert D.receptive_field(cnn, x, "features.8", 10, 10) == (14, 14, 28, 28)  # 14 px, stride 2, offset -6
    torch.testing.assert_close(t.projection[0:1], D.project(cnn, x[i:i + 1], "features.8", 3))
    # The projection lives inside the receptive field.
    outside = t.projection[0].clone()
    outside[:, top:bottom, left:right] = 0
    assert outside.abs().sum() == 0 and t.projection_patch[0].abs().sum() > 0


def _randomised(model, scope, seed=0):
    copy_ = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name, m in copy_.named_modules():
            if name.startswith(scope) and isinstance(m, (nn.Conv2d, nn.Linear)):
                m.reset_parameters()
    return copy_


def _mean_spearman(a, b):
    a, b = a.abs().sum(1).flatten(1).cpu().numpy(), b.abs().sum(1).flatten(1).cpu().numpy()
    return float(np.mean([spearmanr(u, v)[0] for u, v in zip(a, b)]))


def test_guided_backprop_ignores_the_randomised_head(cnn, device):
    s = synthetic.make_lesions(64, "biased", seed=synthetic.TEST_SEED).select(label=1)
    x = data.normalize(s.images[:12]).to(device)
    before = fingerprint(cnn)
    rand = _randomised(cnn, "classifier")
    assert_same(cnn, before)  # the loaded model is untouched
    rho = {name: _mean_spearman(fn(cnn, x, 1), fn(rand, x, 1))
           for name, fn in [("gradient", saliency.gradient), ("guided", D.guided_backprop)]}
    assert rho["guided"] > rho["gradient"] + 0.05, rho


def test_projection_widget_functions(cnn, lesions):
    from chapter6_utils import widgets

    x = lesions[1][:24]
    top = widgets.projection_view(cnn, x, "features.8", 3, k=4)
    assert len(top.patch) == 4 and top.layer == "features.8"
    fig = widgets.projection_figure(top, style="signed")
    assert len(fig.axes) == 2 * 4 + 1  # patches, projections, one shared colorbar
    assert fig.axes[4 + 1].images[0].cmap.name == "RdBu_r"
    lo, hi = fig.axes[4 + 1].images[0].get_clim()
    assert lo == -hi > -float("inf") and hi > 0
    # the default: each projection a colour image with its own contrast, as Zeiler & Fergus
    fig = widgets.projection_figure(top)
    assert len(fig.axes) == 2 * 4  # no colorbar: every patch has its own scale
    shown = fig.axes[1].images[0].get_array()
    assert shown.shape == tuple(top.projection_patch[0].shape[1:]) + (3,)
    assert float(shown.min()) >= 0 and float(shown.max()) <= 1 and float(shown.std()) > 0
    grid = widgets.projection_grid(cnn, x, [("features.3", 1), ("features.8", 3)], k=3)
    assert len(grid.axes) == 2 * (2 * 3)
    with pytest.raises(ValueError, match="style must be one of"):
        widgets.projection_grid(cnn, x, [("features.3", 1)], k=3, style="grey")
    box = widgets.projection_explorer(cnn, x, ["features.3", "features.8"], k=3)
    assert box.sliders["channel"].max == 63
    box.sliders["layer"].value = "features.8"
    assert ("features.8", 0) in box.cache and len(box.cache) == 2


def test_projection_rgb_gives_each_patch_its_own_contrast():
    from chapter6_utils.widgets.deconvnet import projection_rgb

    torch.manual_seed(0)
    p = torch.randn(3, 5, 7)
    img = projection_rgb(p)
    assert img.shape == (5, 7, 3) and img.min() >= 0 and img.max() <= 1
    assert np.allclose(img, projection_rgb(1e-3 * p))  # the strength does not matter, the pattern does
    assert np.allclose(projection_rgb(torch.zeros(3, 4, 4)), 0.5)  # zero is mid-grey
    red = torch.zeros(3, 2, 2)
    red[0] = 1.0
    assert np.allclose(projection_rgb(red)[..., 0], 1.0) and np.allclose(projection_rgb(red)[..., 1:], 0.5)

# --------------------------------------------------------------------------- any stride, padding, dilation
def _chains():
    """Plain Conv2d/ReLU/MaxPool2d chains the bundled models never exercise: strides that
    leave rows unread by any window start, padding, dilation, groups, 'same' with an even
    kernel, copying padding modes, max-pooling with padding, dilation and ceil_mode."""
    return {
        "stride2-pad1": nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(),
                                      nn.Conv2d(4, 5, 3, stride=2, padding=1)),
        "dilated": nn.Sequential(nn.Conv2d(3, 4, 3, padding=2, dilation=2), nn.ReLU(),
                                 nn.Conv2d(4, 5, 5, stride=3, padding=1, dilation=2)),
        "rect-kernels": nn.Sequential(nn.Conv2d(3, 4, (3, 5), stride=(2, 3), padding=(1, 2), dilation=(1, 2)),
                                      nn.ReLU(), nn.Conv2d(4, 5, (4, 2), stride=(3, 1))),
        "pool-ceil": nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(3, 2, padding=1, ceil_mode=True),
                                   nn.Conv2d(4, 5, 2, stride=2)),
        "pool-dilated": nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2, dilation=2),
                                      nn.Conv2d(4, 5, 3, stride=2, padding=1)),
        "same-even-groups": nn.Sequential(nn.Conv2d(3, 6, 4, padding="same"), nn.ReLU(),
                                          nn.Conv2d(6, 5, 3, stride=2, padding="valid"),
                                          nn.ReLU(), nn.Conv2d(5, 5, 3, stride=2, padding=1, groups=5)),
        "reflect": nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1, padding_mode="reflect"), nn.ReLU(),
                                 nn.Conv2d(4, 5, 3, padding=2, dilation=2, padding_mode="circular"), nn.ReLU(),
                                 nn.Conv2d(5, 5, 3, stride=2, padding=1, padding_mode="replicate")),
    }


@pytest.mark.parametrize("size", [(13, 11), (16, 16), (17, 9)])
@pytest.mark.parametrize("name", list(_chains()))
def test_project_equals_the_true_reverse_pass_on_any_geometry(name, size):
    torch.manual_seed(0)
    net = _chains()[name].double()
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    layer = str(len(net) - 1)
    before = fingerprint(net)
    for channel in range(3):
        p = D.project(net, x, layer, channel)
        ref = _deconv_gradient_of_max(net, x, layer, channel)
        assert p.shape == x.shape
        torch.testing.assert_close(p, ref, atol=1e-12 * (1 + float(ref.abs().max())), rtol=0)
    # The last row and column are reached where the true reverse pass reaches them.
    assert_same(net, before)


def test_strided_padded_conv_keeps_the_last_row():
    conv = nn.Conv2d(1, 1, 3, stride=2, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.arange(1.0, 10.0).view(1, 1, 3, 3))
    p = D.project(nn.Sequential(conv), torch.ones(1, 1, 4, 4), "0", 0, top_k=4)[0, 0]
    # Output (2x2) = [[28, 39], [42, 45]]; row 3 of the input is read by the windows of output row 1
    # through kernel row 2 (weights 7, 8, 9): 42*7 + ... by hand.
    out = conv(torch.ones(1, 1, 4, 4))[0, 0].detach()
    w = conv.weight[0, 0].detach()
    last_row = [float(out[1, 0] * w[2, 1]), float(out[1, 0] * w[2, 2] + out[1, 1] * w[2, 0]),
                float(out[1, 1] * w[2, 1]), float(out[1, 1] * w[2, 2])]
    assert p[3].tolist() == pytest.approx(last_row) and min(last_row) > 0


def _seen_box(net, layer_index, size, row, col):
    """The receptive field measured: the bounding box of the pixels whose change moves unit
    (row, col) of channel 0 (positive weights, no bias: every tap adds, so a large bump on
    a pixel in the field always shows, through max-pooling too)."""
    net = copy.deepcopy(net).double()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.copy_(m.weight.abs() + 0.1)
                if m.bias is not None:
                    m.bias.zero_()
    sub = net[:layer_index + 1]
    h, w = size
    base = torch.rand(1, 3, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    bumped = base.repeat(h * w, 1, 1, 1)
    bumped.view(h * w, 3, h * w)[torch.arange(h * w), :, torch.arange(h * w)] += 1e4
    with torch.no_grad():
        moved = (sub(bumped)[:, 0, row, col] - sub(base)[0, 0, row, col]).abs() > 1e-6
    ys, xs = torch.nonzero(moved.view(h, w), as_tuple=True)
    if len(ys) == 0:
        return (0, 0, 0, 0)
    return int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1


@pytest.mark.parametrize("name", list(_chains()))
def test_receptive_field_is_what_the_unit_can_see(name):
    torch.manual_seed(0)
    net = _chains()[name]
    size = (17, 13)
    x = torch.randn(1, 3, *size)
    for layer_index in range(len(net)):
        with torch.no_grad():
            h, w = net[:layer_index + 1](x).shape[-2:]
        for row, col in {(0, 0), (h - 1, w - 1), (h // 2, w // 2), (0, w - 1)}:
            ours = D.receptive_field(net, x, str(layer_index), row, col)
            assert ours == _seen_box(net, layer_index, size, row, col), (layer_index, row, col)
    with pytest.raises(ValueError, match=r"row must be an int >= 0 and <= \d+ \(a row of the layer's"):
        D.receptive_field(net, x, str(len(net) - 1), 99, 0)
    with pytest.raises(TypeError, match="col must be an int"):
        D.receptive_field(net, x, str(len(net) - 1), 0, 1.5)


def test_top_activations_on_a_strided_dilated_net():
    torch.manual_seed(1)
    net = _chains()["pool-ceil"].double()
    images = torch.randn(7, 3, 15, 13, dtype=torch.float64)
    t = D.top_activations(net, images, "3", 2, k=3, batch_size=2)  # several search batches
    for j, i in enumerate(t.index.tolist()):
        ref = _deconv_gradient_of_max(net, images[i:i + 1], "3", 2)
        torch.testing.assert_close(t.projection[j:j + 1], ref, atol=1e-12 * float(ref.abs().max()), rtol=0)
        r, c = t.position[j].tolist()
        assert t.box[j] == D.receptive_field(net, images, "3", r, c)
        top, left, bottom, right = t.box[j]
        outside = t.projection[j].clone()
        outside[:, top:bottom, left:right] = 0
        assert outside.abs().sum() == 0
    for bad, match in [(dict(k=0), "k must be an int >= 1"), (dict(batch_size=0), "batch_size must be an int >= 1"),
                       (dict(batch_size=-1), "batch_size"), (dict(k=2.0), "k must be an int")]:
        with pytest.raises((ValueError, TypeError), match=match):
            D.top_activations(net, images, "3", 2, **bad)
    with pytest.raises(ValueError, match="return_indices"):
        D.project(nn.Sequential(nn.MaxPool2d(2, return_indices=True)), images, "0", 0)
