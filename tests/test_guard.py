"""_guard: input checks with messages that name the fix, and a model left exactly as found."""
import numpy as np
import pytest
import torch
import torch.nn as nn

from chapter6_utils._guard import attribution_method, check_input, check_target, class_scores, model_guard


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
        nn.Flatten(), nn.Linear(4 * 8 * 8, 5),
    )


def hook_state(model):
    """Every hook dict of every submodule, as (module index, dict name, handle ids)."""
    return {(i, k, tuple(v)) for i, m in enumerate(model.modules())
            for k, v in vars(m).items() if "hooks" in k and isinstance(v, dict)}


def full_state(model):
    return {
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grad_ids": [id(p.grad) if p.grad is not None else None for p in model.parameters()],
        "hooks": hook_state(model),
        "modules": [id(m) for m in model.modules()],
        "params": [id(p) for p in model.parameters()],
        "values": [p.detach().clone() for p in model.state_dict().values()],
    }


def assert_same_state(before, after):
    for key in ("training", "requires_grad", "grad_ids", "hooks", "modules", "params"):
        assert before[key] == after[key], key
    for a, b in zip(before["values"], after["values"]):
        assert torch.equal(a, b)


@pytest.fixture
def user_model():
    """A model as a user might hand it over: train mode with one submodule in eval,
    a frozen layer, a .grad left from training, and hooks of its own."""
    m = small_net()
    m.train()
    m[1].eval()
    m[0].weight.requires_grad_(False)
    m[5].weight.grad = torch.ones_like(m[5].weight)
    calls = []
    m.user_handles = [
        m[2].register_forward_hook(lambda mod, i, o: calls.append("fwd")),
        m[5].register_full_backward_hook(lambda mod, gi, go: calls.append("bwd")),
        m[0].register_forward_pre_hook(lambda mod, args: calls.append("pre")),
    ]
    m.calls = calls
    return m


# --------------------------------------------------------------------------- check_input
def test_check_input_accepts_a_good_batch():
    check_input(small_net(), torch.randn(2, 3, 8, 8))  # no exception is the assertion


@pytest.mark.parametrize("x, exc, match", [
    (torch.randn(3, 8, 8), ValueError, r"\(3, 8, 8\).*add a batch dimension with x.unsqueeze\(0\)"),
    (torch.randn(1, 1, 3, 8, 8), ValueError, r"expected \(N, C, H, W\)"),
    (torch.randn(0, 3, 8, 8), ValueError, "no images"),
    (np.zeros((1, 3, 8, 8), np.float32), TypeError, "must be a torch.Tensor"),
    (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), TypeError, r"torch.uint8.*x.float\(\).*normalise"),
    (torch.randn(1, 1, 8, 8), ValueError, r"1 channels.*expects 3"),
    (torch.randn(1, 4, 8, 8), ValueError, r"4 channels.*expects 3"),
    (torch.randn(1, 3, 8, 8, dtype=torch.float64), TypeError, r"float64.*torch.float32"),
    (torch.randn(1, 3, 8, 8, device="meta"), ValueError, r"x is on meta but the model is on cpu"),
])
def test_check_input_names_the_problem(x, exc, match):
    with pytest.raises(exc, match=match):
        check_input(small_net(), x)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_check_input_rejects_non_finite(bad):
    x = torch.randn(2, 3, 8, 8)
    x[1, 2, 3, 4] = bad
    with pytest.raises(ValueError, match="1 non-finite values"):
        check_input(small_net(), x)


# --------------------------------------------------------------------------- check_target
@pytest.mark.parametrize("target", [2, np.int64(2), [2, 2, 2], (2, 2, 2), np.array([2, 2, 2]),
                                    torch.tensor(2), torch.tensor([2, 2, 2], dtype=torch.int32)])
def test_check_target_forms(target):
    t = check_target(target, 3, num_classes=5)
    assert t.dtype == torch.long and t.tolist() == [2, 2, 2]


def test_check_target_keeps_per_image_classes_and_device():
    t = check_target([0, 4, 1], 3, device=torch.device("meta"))
    assert t.device.type == "meta" and t.shape == (3,)
    assert check_target([0, 4, 1], 3).tolist() == [0, 4, 1]


@pytest.mark.parametrize("target, exc, match", [
    ([1, 2], ValueError, "2 class indices but x holds 3 images"),
    ([[1, 2, 3]], ValueError, r"shape \(1, 3\)"),
    (5, ValueError, r"target 5 is out of range.*\[0, 5\)"),
    ([0, -1, 2], ValueError, r"target -1 is out of range"),
    (2.0, TypeError, "integer class indices.*float"),
    ([0.0, 1.0, 2.0], TypeError, "integer class indices"),
    (True, TypeError, "bool"),
    ("cat", TypeError, "int or a sequence"),
])
def test_check_target_names_the_problem(target, exc, match):
    with pytest.raises(exc, match=match):
        check_target(target, 3, num_classes=5)


def test_class_scores_picks_each_images_class_and_checks_the_width():
    logits = torch.arange(10.0).view(2, 5).requires_grad_()
    assert class_scores(logits, torch.tensor([1, 3])).tolist() == [1.0, 8.0]
    with pytest.raises(ValueError, match=r"target 5 is out of range.*\[0, 5\)"):
        class_scores(logits, torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="returned tuple"):
        class_scores((logits,), torch.tensor([0, 1]))
    with pytest.raises(RuntimeError, match="does not depend on x"):
        class_scores(logits.detach(), torch.tensor([0, 1]))
    # With the maximum known beforehand (no device sync), the same check.
    assert class_scores(logits, torch.tensor([4, 0]), target_max=4).tolist() == [4.0, 5.0]
    with pytest.raises(ValueError, match=r"target 5 is out of range.*\[0, 5\)"):
        class_scores(logits, torch.tensor([0, 5]), target_max=5)


# --------------------------------------------------------------------------- model_guard
def test_guard_evaluates_frozen_and_restores_everything_on_success(user_model):
    m = user_model
    before = full_state(m)
    with model_guard(m):
        assert not any(mod.training for mod in m.modules())
        assert not any(p.requires_grad for p in m.parameters())
    assert_same_state(before, full_state(m))
    assert m[5].weight.grad is not None and torch.equal(m[5].weight.grad, torch.ones_like(m[5].weight))


def vandalise(m):
    """Everything a method could leave behind, then an error mid-way."""
    m[1].register_forward_hook(lambda *a: None)
    m[2].register_forward_pre_hook(lambda *a: None, with_kwargs=True)
    m[5].register_full_backward_hook(lambda *a: None)
    m[5].register_full_backward_pre_hook(lambda *a: None)
    m[3].register_backward_hook(lambda *a: None)
    m[4].register_forward_hook(lambda *a, **k: None, with_kwargs=True, always_call=True)
    m.user_handles[0].remove()  # a user's hook removed: it must come back
    m[2].inplace = True  # a flag toggled
    m[0].new_flag = True  # an attribute added
    m[3] = nn.Identity()  # a submodule swapped
    m[5].weight.grad = torch.zeros_like(m[5].weight)
    m[5].bias.data = torch.zeros(5)  # storage swapped
    m[5].bias.requires_grad_(True)
    m.train()
    m(torch.randn(2, 3, 8, 8)).sum().backward()
    raise KeyError("mid-way")


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_guard_restores_everything_after_an_error_mid_way(user_model):
    m = user_model
    before = full_state(m)
    grad = m[5].weight.grad
    with pytest.raises(KeyError, match="mid-way"):
        with model_guard(m):
            vandalise(m)
    assert_same_state(before, full_state(m))
    assert m[5].weight.grad is grad
    assert m[2].inplace is False and not hasattr(m[0], "new_flag") and isinstance(m[3], nn.Dropout)
    assert m[1].training is False and m[0].training is True
    # The user's hooks still fire, in the order registered, and their handles still work.
    m.calls.clear()
    m.eval()
    m(torch.randn(1, 3, 8, 8, requires_grad=True)).sum().backward()
    assert m.calls == ["pre", "fwd", "bwd"]
    for h in m.user_handles:
        h.remove()
    assert hook_state(m) == hook_state(small_net())


def test_guard_catches_in_place_weight_writes_and_can_restore_values():
    m = small_net()
    w = m[0].weight.detach().clone()
    with pytest.raises(RuntimeError, match="modified in place.*restore_values=True"):
        with model_guard(m):
            with torch.no_grad():
                m[0].weight.mul_(2)
    m = small_net()
    with model_guard(m, restore_values=True):
        with torch.no_grad():
            m[0].weight.mul_(2)
            m[1].running_mean.add_(1)
    assert torch.equal(m[0].weight, w) and torch.equal(m[1].running_mean, torch.zeros(4))


def test_guard_options_leave_mode_and_flags_alone():
    m = small_net().train()
    with model_guard(m, eval_mode=False, freeze_params=False):
        assert m.training and all(p.requires_grad for p in m.parameters())


# --------------------------------------------------------------------------- attribution_method
@attribution_method
def _echo(model, x, target, scale=1.0):
    scores = class_scores(model(x.requires_grad_()), target)
    return torch.autograd.grad(scores.sum(), x)[0] * scale, target


def test_attribution_method_checks_guards_and_enables_grad(user_model):
    before = full_state(user_model)
    with torch.no_grad():
        g, t = _echo(user_model, torch.randn(2, 3, 8, 8), 4, scale=2.0)
    assert g.shape == (2, 3, 8, 8) and t.tolist() == [4, 4] and t.dtype == torch.long
    with torch.inference_mode():
        _echo(user_model, torch.randn(2, 3, 8, 8), [0, 1])
    with pytest.raises(ValueError, match="target 5 is out of range"):
        _echo(user_model, torch.randn(2, 3, 8, 8), 5)  # found after the forward
    with pytest.raises(ValueError, match="unsqueeze"):
        _echo(user_model, torch.randn(3, 8, 8), 0)
    with pytest.raises(TypeError, match="nn.Module"):
        _echo(lambda x: x, torch.randn(1, 3, 8, 8), 0)
    assert_same_state(before, full_state(user_model))
    assert _echo.__name__ == "_echo"
