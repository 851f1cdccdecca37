"""The floor every public method stands on (issue 15, classes 4 to 7): one call per model at
a time (threads, nested calls), inputs never written, torch.compile'd models, non-finite
results refused with their cause."""
import copy
import threading

import pytest
import torch
import torch.nn as nn

from chapter6_utils import actmax, attention, deconvnet, lrp, saliency
from chapter6_utils._guard import ModelInUseError, NonFiniteResultError, model_guard


# --------------------------------------------------------------------------- models
class _Gate:
    """Held by a forward pre-hook on the model's first convolution: stops the first thread's
    forward half-way, so that a second thread provably calls in while it is inside."""

    def __init__(self):
        self.owner = None
        self.barrier = threading.Barrier(2, timeout=30)
        self.release = threading.Event()
        self.armed = True

    def __deepcopy__(self, memo):  # LRP's light copy of the model copies its hooks: share the gate
        return self

    def __call__(self, module, inputs):
        # Only the first forward of the owning thread waits: the second thread passes the
        # barrier with it and calls while this forward is still running.
        if self.armed and threading.get_ident() == self.owner:
            self.armed = False
            self.barrier.wait()
            assert self.release.wait(30), "the second thread never released the first"


def small_cnn(in_place_first=False):
    torch.manual_seed(0)
    layers = [nn.ReLU(inplace=True)] if in_place_first else []
    layers += [nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1),
               nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)]
    return nn.Sequential(*layers).eval()


def small_vit(**kw):
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(img_size=16, patch_size=8, num_classes=3, embed_dim=16, depth=2, num_heads=2,
                            mlp_ratio=2.0, **kw).eval()
    return vit


def _x(seed=1, n=2, size=8):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# Every public method family, as f(model, x) -> a tensor to compare across calls.
CNN_METHODS = {
    "gradient": lambda m, x: saliency.gradient(m, x, 1),
    "saliency_map": lambda m, x: saliency.saliency_map(m, x, 1),
    "smoothgrad": lambda m, x: saliency.smoothgrad(m, x, 1, n_samples=3, seed=0),
    "deconvnet": lambda m, x: deconvnet.deconvnet(m, x, 1),
    "guided_backprop": lambda m, x: deconvnet.guided_backprop(m, x, 1),
    "project": lambda m, x: deconvnet.project(m, x, "4", 0),
    "top_activations": lambda m, x: deconvnet.top_activations(m, x, "4", 0, k=1).projection,
    "lrp": lambda m, x: lrp.lrp(m, x, 1, composite=lrp.all_epsilon()),
    "actmax": lambda m, x: actmax.maximize(m, actmax.class_logit(1), steps=2, image_size=8).image,
}
VIT_METHODS = {
    "attention_maps": lambda m, x: attention.attention_maps(m, x),
    "rollout_map": lambda m, x: attention.rollout_map(m, x),
    "attention_gradients": lambda m, x: attention.attention_gradients(m, x, 1)[1],
}
FAMILIES = [(name, "cnn") for name in CNN_METHODS] + [(name, "vit") for name in VIT_METHODS]


def _build(kind):
    return (small_cnn(), _x()) if kind == "cnn" else (small_vit(), _x(size=16))


def _first_conv(model):
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


def _method(name):
    return CNN_METHODS.get(name) or VIT_METHODS[name]


def state(model):
    """Everything a method may touch: modes, flags, hooks, requires_grad, grads, values."""
    mods = []
    for m in model.modules():
        hooks = tuple(len(getattr(m, k)) for k in vars(m) if k.endswith("hooks") and isinstance(getattr(m, k), dict))
        flags = tuple(sorted((k, v) for k, v in vars(m).items() if type(v) in (bool, int, float, str)))
        mods.append((type(m).__name__, hooks, flags))
    params = [(n, p.requires_grad, p.grad is None, p.detach().clone()) for n, p in model.named_parameters()]
    return mods, params


def assert_same_state(a, b):
    assert a[0] == b[0]
    assert [p[:3] for p in a[1]] == [p[:3] for p in b[1]]
    for pa, pb in zip(a[1], b[1]):
        assert torch.equal(pa[3], pb[3]), pa[0]


# --------------------------------------------------------------------------- class 4: threads
@pytest.mark.parametrize("name,kind", FAMILIES)
def test_second_thread_on_a_busy_model_is_refused_and_the_model_stays_intact(name, kind):
    model, x = _build(kind)
    f = _method(name)
    before = f(model, x)  # the map of an undisturbed call
    gate = _Gate()
    handle = _first_conv(model).register_forward_pre_hook(gate)  # the user's hook: kept by the guard
    start = state(model)
    results = {}

    def first():
        gate.owner = threading.get_ident()
        try:
            results["first"] = f(model, x)
        except Exception as err:  # noqa: BLE001 -- reported below
            results["first"] = err
            gate.release.set()
            try:
                gate.barrier.abort()
            except threading.BrokenBarrierError:
                pass

    def second():
        try:
            gate.barrier.wait()
            f(model, x)
            results["second"] = "ran"
        except Exception as err:  # noqa: BLE001 -- reported below
            results["second"] = err
        finally:
            gate.release.set()

    try:
        threads = [threading.Thread(target=first), threading.Thread(target=second)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        gate.release.set()
    assert isinstance(results["first"], torch.Tensor), results["first"]
    assert torch.allclose(results["first"], before, atol=1e-6, rtol=1e-5)
    err = results["second"]
    assert isinstance(err, ModelInUseError), err
    assert isinstance(err, RuntimeError)
    assert "another thread" in str(err) and "copy.deepcopy(model)" in str(err)
    assert_same_state(state(model), start)
    handle.remove()
    assert torch.allclose(f(model, x), before, atol=1e-6, rtol=1e-5)  # and every later call agrees


def test_a_thread_on_a_submodule_of_a_busy_model_is_refused_too():
    model, x = small_cnn(), _x()
    gate = _Gate()
    model[0].register_forward_pre_hook(gate)
    out = {}

    def first():
        gate.owner = threading.get_ident()
        out["first"] = saliency.gradient(model, x, 0)

    t = threading.Thread(target=first)
    try:
        t.start()
        gate.barrier.wait()
        with pytest.raises(ModelInUseError, match="another thread"):
            with model_guard(model[3]):
                pass
    finally:
        gate.release.set()
        t.join(60)
    assert out["first"].shape == x.shape


def test_copies_per_thread_run_together():
    model, x = small_cnn(), _x()
    expected = deconvnet.guided_backprop(model, x, 2)
    copies = [copy.deepcopy(model) for _ in range(3)]
    out = [None] * 3
    barrier = threading.Barrier(3, timeout=30)

    def run(i):
        barrier.wait()
        out[i] = deconvnet.guided_backprop(copies[i], x, 2)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for o in out:
        assert torch.allclose(o, expected, atol=1e-6)


def test_a_method_called_from_inside_another_on_the_same_model_is_refused():
    model, x = small_cnn(), _x()
    before = saliency.gradient(model, x, 1)
    start = state(model)
    seen = []

    def hook(module, inputs, output):
        try:
            saliency.gradient(model, x, 1)
        except ModelInUseError as err:
            seen.append(str(err))

    handle = model[0].register_forward_hook(hook)
    try:
        deconvnet.deconvnet(model, x, 1)
    finally:
        handle.remove()
    assert seen and "this thread" in seen[0] and "copy.deepcopy(model)" in seen[0]
    assert_same_state(state(model), start)
    assert torch.allclose(saliency.gradient(model, x, 1), before)  # no deconvnet hook left behind


def test_the_model_is_free_again_after_an_error():
    model, x = small_cnn(), _x()
    with pytest.raises(ValueError):
        saliency.gradient(model, x, 7)  # out of range: raised inside the guard
    assert saliency.gradient(model, x, 1).shape == x.shape  # not "in use"


# --------------------------------------------------------------------------- class 7: inputs
CLONE_CNN = dict(CNN_METHODS)
CLONE_CNN.pop("actmax")  # takes no input image
CLONE_CNN.update({
    "gradient_x_input": lambda m, x: saliency.gradient_x_input(m, x, 1),
    "conservation": lambda m, x: lrp.conservation(m, x, 1, lrp.all_epsilon()),
    "canonize": lambda m, x: lrp.canonize(m, x),
    "receptive_field": lambda m, x: deconvnet.receptive_field(m, x, "4", 0, 0),
})


@pytest.mark.parametrize("name", sorted(CLONE_CNN))
def test_no_method_writes_the_callers_input(name):
    model = small_cnn(in_place_first=True)  # nn.ReLU(inplace=True) first: zeroes negatives in place
    x = _x()
    keep = x.clone()
    f = {**CLONE_CNN, "project": lambda m, x: deconvnet.project(m, x, "5", 0),
         "top_activations": lambda m, x: deconvnet.top_activations(m, x, "5", 0, k=1),
         "receptive_field": lambda m, x: deconvnet.receptive_field(m, x, "5", 0, 0)}[name]
    f(model, x)
    assert (keep < 0).any()  # the in-place ReLU would have changed it
    assert torch.equal(x, keep)


@pytest.mark.parametrize("name", sorted(VIT_METHODS) + ["cls_attention_map", "gradient_rollout_map"])
def test_no_attention_method_writes_the_callers_input(name):
    class Scale(nn.Module):  # the ViT's first op is in place
        def __init__(self, vit):
            super().__init__()
            self.vit = vit
            self.num_prefix_tokens = vit.num_prefix_tokens
            self.global_pool = vit.global_pool

        def forward(self, x):
            x.mul_(2)
            return self.vit(x)

    vit = small_vit()
    x = _x(size=16)
    keep = x.clone()
    f = {**VIT_METHODS, "cls_attention_map": lambda m, x: attention.cls_attention_map(m, x),
         "gradient_rollout_map": lambda m, x: attention.gradient_rollout_map(m, x, 1)}[name]
    try:
        f(Scale(vit), x)
    except (TypeError, ValueError):
        f(vit, x)  # a layout the wrapper does not expose: the model itself, no in-place op
        pytest.skip("the wrapper hides the ViT's layout")
    assert torch.equal(x, keep)


def test_top_activations_patches_are_the_callers_pixels():
    model = small_cnn(in_place_first=True)
    x = _x(n=4)
    res = deconvnet.top_activations(model, x, "5", 0, k=2)
    for i, box, patch in zip(res.index.tolist(), res.box, res.patch):
        t, left, b, r = box
        assert torch.equal(patch, x[i, :, t:b, left:r])  # not the in-place-ReLU'd copy


# --------------------------------------------------------------------------- class 5: torch.compile
def _compiled(model):
    compiled = torch.compile(model)  # lazy: nothing is compiled until a call
    assert type(compiled).__name__ == "OptimizedModule"
    return compiled


def test_lrp_of_a_compiled_model_is_lrp_of_the_model():
    model, x = small_cnn(), _x()
    compiled = _compiled(model)
    plain = lrp.lrp(model, x, 1)
    assert torch.allclose(lrp.lrp(compiled, x, 1), plain, atol=1e-6)


def test_gradient_then_lrp_on_a_compiled_model_is_not_gradient_times_input():
    model, x = small_cnn(), _x()
    compiled = _compiled(model)
    gxi = saliency.gradient_x_input(compiled, x, 1)
    assert torch.allclose(gxi, saliency.gradient_x_input(model, x, 1), atol=1e-6)
    r = lrp.lrp(compiled, x, 1)  # chapter composite: z^B and gamma, not gradient x input
    assert not torch.allclose(r, gxi, atol=1e-4)
    assert torch.allclose(r, lrp.lrp(model, x, 1), atol=1e-6)
    table = lrp.conservation(compiled, x, 1)
    assert len(table.rows) > 0


@pytest.mark.parametrize("name", ["deconvnet", "guided_backprop", "project", "actmax"])
def test_hook_methods_on_a_compiled_model_equal_the_model(name):
    model, x = small_cnn(), _x()
    f = CNN_METHODS[name]
    assert torch.allclose(f(_compiled(model), x), f(model, x), atol=1e-6)


def test_attention_on_a_compiled_vit_equals_the_vit():
    vit, x = small_vit(), _x(size=16)
    compiled = _compiled(vit)
    flags = [m.fused_attn for m in attention.attention_modules(vit)]
    start = state(vit)
    assert torch.allclose(attention.attention_maps(compiled, x), attention.attention_maps(vit, x))
    assert torch.allclose(attention.rollout_map(compiled, x), attention.rollout_map(vit, x))
    assert [m.fused_attn for m in attention.attention_modules(vit)] == flags
    assert_same_state(state(vit), start)


# --------------------------------------------------------------------------- class 6: non-finite results
def _poison(model, name):
    with torch.no_grad():
        dict(model.named_parameters())[name].view(-1)[0] = float("nan")
    return model


@pytest.mark.parametrize("name", sorted(CNN_METHODS))
def test_a_nan_weight_is_named_instead_of_returning_a_nan_map(name):
    model, x = _poison(small_cnn(), "3.weight"), _x()
    with pytest.raises(NonFiniteResultError, match=r"3\.weight"):
        CNN_METHODS[name](model, x)


@pytest.mark.parametrize("name", sorted(VIT_METHODS))
def test_a_nan_weight_in_a_vit_is_named(name):
    vit, x = small_vit(), _x(size=16)
    _poison(vit, "blocks.0.attn.qkv.weight")
    with pytest.raises(NonFiniteResultError, match=r"blocks\.0\.attn\.qkv\.weight"):
        VIT_METHODS[name](vit, x)


def test_non_finite_error_is_both_floating_point_and_value_error():
    model, x = _poison(small_cnn(), "0.weight"), _x()
    with pytest.raises(FloatingPointError):
        saliency.gradient(model, x, 0)
    with pytest.raises(ValueError, match=r"0\.weight"):
        lrp.lrp(model, x, 0)


@pytest.mark.parametrize("call", [
    lambda m: actmax.maximize(m, actmax.class_logit(0), steps=2, image_size=8, l2=float("inf")),
    lambda m: actmax.maximize(m, actmax.class_logit(0), steps=2, image_size=8, tv=float("nan")),
    lambda m: actmax.maximize(m, actmax.class_logit(0), steps=2, image_size=8,
                              init=torch.full((1, 3, 8, 8), float("nan"))),
    lambda m: lrp.lrp(m, _x(), 0, composite=lrp.Composite(first=lrp.ZBox(low=float("nan"), high=1.0))),
    lambda m: saliency.smoothgrad(m, _x(), 0, sigma=float("inf")),
], ids=["l2=inf", "tv=nan", "init=nan", "zbox-low=nan", "sigma=inf"])
def test_non_finite_options_are_refused_before_any_work(call):
    model = small_cnn()
    start = state(model)
    with pytest.raises((ValueError, TypeError), match="finite|nan|inf"):
        call(model)
    assert_same_state(state(model), start)


def test_metrics_refuse_nan_maps():
    from chapter6_utils import evaluation

    model, x = small_cnn(), _x()
    bad = torch.zeros(2, 8, 8)
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite|NaN"):
        evaluation.deletion_curve(model, x, 0, bad, steps=4)
    with pytest.raises(ValueError, match="non-finite|NaN"):
        evaluation.relevance_mass(bad, torch.ones(2, 8, 8, dtype=torch.bool))


# --------------------------------------------------------------------------- class 8: sizes and targets
@pytest.mark.bundled("lesion_cnn", "lesion_vit")
@pytest.mark.parametrize("name", ["lesion_cnn", "lesion_vit"])
def test_a_bundled_model_names_its_input_size_before_the_forward(name):
    from chapter6_utils import models

    model = models.load(name)
    calls = []
    model.register_forward_pre_hook(lambda m, i: calls.append(1))
    for f in (lambda m, x: saliency.gradient(m, x, 0), lambda m, x: lrp.lrp(m, x, 0)):
        with pytest.raises(ValueError, match=rf"32x32 but {name} takes 64x64 images \(model\.ch6\.input_size\)"):
            f(model, torch.randn(1, 3, 32, 32))
    assert not calls  # refused before the model ran


def test_imagenet_cnns_keep_any_input_size():
    from chapter6_utils import models

    vgg = models.load("vgg16", pretrained=False)
    assert not vgg.ch6.fixed_size  # adaptive pooling: other sizes are legitimate


@pytest.mark.parametrize("target", [2 ** 63, 2 ** 64, -1, -(2 ** 63) - 1, [0, 2 ** 63], (-1, 0), [[0], [1]],
                                    pytest.param("numpy-uint64", id="numpy-uint64")])
@pytest.mark.parametrize("method", ["gradient", "lrp", "deconvnet", "rollout_map"])
def test_targets_outside_the_classes_are_refused_by_value(target, method):
    import numpy as np

    if target == "numpy-uint64":
        target = np.array([2 ** 63, 1], dtype=np.uint64)
    if method == "rollout_map":
        model, x = small_vit(), _x(size=16)
        f = attention.rollout_map
    else:
        model, x = small_cnn(), _x()
        f = {"gradient": saliency.gradient, "lrp": lrp.lrp, "deconvnet": deconvnet.deconvnet}[method]
    with pytest.raises((ValueError, TypeError)) as info:
        f(model, x, target)
    msg = str(info.value)
    assert "out of range" in msg or "shape" in msg, msg  # never torch's int64 overflow
    assert "overflow" not in msg


# --------------------------------------------------------------------------- SmoothGrad's noise (issue 20, item 7)
def test_smoothgrad_noise_is_one_seeded_standard_normal_draw():
    like = torch.zeros(1, 3, 64, 64)
    eps = saliency._noise(7, 25, like.shape[1:], like)
    assert eps.shape == (25, 3, 64, 64) and eps.dtype == like.dtype
    assert abs(float(eps.mean())) < 0.01 and abs(float(eps.std()) - 1) < 0.01  # 307,200 values: sd 0.002
    c = torch.corrcoef(eps.flatten(1))
    assert float(c[~torch.eye(25, dtype=torch.bool)].abs().max()) < 0.05  # copies independent (sd 0.009)
    assert torch.equal(eps, saliency._noise(7, 25, like.shape[1:], like))
    assert not torch.equal(eps, saliency._noise(8, 25, like.shape[1:], like))


def test_smoothgrad_is_deterministic_for_a_seed_whatever_the_batching():
    model, x = small_cnn(), _x(n=3)
    ref = saliency.smoothgrad(model, x, [0, 1, 2], n_samples=5, seed=11)
    for bs in (1, 4, 15):
        assert torch.allclose(saliency.smoothgrad(model, x, [0, 1, 2], n_samples=5, seed=11, batch_size=bs), ref,
                              atol=1e-6)
    assert not torch.allclose(saliency.smoothgrad(model, x, [0, 1, 2], n_samples=5, seed=12), ref)


# --------------------------------------------------------------------------- the ground floor (issue 20, item 1)
def test_find_layer_by_name_or_module_and_errors_that_list_names():
    from chapter6_utils._hooks import find_layer

    model = small_cnn()
    assert find_layer(model, "3") == ("3", model[3])
    assert find_layer(model, model[3]) == ("3", model[3])
    with pytest.raises(ValueError, match=r"unknown layer '33'.*did you mean '3'"):
        find_layer(model, "33")
    with pytest.raises(ValueError, match="Conv2d modules are: 0, 3"):
        find_layer(model, "conv", kinds=(nn.Conv2d,))
    with pytest.raises(ValueError, match="not a submodule"):
        find_layer(model, nn.ReLU())
    with pytest.raises(TypeError, match="module name"):
        find_layer(model, 3)


def test_hooks_are_removed_on_exit_and_on_error():
    from chapter6_utils._hooks import hooked, leaf_modules, record_outputs

    model, x = small_cnn(), _x()
    leaves = leaf_modules(model)
    assert list(leaves.values()) == [str(i) for i in range(7)]
    with record_outputs({"conv": model[0], "relu": model[4]}) as acts:
        out = model(x)
    assert torch.equal(acts["relu"], torch.relu(model[3](model[2](torch.relu(model[0](x))))))
    assert set(acts) == {"conv", "relu"} and out.shape == (2, 3)
    with pytest.raises(RuntimeError, match="boom"):
        with hooked(leaves, pre=lambda m, i: None, post=lambda m, i, o: None):
            raise RuntimeError("boom")
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    with record_outputs([model[1], model[1]], append=True) as seen:  # one module under two keys
        model(x)
    assert len(seen[0]) == len(seen[1]) == 1


def test_one_upsampler_behind_attention_and_viz():
    from chapter6_utils import viz
    from chapter6_utils._hooks import upsample

    m = torch.rand(2, 4, 4)
    up = upsample(m, 16)
    assert up.shape == (2, 16, 16) and float(up.min()) >= float(m.min()) and float(up.max()) <= float(m.max())
    assert torch.equal(attention.upsample_to_image(m, 16), up)
    assert torch.equal(upsample(m, (8, 8), "nearest")[:, ::2, ::2], m)
    assert torch.allclose(torch.from_numpy(viz._resize(m[0].numpy(), (16, 16))), up[0])
    assert upsample(torch.ones(3, 3, dtype=torch.long), 6).dtype == torch.float32
