"""Evaluation: the method registry, the sanity checks, deletion/insertion, localisation."""
import numpy as np
import pytest
import torch
import torch.nn as nn
from scipy.stats import spearmanr
from skimage.metrics import structural_similarity

from chapter6_utils import evaluation as ev
from chapter6_utils import models
from chapter6_utils.data import denormalize, normalize
from chapter6_utils.synthetic import TEST_SEED, make_lesions

MALIGNANT = 1


@pytest.fixture(scope="module")
def clean():
    return models.load("lesion_cnn_clean")


@pytest.fixture(scope="module")
def ruled():
    """Malignant lesions with a ruler, from data no model was trained or scored on."""
    return make_lesions(96, "biased", seed=TEST_SEED).select(label=1, ruler=True)


def _state(model):
    return ({k: v.clone() for k, v in model.state_dict().items()}, model.training,
            [p.requires_grad for p in model.parameters()])


def _same_state(model, state):
    sd, training, grads = state
    return (all(torch.equal(sd[k], v) for k, v in model.state_dict().items()) and model.training == training
            and grads == [p.requires_grad for p in model.parameters()])


# --------------------------------------------------------------------------- registry
def test_registry_lists_every_method_of_the_chapter():
    assert list(ev.METHODS) == ["gradient", "saliency", "smoothgrad", "gradient_x_input", "deconvnet",
                                "guided_backprop", "lrp", "rollout", "cls_attention", "rollout_max",
                                "gradient_rollout", "attn_lrp", "cp_lrp"]
    assert {n for n, m in ev.METHODS.items() if m.signed} == {"gradient", "gradient_x_input", "deconvnet",
                                                               "guided_backprop", "lrp", "attn_lrp", "cp_lrp"}
    with pytest.raises(ValueError, match="unknown method 'lrpp'.*gradient, saliency"):
        ev.get_method("lrpp")


def test_a_method_is_its_function():
    # The registry holds the functions themselves (imported, not looked up by string).
    from chapter6_utils import lrp, saliency

    assert ev.METHODS["gradient"].function() is saliency.gradient
    assert ev.METHODS["lrp"].function() is lrp.lrp
    with pytest.raises(TypeError, match="target must be the method's function"):
        ev.Method("ghost", "saliency:gradient", True, "abs")


def test_methods_apply_by_architecture(cnn):
    vit = models.load("lesion_vit")
    assert ev.is_vit(vit) and not ev.is_vit(cnn)
    assert ev.METHODS["rollout"].applies_to(vit) and not ev.METHODS["rollout"].applies_to(cnn)
    assert ev.METHODS["lrp"].applies_to(cnn) and not ev.METHODS["lrp"].applies_to(vit)
    assert "rollout" not in ev.available_methods(cnn)
    assert {"gradient", "saliency", "smoothgrad", "gradient_x_input"} <= set(ev.available_methods(cnn))


def test_every_available_method_gives_2d_maps(cnn, ruled):
    x = normalize(ruled.images[:2])
    maps = ev.method_maps(cnn, x, MALIGNANT)
    assert maps.keys() == set(ev.available_methods(cnn))
    for name, m in maps.items():
        assert m.shape == (2, 64, 64) and torch.isfinite(m).all(), name
        assert (m < 0).any() == ev.METHODS[name].signed, name
        assert (ev.METHODS[name].evidence(m) >= 0).all()


# --------------------------------------------------------------------------- similarity
def test_spearman_matches_scipy_with_ties():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (3, 8, 8), generator=g).float() - 2  # many ties, both signs
    b = a + torch.randn(3, 8, 8, generator=g)
    got = ev.spearman(a, b)
    for i in range(3):
        expected = spearmanr(a[i].abs().flatten(), b[i].abs().flatten()).statistic
        assert got[i].item() == pytest.approx(expected, abs=1e-6)
    assert ev.spearman(a, -a).tolist() == pytest.approx([1.0] * 3)  # absolute values
    assert ev.spearman(a, -a, absolute=False).tolist() == pytest.approx([-1.0] * 3)
    assert torch.isnan(ev.spearman(torch.zeros(1, 4, 4), a[:1, :4, :4])).all()


def test_ssim_matches_scikit_image():
    g = torch.Generator().manual_seed(1)
    a = torch.rand(2, 32, 32, generator=g)
    b = a + 0.3 * torch.randn(2, 32, 32, generator=g)
    got = ev.ssim(a, b)
    for i in range(2):
        ua = np.clip(a[i].abs().numpy() / np.quantile(a[i].abs().numpy(), 0.99), 0, 1)
        ub = np.clip(b[i].abs().numpy() / np.quantile(b[i].abs().numpy(), 0.99), 0, 1)
        expected = structural_similarity(ua.astype(np.float64), ub.astype(np.float64), data_range=1.0)
        assert got[i].item() == pytest.approx(expected, abs=1e-5)
    assert ev.ssim(a, a).tolist() == pytest.approx([1.0, 1.0])


def test_agreement_matrix():
    g = torch.Generator().manual_seed(2)
    a = torch.rand(3, 16, 16, generator=g)
    res = ev.agreement({"a": a, "a2": 2 * a, "noise": torch.rand(3, 16, 16, generator=g)})
    assert res.names == ["a", "a2", "noise"] and res.per_image.shape == (3, 3, 3)
    assert torch.allclose(res.matrix, res.matrix.T)
    assert res.matrix[0, 1] == pytest.approx(1.0) and abs(res.matrix[0, 2]) < 0.3


# --------------------------------------------------------------------------- randomisation
def test_layers_from_input_to_output(cnn):
    names = [n for n, _ in ev.randomization_layers(cnn)]
    assert names == ["features.0", "features.2", "features.5", "features.7", "features.10", "features.13",
                     "classifier.1", "classifier.3"]
    vit_layers = [n for n, _ in ev.randomization_layers(models.load("lesion_vit"))]
    assert vit_layers[0] == "(embeddings)" and "blocks.0" in vit_layers and vit_layers[-1] == "head"
    assert not any(n.startswith("blocks.0.") for n in vit_layers)


def test_model_randomization_leaves_the_model_alone(cnn, ruled):
    x = normalize(ruled.images[:3])
    state, rng = _state(cnn), torch.get_rng_state()
    res = ev.model_randomization(cnn, "gradient", x, MALIGNANT, seed=0)
    assert _same_state(cnn, state) and torch.equal(torch.get_rng_state(), rng)
    assert res.layers[0] == "trained" and res.layers[1] == "classifier.3" and len(res.layers) == 9
    assert res.maps.shape == (9, 3, 64, 64)
    assert torch.allclose(res.spearman[0], torch.ones(3)) and torch.allclose(res.ssim[0], torch.ones(3))
    # the trained row is the method on the model as given
    assert torch.allclose(res.maps[0], ev.METHODS["gradient"](cnn, x, MALIGNANT))
    again = ev.model_randomization(cnn, "gradient", x, MALIGNANT, seed=0)
    assert torch.equal(res.maps, again.maps)
    other = ev.model_randomization(cnn, "gradient", x, MALIGNANT, seed=1)
    assert not torch.equal(res.maps[-1], other.maps[-1])


def test_independent_and_cascading_share_the_first_step(cnn, ruled):
    x = normalize(ruled.images[:2])
    cas = ev.model_randomization(cnn, "gradient", x, MALIGNANT, order="cascading")
    ind = ev.model_randomization(cnn, "gradient", x, MALIGNANT, order="independent")
    assert torch.allclose(cas.maps[1], ind.maps[1])  # only the top layer re-initialised in both
    assert not torch.allclose(cas.maps[-1], ind.maps[-1])
    with pytest.raises(ValueError, match="cascading"):
        ev.model_randomization(cnn, "gradient", x, MALIGNANT, order="random")


def test_gradient_fails_to_survive_full_randomization(cnn, ruled):
    """The gradient depends on the weights: after every layer is re-initialised its map
    has little in common with the trained one (the sanity check passes)."""
    x = normalize(ruled.images[:6])
    res = ev.model_randomization(cnn, "gradient", x, MALIGNANT)
    assert res.final("spearman").mean() < 0.4 and res.final("ssim").mean() < 0.2


def test_guided_backprop_stays_closer_than_the_gradient(cnn, ruled):
    """Adebayo et al. (2018): guided backprop barely notices that the upper layers' weights
    are gone, and after full randomisation stays closer to its trained map than the
    gradient does (seed 0; measured here: about 0.9 vs 0.6 with half the layers random,
    0.3 vs 0.1 with all of them)."""
    x = normalize(ruled.images[:6])
    res = ev.randomization_sweep(cnn, ["gradient", "guided_backprop"], x, MALIGNANT, seed=0)
    gb, grad = res["guided_backprop"].spearman.mean(1), res["gradient"].spearman.mean(1)
    assert gb[-1] > grad[-1] + 0.1, (gb, grad)  # full randomisation
    assert gb[1:].mean() > grad[1:].mean() + 0.2, (gb, grad)  # along the whole cascade
    assert gb[4] > 0.85 > grad[4], (gb, grad)  # the top four layers re-initialised
    assert res["guided_backprop"].final("ssim").mean() > res["gradient"].final("ssim").mean()


def test_data_randomization(cnn, ruled):
    shuffled = models.load("lesion_cnn_shuffled")
    x = normalize(ruled.images[:6])
    res = ev.data_randomization(cnn, shuffled, "gradient", x, MALIGNANT)
    assert res.layers == ["trained", "shuffled labels"] and res.maps.shape == (2, 6, 64, 64)
    assert res.final().mean() < 0.6  # memorised noise does not give the trained model's maps


# --------------------------------------------------------------------------- faithfulness
@pytest.mark.parametrize("name", ["gradient", "smoothgrad", "lrp"])
def test_deletion_in_the_maps_order_beats_a_random_order(cnn, ruled, name):
    x = normalize(ruled.images[:12])
    method = ev.METHODS[name]
    ranking = method.ranking(method(cnn, x, MALIGNANT))
    ordered = ev.deletion_curve(cnn, x, MALIGNANT, ranking, baseline="mean", steps=16)
    randomly = ev.deletion_curve(cnn, x, MALIGNANT, ev.random_map(x, seed=0), baseline="mean", steps=16)
    assert ordered.auc.mean() < randomly.auc.mean() - 0.05, (ordered.auc.mean(), randomly.auc.mean())


def test_curves_start_and_end_where_they_should(cnn, ruled):
    x = normalize(ruled.images[:3])
    with torch.no_grad():
        p = cnn(x).softmax(1)[:, MALIGNANT]
        black = cnn(normalize(torch.zeros_like(ruled.images[:3]))).softmax(1)[:, MALIGNANT]
    rank = ev.random_map(x)
    dele = ev.deletion_curve(cnn, x, MALIGNANT, rank, baseline="zero", steps=4)
    ins = ev.insertion_curve(cnn, x, MALIGNANT, rank, baseline="zero", steps=4)
    assert dele.scores.shape == (3, 5) and dele.fractions.tolist() == [0, 0.25, 0.5, 0.75, 1]
    torch.testing.assert_close(dele.scores[:, 0], p)
    torch.testing.assert_close(dele.scores[:, -1], black)
    torch.testing.assert_close(ins.scores[:, 0], black)
    torch.testing.assert_close(ins.scores[:, -1], p)
    torch.testing.assert_close(dele.auc, torch.trapezoid(dele.scores, dele.fractions, dim=1))
    logit = ev.deletion_curve(cnn, x, MALIGNANT, rank, score="logit", steps=2, batch_size=1)
    assert (logit.scores[:, 0] - cnn(x)[:, MALIGNANT].detach()).abs().max() < 1e-4


def test_steps_per_pass_change_no_curve(cnn, ruled):
    """batch_size (steps per forward pass; None picks it from the device) is speed only."""
    x = normalize(ruled.images[:5])
    rank = ev.random_map(x, seed=1)
    for curve in (ev.deletion_curve, ev.insertion_curve):
        ref = curve(cnn, x, MALIGNANT, rank, steps=6, batch_size=1)
        for batch_size in (None, 4, 7, 100):
            other = curve(cnn, x, MALIGNANT, rank, steps=6, batch_size=batch_size)
            torch.testing.assert_close(other.scores, ref.scores, rtol=1e-5, atol=1e-6)


def test_deletion_removes_pixels_in_the_maps_order():
    """A model that reads one pixel: removing that pixel first drops its score at once."""
    class OnePixel(nn.Module):
        def forward(self, x):
            v = x[:, 0, 2, 3]
            return torch.stack([-v, v], 1)

    x = torch.zeros(1, 3, 8, 8)
    x[0, 0, 2, 3] = 5.0
    rank = torch.zeros(1, 8, 8)
    rank[0, 2, 3] = 1.0
    curve = ev.deletion_curve(OnePixel(), x, 1, rank, baseline="mean", steps=64, score="logit")
    assert curve.scores[0, 0] == 5.0 and (curve.scores[0, 1:] < 0.1).all()
    for baseline in ("blur", "mean", "zero"):
        ev.deletion_curve(OnePixel(), x, 1, rank, baseline=baseline, steps=2)
    with pytest.raises(ValueError, match="baseline must be"):
        ev.deletion_curve(OnePixel(), x, 1, rank, baseline="noise")
    with pytest.raises(ValueError, match=r"expected \(N, H, W\)"):
        ev.deletion_curve(OnePixel(), x, 1, rank[0])


def test_blur_baseline_is_a_blurred_image():
    x = normalize(make_lesions(2, "biased", seed=TEST_SEED).images)
    blurred = ev.faithfulness._baseline(x, "blur", None)
    assert blurred.shape == x.shape
    assert blurred.std() < x.std()  # smoothed
    assert torch.allclose(blurred.mean((2, 3)), x.mean((2, 3)), atol=0.05)  # same colours
    assert torch.allclose(denormalize(ev.faithfulness._baseline(x, "zero", None)), torch.zeros_like(x), atol=1e-6)


# --------------------------------------------------------------------------- ground truth
def test_localisation_metrics_on_hand_made_maps():
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[:, 0, :2] = True  # two pixels
    e = torch.zeros(2, 4, 4)
    e[0, 0, 0], e[0, 3, 3] = 3.0, 1.0  # 3/4 of the mass on the mask, the maximum on it
    e[1, 0, 0], e[1, 2, 2] = 1.0, 2.0  # 1/3 on the mask, the maximum one pixel off it
    assert ev.relevance_mass(e, mask).tolist() == pytest.approx([0.75, 1 / 3])
    assert ev.relevance_rank_accuracy(e, mask).tolist() == pytest.approx([0.5, 0.5])
    assert ev.pointing_game(e, mask).tolist() == [True, False]
    assert ev.pointing_game(e, mask, tolerance=2).tolist() == [True, True]
    # a plateau that differs only by float32 rounding is a tie, wherever the rounding falls
    plateau = torch.zeros(2, 4, 4)
    plateau[:, 0, 0] = 0.7
    plateau[:, 2, 2] = torch.tensor([0.7, 0.7]) * torch.tensor([1 + 2e-7, 1 - 2e-7])
    assert ev.pointing_game(plateau, mask).tolist() == [True, True]
    plateau[:, 2, 2] = 0.75  # a real difference still decides
    assert ev.pointing_game(plateau, mask).tolist() == [False, False]
    assert torch.isnan(ev.relevance_mass(torch.zeros(1, 4, 4), mask[:1])).all()
    with pytest.raises(ValueError, match="negative"):
        ev.relevance_mass(-e, mask)


@pytest.mark.parametrize("name", ["gradient", "smoothgrad", "lrp"])
def test_the_shortcut_model_puts_more_on_the_ruler(cnn, clean, ruled, name):
    x = normalize(ruled.images[:16])
    method = ev.METHODS[name]
    mass = {key: ev.relevance_mass(method.evidence(method(m, x, MALIGNANT)), ruled.ruler_mask[:16]).mean()
            for key, m in (("shortcut", cnn), ("clean", clean))}
    assert mass["shortcut"] > mass["clean"], mass


# --------------------------------------------------------------------------- Table 1 columns
def test_gradient_x_input_conserves_on_a_bias_free_linear_model(cnn, ruled):
    torch.manual_seed(0)
    linear = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.Flatten(), nn.Linear(4 * 62 * 62, 2, bias=False))
    x = normalize(ruled.images[:2])
    assert ev.conservation_error(linear, "gradient_x_input", x, 1).max() < 1e-4
    assert ev.conservation_error(cnn, "gradient_x_input", x, 1).min() > 1e-3  # biases and ReLUs


def test_relative_cost_is_the_median_ratio_of_interleaved_timings(cnn, ruled):
    """relative_cost's arithmetic, on a counter handed in as its timer: a method that takes 3 units beside a
    forward pass that takes 1 costs 3. Real timings are benchmarks (a busy machine failed
    the timed version of this test, SmoothGrad's 25 samples at 1.25x a gradient)."""
    clock = [0.0]

    def tick(units):
        clock[0] += units

    slow = ev.Method("slow", lambda model, x, target: (tick(3.0), torch.zeros(x.shape[0], *x.shape[2:]))[1],
                     False, "value", reduce=None)
    handle = cnn.register_forward_hook(lambda module, inputs, output: tick(1.0))
    try:
        assert ev.relative_cost(cnn, slow, normalize(ruled.images[:2]), 1, timer=lambda: clock[0]) == pytest.approx(3.0)
    finally:
        handle.remove()
