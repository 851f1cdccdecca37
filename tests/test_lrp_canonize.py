"""LRP canonisation that proves itself (chapter6_utils.lrp.canonize): BatchNorm merged
into the layer it reads in the forward pass (not the one registered before it), forward
into an unpadded reader, refused with its name where no exact merge exists (pre-activation
blocks, padded readers, shared tensors), and the canonised copy checked against the model
on the actual input."""
import copy

import pytest
import torch
import torch.nn as nn
import torchvision

from chapter6_utils import lrp
from chapter6_utils.lrp.canonize import UnsupportedLayerError


def rel(a, b):
    return float((a - b).norm() / b.norm())


def random_bn(model, seed=1):
    """Random BatchNorm statistics and affine parameters, so that a wrong merge shows."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and m.running_mean is not None:
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.3)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen))
    return model.eval()


def fold(conv, bn):
    """The merge by hand: one Conv2d/Linear computing bn(conv(x))."""
    out = copy.deepcopy(conv)
    s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    with torch.no_grad():
        out.weight.mul_(s.view(-1, *[1] * (conv.weight.dim() - 1)))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(s)
        out.bias = nn.Parameter((bias - bn.running_mean) * s + bn.bias)
    return out


class OutOfOrder(nn.Module):
    """Two conv-BatchNorm pairs registered crosswise: the BatchNorm registered after conv1
    is the one that normalises conv2's output, and the other way round."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn2 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn1 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()
        self.pool, self.flat, self.fc = nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 3)

    def forward(self, x):
        x = self.relu1(self.bn1(self.conv1(x)))
        return self.fc(self.flat(self.pool(self.relu2(self.bn2(self.conv2(x))))))


class PreActBlock(nn.Module):
    """He et al.'s (2016) pre-activation block: BatchNorm and ReLU before each convolution,
    the BatchNorm reading the block input (the previous residual sum)."""

    def __init__(self, c):
        super().__init__()
        # registered so that each BatchNorm follows a convolution, as a merge by registration
        # order would want
        self.conv1, self.bn2 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.conv2, self.bn1 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.relu1, self.relu2, self.add = nn.ReLU(), nn.ReLU(), lrp.Add()

    def forward(self, x):
        out = self.conv1(self.relu1(self.bn1(x)))
        out = self.conv2(self.relu2(self.bn2(out)))
        return self.add(out, x)


class PreActNet(nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.block1, self.block2 = PreActBlock(c), PreActBlock(c)
        self.bn, self.relu = nn.BatchNorm2d(c), nn.ReLU()  # the final BatchNorm after the last sum
        self.pool, self.flat, self.fc = nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 4)

    def forward(self, x):
        x = self.block2(self.block1(self.stem(x)))
        return self.fc(self.flat(self.pool(self.relu(self.bn(x)))))


def test_batchnorms_registered_out_of_forward_order_are_merged_where_they_are_read():
    torch.manual_seed(0)
    model = random_bn(OutOfOrder()).double()
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    net = lrp.canonize(model, x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    with torch.no_grad():
        assert rel(net(x), model(x)) < 1e-12
    # The same network folded by hand, in forward order: LRP must explain exactly it.
    by_hand = nn.Sequential(fold(model.conv1, model.bn1), nn.ReLU(), fold(model.conv2, model.bn2), nn.ReLU(),
                            nn.AdaptiveAvgPool2d(2), nn.Flatten(), copy.deepcopy(model.fc)).double().eval()
    for composite in (lrp.all_epsilon(1e-9), lrp.epsilon_gamma_box(-3.0, 3.0)):
        ours, ref = lrp.lrp(model, x, [0, 2], composite=composite), lrp.lrp(by_hand, x, [0, 2], composite=composite)
        assert rel(ours, ref) < 1e-10


def test_pre_activation_resnet_is_refused_naming_the_batchnorm():
    torch.manual_seed(0)
    model = random_bn(PreActNet())
    x = torch.randn(2, 3, 12, 12)
    for call in (lambda: lrp.lrp(model, x, 1), lambda: lrp.canonize(model, x), lambda: lrp.conservation(model, x, 1)):
        # block1.bn1 reads the stem's output, which the residual sum reads too
        with pytest.raises(UnsupportedLayerError, match=r"BatchNorm 'block1.bn1' \(BatchNorm2d\).*'block1.add' also"):
            call()
    # Past the first block: the BatchNorm that reads a residual sum is named as such.
    model.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), lrp.Add())
    model.stem.forward = lambda x, s=model.stem: s[1](s[0](x), s[0](x) * 0)  # noqa: E731 (a sum before block1)
    with pytest.raises(UnsupportedLayerError, match=r"'block1.bn1'.*the output of 'stem.1' \(Add\).*residual sum"):
        lrp.lrp(model, x, 1)


def test_batchnorm_after_relu_or_sum_is_refused_naming_it():
    after_relu = random_bn(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4), nn.Flatten(),
                                         nn.Linear(4 * 6 * 6, 2)))
    with pytest.raises(UnsupportedLayerError, match=r"BatchNorm '2' \(BatchNorm2d\): it reads the output of "
                                                    r"'1' \(ReLU\): a BatchNorm after a ReLU"):
        lrp.lrp(after_relu, torch.randn(1, 3, 8, 8), 0)


def test_batchnorm_before_an_unpadded_conv_or_linear_is_merged_forward_exactly():
    torch.manual_seed(0)
    # An input BatchNorm (a learnt normalisation) read by an unpadded, grouped, strided conv,
    # and a BatchNorm1d between a flatten and the classifier.
    model = random_bn(nn.Sequential(nn.BatchNorm2d(4), nn.Conv2d(4, 6, 3, stride=2, groups=2), nn.ReLU(),
                                    nn.Flatten(), nn.BatchNorm1d(6 * 5 * 5), nn.Linear(6 * 5 * 5, 3))).double()
    x = torch.randn(3, 4, 11, 11, dtype=torch.float64)
    net = lrp.canonize(model, x)
    assert not any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in net.modules())
    with torch.no_grad():
        assert rel(net(x), model(x)) < 1e-12
    # The first layer now reads the pixels, so z^B applies to it; conservation holds up to
    # what bias and stabilisers absorb.
    r = lrp.lrp(model, x, 1, composite=lrp.epsilon_gamma_box(-4.0, 4.0))
    assert r.shape == x.shape and torch.isfinite(r).all()
    table = lrp.conservation(model, x, 1, composite=lrp.all_epsilon(1e-9))
    assert table.rows[0]["layer"] == "1" and all(abs(row["leak"]) < 1e-8 for row in table.rows)


def test_batchnorm_before_a_padded_conv_is_refused():
    model = random_bn(nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                                    nn.Linear(4 * 8 * 8, 2)))
    with pytest.raises(UnsupportedLayerError, match=r"BatchNorm '0'.*the model's input.*'1' \(Conv2d\), pads"):
        lrp.lrp(model, torch.randn(1, 3, 8, 8), 0)


def test_shared_and_batch_statistics_batchnorms_are_refused():
    class Shared(nn.Module):  # the conv output goes to the BatchNorm and to a skip path
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.add = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3), lrp.Add()
            self.flat, self.fc = nn.Flatten(), nn.Linear(3 * 8 * 8, 2)

        def forward(self, x):
            a = self.conv(x)
            return self.fc(self.flat(self.add(self.bn(a), a)))

    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(UnsupportedLayerError, match=r"'bn'.*output of 'conv' \(Conv2d\), which 'add' also"):
        lrp.lrp(random_bn(Shared()), x, 0)
    batch_stats = nn.Sequential(nn.Conv2d(3, 3, 3), nn.BatchNorm2d(3, track_running_stats=False), nn.Flatten(),
                                nn.Linear(3 * 6 * 6, 2)).eval()
    with pytest.raises(UnsupportedLayerError, match=r"'1' \(BatchNorm2d\).*track_running_stats=False"):
        lrp.lrp(batch_stats, x, 0)
    twice = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(3 * 8 * 8, 2))
    bn = twice[1]
    twice.forward = lambda t: twice[3](twice[2](bn(bn(twice[0](t)))))  # one module called twice
    with pytest.raises(UnsupportedLayerError, match=r"'1' \(BatchNorm2d\).*calls it 2 times"):
        lrp.lrp(random_bn(twice), x, 0)


class _StdConv(nn.Conv2d):
    """A weight-standardised convolution (as in timm's ResNetV2): its forward is not a
    plain convolution of ``self.weight``."""

    def forward(self, x):
        centred = self.weight - self.weight.mean((1, 2, 3), keepdim=True)
        w = centred / (self.weight.std((1, 2, 3), keepdim=True) + 1e-5)
        return self._conv_forward(x, w, self.bias)


def test_subclass_with_its_own_forward_is_refused_and_unused_modules_are_ignored():
    model = nn.Sequential(_StdConv(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    with pytest.raises(UnsupportedLayerError, match=r"'0' \(_StdConv\).*subclass with its own forward"):
        lrp.lrp(model, torch.randn(1, 3, 8, 8), 0)

    class WithSpare(nn.Module):  # an unsupported module the forward never calls
        def __init__(self):
            super().__init__()
            self.spare = nn.GELU()
            self.net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))

        def forward(self, x):
            return self.net(x)

    torch.manual_seed(0)
    spare = WithSpare().eval()
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(lrp.lrp(spare, x, 1), lrp.lrp(spare.net, x, 1))


def test_the_copy_is_checked_against_the_model_and_the_parting_module_named():
    torch.manual_seed(0)
    model = random_bn(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                                    nn.Linear(4 * 6 * 6, 2)))
    x = torch.randn(2, 3, 8, 8)
    handle = model[2].register_forward_hook(lambda m, i, o: o * 2)  # a hook the copy does not carry
    try:
        with pytest.raises(UnsupportedLayerError, match=r"differs from the model's by .* relative \(tolerance "
                                                        r"0.00035 for torch.float32\); the two networks part at "
                                                        r"module '2' \(ReLU\)"):
            lrp.lrp(model, x, 0)
    finally:
        handle.remove()
    assert len(model[2]._forward_hooks) == 0

    class Functional(nn.Module):  # reads the merged conv's output outside any module
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.relu = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()
            self.flat, self.fc = nn.Flatten(), nn.Linear(4 * 6 * 6, 2)

        def forward(self, x):
            a = self.conv(x)
            return self.fc(self.flat(self.relu(self.bn(a)))) + a.mean()

    with pytest.raises(UnsupportedLayerError, match="part at their outputs"):
        lrp.lrp(random_bn(Functional()), x, 0)


def test_composite_follows_the_forward_order_not_the_registration_order():
    class HeadFirst(nn.Module):
        def __init__(self):
            super().__init__()
            # (the input check reads the channel count off the first Conv2d registered: conv1 stays first of them)
            self.fc, self.conv1, self.conv2 = nn.Linear(4 * 4 * 4, 2), nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3)
            self.relu1, self.relu2, self.flat = nn.ReLU(), nn.ReLU(), nn.Flatten()

        def forward(self, x):
            return self.fc(self.flat(self.relu2(self.conv2(self.relu1(self.conv1(x))))))

    torch.manual_seed(0)
    model = HeadFirst().eval()
    x = torch.randn(1, 3, 8, 8)
    table = lrp.conservation(model, x, 1)  # the chapter's composite: z^B on the layer reading the pixels
    assert [(r["layer"], r["rule"]) for r in table.rows] == [("conv1", "zB"), ("conv2", "gamma(0.25)"),
                                                            ("fc", "epsilon(1e-06)")]


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_torchvision_resnets_stay_exact_and_match_zennit(arch):
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonGammaBox
    from zennit.torchvision import ResNetCanonizer

    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)().eval().requires_grad_(False)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 0.0  # Zennit keeps x / sqrt(1 + eps) after merging; with eps = 0 both are exact
    random_bn(model)
    x = torch.randn(1, 3, 64, 64)
    net = lrp.canonize(model, x)
    with torch.no_grad():
        assert rel(net(x), model(x)) < 1e-5
    ours = lrp.lrp(model, x, 3, composite=lrp.epsilon_gamma_box(-3.0, 3.0))
    composite = EpsilonGammaBox(low=-3.0, high=3.0, epsilon=1e-6, gamma=0.25, canonizers=[ResNetCanonizer()])
    with Gradient(model=model, composite=composite) as attributor:
        _, theirs = attributor(x, lambda out: torch.eye(out.shape[1])[[3]] * out)
    assert rel(ours, theirs) < 1e-4
