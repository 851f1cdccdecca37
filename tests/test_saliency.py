"""saliency: gradient, gradient x input, vanilla saliency (equation 1) and SmoothGrad (equation 2),
book/equations.md."""
import pytest
import torch
import torch.nn as nn
import torchvision
from captum.attr import NoiseTunnel, Saliency

from chapter6_utils import models, saliency, synthetic
from chapter6_utils.data import normalize
from chapter6_utils.saliency import gradient, gradient_x_input, saliency_map, smoothgrad

METHODS = [gradient, gradient_x_input, saliency_map, smoothgrad]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(autouse=True)
def no_tf32():
    """Full float32 on CUDA: TF32 convolutions (cuDNN's default on Ampere and later) round
    to ~1e-3, and the batch a copy is computed in changes the algorithm, so comparisons of
    batched with one-at-a-time maps would measure TF32, not the code."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def lesion_batch(n=3, dev="cpu"):
    return normalize(synthetic.make_lesions(n, "biased", seed=synthetic.TEST_SEED).images).to(dev)


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    return models.load("lesion_cnn")  # random weights when none are bundled: fine for equalities


def vanilla_saliency(model, input_tensor, class_idx):
    """The chapter's snippet, verbatim but for returning a tensor."""
    x = input_tensor.clone().detach().requires_grad_(True)
    logits = model(x)
    score = logits[0, class_idx]
    model.zero_grad()
    score.backward()
    sal = x.grad.abs().squeeze(0)  # (3, H, W)
    sal, _ = sal.max(dim=0)  # (H, W) - max over channels
    return sal


def assert_close(a, b, tol=1e-6):
    """Equal up to ``tol`` times the largest value: random-weight maps are tiny (~1e-4),
    so an absolute tolerance would let almost anything pass."""
    scale = b.abs().max().item()
    assert scale > 0
    assert (a - b).abs().max().item() <= tol * scale, (a - b).abs().max().item() / scale


def cnn64_on(dev):
    """lesion_cnn in float64. Comparisons of maps computed in batches of different sizes
    run in float64: in float32 the rounding differs with the batch size, and with trained
    weights that is enough to flip a ReLU or a max-pool switch near a tie and move one
    pixel of the map by 1e-4 of its peak: a property of float32, not of the code."""
    torch.manual_seed(0)
    return models.load("lesion_cnn", device=dev).double()


# --------------------------------------------------------------------------- gradient
def _models_for_captum():
    torch.manual_seed(0)
    yield "lesion_cnn", models.load("lesion_cnn"), 64
    yield "lesion_resnet", models.load("lesion_resnet"), 64
    yield "lesion_vit", models.load("lesion_vit"), 64
    yield "torchvision resnet18", torchvision.models.resnet18(weights=None).eval(), 64


@pytest.mark.parametrize("dev", DEVICES)
def test_gradient_equals_captum_saliency(dev):
    for name, model, size in _models_for_captum():
        model = model.to(dev)
        torch.manual_seed(1)
        x = torch.randn(2, 3, size, size, device=dev)
        target = [1, 0]
        ours = gradient(model, x, target)
        ref = Saliency(model).attribute(x.clone().requires_grad_(), target=target, abs=False)
        assert ours.shape == x.shape and ours.device == x.device, name
        assert ours.abs().sum() > 0, name
        assert_close(ours, ref)


def test_gradient_x_input_is_gradient_times_input(cnn):
    x = lesion_batch()
    assert torch.equal(gradient_x_input(cnn, x, 1), gradient(cnn, x, 1) * x)


def test_saliency_map_equals_the_chapters_snippet():
    cnn = cnn64_on("cpu")
    x = lesion_batch(4).double()
    target = [0, 1, 1, 0]
    ours = saliency_map(cnn, x, target)
    assert ours.shape == (4, 64, 64)
    for i in range(4):
        assert_close(ours[i], vanilla_saliency(cnn, x[i:i + 1], target[i]))


@pytest.mark.parametrize("method", [gradient, gradient_x_input, saliency_map])
def test_batch_equals_one_at_a_time(method):
    cnn = cnn64_on("cpu")
    x = lesion_batch(3).double()
    target = torch.tensor([1, 0, 1])
    batch = method(cnn, x, target)
    for i in range(3):
        assert_close(batch[i:i + 1], method(cnn, x[i:i + 1], int(target[i])))


def test_target_forms_agree(cnn):
    x = lesion_batch(2)
    ref = saliency_map(cnn, x, [1, 1])
    for t in (1, (1, 1), torch.tensor([1, 1]), torch.tensor(1)):
        assert torch.equal(saliency_map(cnn, x, t), ref)
    assert not torch.equal(saliency_map(cnn, x, 0), ref)


def test_works_in_float64_and_under_no_grad(cnn):
    x = lesion_batch(2)
    m64 = models.build("lesion_cnn").double().eval()
    assert saliency_map(m64, x.double(), 1).dtype == torch.float64
    with torch.no_grad():
        assert torch.equal(saliency_map(cnn, x, 1), saliency_map(cnn, x, 1))
        assert saliency_map(cnn, x, 1).sum() > 0


# --------------------------------------------------------------------------- smoothgrad
def reference_smoothgrad(model, x, target, n_samples, sigma, seed):
    """Equation 2 image by image, copy by copy, with the noise smoothgrad draws."""
    out = []
    for i in range(len(x)):
        xi = x[i:i + 1]
        lo, hi = xi.min(), xi.max()
        acc = torch.zeros_like(xi[0, 0])
        noise = saliency._noise(seed, n_samples, xi.shape[1:], xi)
        for t in range(n_samples):
            eps = noise[t]
            noisy = (xi + eps * sigma * (hi - lo)).clamp(lo, hi)
            acc += vanilla_saliency(model, noisy, target[i])
        out.append(acc / n_samples)
    return torch.stack(out)


@pytest.mark.parametrize("dev", DEVICES)
def test_smoothgrad_matches_equation_2_loop(dev):
    cnn = cnn64_on(dev)
    x = lesion_batch(3, dev).double()
    x[1] *= 3  # another value range: the noise must follow each image's own range
    target = [1, 0, 1]
    ours = smoothgrad(cnn, x, target, n_samples=6, sigma=0.2, seed=5)
    assert ours.shape == (3, 64, 64) and ours.device.type == dev and (ours >= 0).all()
    assert_close(ours, reference_smoothgrad(cnn, x, target, 6, 0.2, 5), 1e-9)


@pytest.mark.parametrize("dev", DEVICES)
def test_smoothgrad_is_independent_of_batching(dev):
    cnn = cnn64_on(dev)
    x = lesion_batch(3, dev).double()
    target = [1, 0, 1]
    ref = smoothgrad(cnn, x, target, n_samples=7, seed=3)
    for bs in (1, 2, 5, 21, 100):
        assert_close(smoothgrad(cnn, x, target, n_samples=7, seed=3, batch_size=bs), ref, 1e-9)
    for i in range(3):  # a batch gives the maps of its images one at a time
        assert_close(smoothgrad(cnn, x[i:i + 1], target[i], n_samples=7, seed=3), ref[i:i + 1], 1e-9)


def reference_smoothgrad_signed(model, x, target, n_samples, sigma, seed):
    """Smilkov et al.'s SmoothGrad image by image: the mean of the signed gradients of the
    noisy copies (the noise smoothgrad draws), then |.| and the max over channels."""
    out = []
    for i in range(len(x)):
        xi = x[i:i + 1]
        lo, hi = xi.min(), xi.max()
        acc = torch.zeros_like(xi[0])
        noise = saliency._noise(seed, n_samples, xi.shape[1:], xi)
        for t in range(n_samples):
            eps = noise[t]
            noisy = (xi + eps * sigma * (hi - lo)).clamp(lo, hi).requires_grad_(True)
            model(noisy)[0, target[i]].backward()
            acc += noisy.grad[0]
        out.append((acc / n_samples).abs().amax(dim=0))
    return torch.stack(out)


@pytest.mark.parametrize("dev", DEVICES)
def test_smoothgrad_signed_matches_the_papers_loop(dev):
    cnn = cnn64_on(dev)
    x = lesion_batch(3, dev).double()
    x[1] *= 3
    target = [1, 0, 1]
    ours = smoothgrad(cnn, x, target, n_samples=6, sigma=0.2, seed=5, average="signed")
    assert ours.shape == (3, 64, 64) and ours.device.type == dev and (ours >= 0).all()
    assert_close(ours, reference_smoothgrad_signed(cnn, x, target, 6, 0.2, 5), 1e-9)
    for bs in (1, 4, 100):  # batching changes nothing here either
        assert_close(smoothgrad(cnn, x, target, n_samples=6, sigma=0.2, seed=5, average="signed",
                                batch_size=bs), ours, 1e-9)
    # |mean of gradients| <= mean of |gradients|, pixel by pixel, with the same noise
    magnitude = smoothgrad(cnn, x, target, n_samples=6, sigma=0.2, seed=5)
    assert (ours <= magnitude * (1 + 1e-12)).all() and not torch.allclose(ours, magnitude)


class Absolute(nn.Module):
    """S_0(x) = sum |x|: at x = 0 every input's gradient is the sign of its noise."""

    def forward(self, x):
        s = x.abs().flatten(1).sum(1, keepdim=True)
        return torch.cat([s, -s], dim=1)


def test_signed_average_cancels_sign_flips_and_magnitude_does_not():
    # The case that separates the two: gradients +1 or -1 at random from copy to copy.
    # Averaging magnitudes gives exactly 1 everywhere; averaging signs gives about
    # 1/sqrt(n) (the mean of n random signs), the "speckle averages out" of the paper.
    x = torch.zeros(1, 3, 16, 16)
    x[0, 0, 0, 0], x[0, 0, 0, 1] = -1.0, 1.0  # a value range for the noise
    n = 64
    magnitude = smoothgrad(Absolute(), x, 0, n_samples=n, sigma=0.1, seed=0)
    signed = smoothgrad(Absolute(), x, 0, n_samples=n, sigma=0.1, seed=0, average="signed")
    assert torch.allclose(magnitude, torch.ones_like(magnitude))
    assert signed.mean() < 4 / n ** 0.5, signed.mean()  # max over 3 channels of |mean of 64 signs|
    assert (signed > 0).any()


def test_smoothgrad_seeds(cnn):
    x = lesion_batch(2)
    a = smoothgrad(cnn, x, 1, n_samples=4, seed=0)
    assert torch.equal(a, smoothgrad(cnn, x, 1, n_samples=4, seed=0))
    assert not torch.allclose(a, smoothgrad(cnn, x, 1, n_samples=4, seed=1))
    torch.manual_seed(9)  # seed=None follows torch's global generator
    b = smoothgrad(cnn, x, 1, n_samples=4)
    torch.manual_seed(9)
    assert torch.equal(b, smoothgrad(cnn, x, 1, n_samples=4))
    assert not torch.allclose(b, smoothgrad(cnn, x, 1, n_samples=4))


def test_smoothgrad_without_noise_is_saliency_map(cnn):
    x = lesion_batch(3)
    assert torch.equal(smoothgrad(cnn, x, [0, 1, 1], n_samples=1, sigma=0), saliency_map(cnn, x, [0, 1, 1]))
    # Noise changes the map: the test above is not vacuous.
    assert not torch.allclose(smoothgrad(cnn, x, 1, n_samples=1, seed=0), saliency_map(cnn, x, 1))


def test_default_batch_size_scales_with_the_image():
    assert saliency.default_batch_size(torch.zeros(1, 3, 224, 224)) == 8
    assert saliency.default_batch_size(torch.zeros(5, 3, 64, 64)) == 98
    assert saliency.default_batch_size(torch.zeros(1, 3, 2000, 2000)) == 1


def test_smoothgrad_checks_every_target_whatever_the_batching(cnn):
    # With batch_size=1 the first forward holds image 0 only; image 1's target is wrong.
    with pytest.raises(ValueError, match=r"target 2 is out of range.*\[0, 2\)"):
        smoothgrad(cnn, lesion_batch(2), [0, 2], n_samples=2, batch_size=1)


@pytest.mark.parametrize("options, match", [
    ({"n_samples": 0}, "n_samples must be an int >= 1"),
    ({"n_samples": 2.5}, "n_samples must be an int >= 1"),
    ({"sigma": -0.1}, "sigma must be a finite number >= 0"),
    ({"sigma": float("nan")}, "sigma must be a finite number >= 0"),
    ({"sigma": float("inf")}, "sigma must be a finite number >= 0"),
    ({"batch_size": 0}, "batch_size must be None or an int >= 1"),
    ({"seed": 1.5}, "seed must be None or an int"),
    ({"average": "mean"}, "average must be 'magnitude'.*or 'signed'"),
    ({"average": None}, "average must be 'magnitude'.*or 'signed'"),
])
def test_smoothgrad_rejects_bad_options(cnn, options, match):
    with pytest.raises((ValueError, TypeError), match=match):
        smoothgrad(cnn, lesion_batch(1), 0, **options)


class Interior(nn.Module):
    """A one-channel CNN that reads only the interior pixels. The border holds the image's
    extreme values, so that the clamp of equation 2 never reaches a pixel the model reads."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                                 nn.ReLU(), nn.Flatten(), nn.Linear(8 * 14 * 14, 3))

    def forward(self, x):
        return self.net(x[:, :, 1:-1, 1:-1])


def test_smoothgrad_agrees_with_captum_noise_tunnel_in_expectation():
    # Captum's NoiseTunnel(Saliency) differs from the chapter's SmoothGrad in three ways:
    # `stdevs` is an absolute std (ours: sigma times the image's value range), it does not
    # clamp the noisy copies, and it averages |gradient| per channel, the channel max being
    # taken afterwards (ours: per copy, as equation 2 says). This setup makes the three
    # vanish: one channel, a border holding the extremes (+-10) that the model ignores,
    # and interior pixels in [-1, 1] that the clamp at +-10 never reaches (45 std away).
    # The noise itself differs (Captum draws from torch's global generator), so the
    # maps agree in expectation only: compared with enough copies, against a control.
    model = Interior().eval()
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    x[:, :, 0, 0], x[:, :, 0, 1] = -10.0, 10.0
    sigma, n = 0.02, 600
    std = sigma * 20.0

    def noise_tunnel(stdevs):
        torch.manual_seed(1)
        return NoiseTunnel(Saliency(model)).attribute(x, target=[0, 2], nt_type="smoothgrad", nt_samples=n,
                                                      stdevs=stdevs, nt_samples_batch_size=n)[:, 0]

    ours = smoothgrad(model, x, [0, 2], n_samples=n, sigma=sigma, seed=1, batch_size=n)
    inner = (slice(None), slice(1, -1), slice(1, -1))

    def rel_diff(a, b):
        return ((a[inner] - b[inner]).abs().sum() / b[inner].abs().sum()).item()

    same, control = rel_diff(ours, noise_tunnel(std)), rel_diff(ours, noise_tunnel(1.5 * std))
    assert same < 0.055 < control, (same, control)


# --------------------------------------------------------------------------- bad input
BAD_INPUTS = [
    (lambda x: x[0], 0, ValueError, r"add a batch dimension with x.unsqueeze\(0\)"),
    (lambda x: x[:, :1], 0, ValueError, "1 channels but the model's first convolution expects 3"),
    (lambda x: (x * 255).to(torch.uint8), 0, TypeError, r"x.float\(\).*normalise"),
    (lambda x: x.index_fill(3, torch.tensor([5]), float("nan")), 0, ValueError, "non-finite"),
    (lambda x: x, 2, ValueError, r"target 2 is out of range.*\[0, 2\)"),
    (lambda x: x, -1, ValueError, "target -1 is out of range"),
    (lambda x: x, [0, 1, 0], ValueError, "3 class indices but x holds 2 images"),
    (lambda x: x, 1.0, TypeError, "integer class indices"),
    (lambda x: x, torch.tensor([0.0, 1.0]), TypeError, "integer class indices"),
]


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
@pytest.mark.parametrize("make_x, target, exc, match", BAD_INPUTS)
def test_bad_input_is_named(cnn, method, make_x, target, exc, match):
    with pytest.raises(exc, match=match):
        method(cnn, make_x(lesion_batch(2)), target)


# --------------------------------------------------------------------------- model state
class Fragile(models.LesionCNN):
    """A lesion CNN whose forward can fail after registering a hook, as a careless method might."""

    boom = False

    def forward(self, x):
        if self.boom:
            self.features[0].register_forward_hook(lambda *a: None)
            raise RuntimeError("boom")
        return super().forward(x)


def state(model):
    return ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()],
            [id(p.grad) if p.grad is not None else None for p in model.parameters()],
            {(i, k, tuple(v)) for i, m in enumerate(model.modules()) for k, v in vars(m).items()
             if "hooks" in k and isinstance(v, dict)},
            [p.detach().clone() for p in model.parameters()])


def same_state(a, b):
    return a[:4] == b[:4] and all(torch.equal(p, q) for p, q in zip(a[4], b[4]))


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_methods_leave_the_model_as_they_found_it(method):
    torch.manual_seed(0)
    model = Fragile()
    model.classifier.insert(1, nn.Dropout(0.5))  # train mode would make the maps random
    model.train()
    model.features[0].requires_grad_(False)
    model.classifier[-1].weight.grad = torch.ones_like(model.classifier[-1].weight)
    calls = []
    model.features[1].register_forward_hook(lambda *a: calls.append(1))
    before = state(model)
    x = lesion_batch(2)
    kw = {"n_samples": 2, "seed": 0} if method is smoothgrad else {}

    out = method(model, x, 1, **kw)
    assert same_state(before, state(model)) and calls  # the user's hook ran and survived
    assert torch.equal(out, method(model, x, 1, **kw))  # eval mode: no dropout noise
    model.eval()
    assert torch.equal(out, method(model, x, 1, **kw))
    model.train()
    with pytest.raises(ValueError, match="out of range"):  # found after the forward
        method(model, x, 5, **kw)
    assert same_state(before, state(model))
    model.boom = True
    with pytest.raises(RuntimeError, match="boom"):
        method(model, x, 1, **kw)
    assert same_state(before, state(model))
    calls.clear()
    model.boom = False
    model(x)
    assert calls == [1]


# --------------------------------------------------------------------------- the ruler
@pytest.mark.bundled("lesion_cnn", "lesion_cnn_clean")
def test_ruler_share_shortcut_vs_clean():
    data = synthetic.make_lesions(600, "biased", seed=synthetic.TEST_SEED).select(label=1, ruler=True)
    x, ruler = normalize(data.images), data.ruler_mask.float()
    shares = {}
    for name in ("lesion_cnn", "lesion_cnn_clean"):
        model = models.load(name)
        assert model.ch6.weights == "bundled"
        maps = saliency_map(model, x, 1)
        shares[name] = ((maps * ruler).sum((1, 2)) / maps.sum((1, 2))).mean().item()
    assert shares["lesion_cnn"] > shares["lesion_cnn_clean"], shares
    # ...and more than a map spread evenly over the image would put there
    assert shares["lesion_cnn"] > ruler.mean().item(), (shares, ruler.mean().item())
