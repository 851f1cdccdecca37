"""Activation maximisation and DGN-AM: the search climbs, each regulariser does what it
claims, results are valid reproducible images, DGN-AM stays near real lesions, bad
objectives fail early and clearly, and the model comes back untouched."""
import pytest
import torch

from chapter6_utils import actmax, models
from chapter6_utils.data import normalize
from chapter6_utils.synthetic import make_lesions
from chapter6_utils.synthetic import TEST_SEED

STEPS = 64  # enough for every effect below to show by a wide margin; keeps the file fast


@pytest.fixture(scope="module")
def real():
    return make_lesions(256, "biased", seed=TEST_SEED)


@pytest.fixture(scope="module")
def plain(cnn):
    """The unregularised reference run every regulariser is measured against."""
    return actmax.maximize(cnn, actmax.class_logit(1), steps=STEPS, seed=0)


def test_maximize_raises_the_class_score_far_above_real_images(cnn, real, plain):
    with torch.no_grad():
        logits = cnn(normalize(real.select(label=1).images))
    real_score = float(logits[:, 1].mean())
    assert real_score > 0  # the comparison means something: real malignant images score positive
    assert plain.trace[-1] > 5 * real_score, (plain.trace[-1], real_score)
    assert plain.trace[-1] > plain.trace[0] + 10
    assert len(plain.trace) == STEPS + 1
    # the trace is the model's score of the returned image (up to the last clip)
    with torch.no_grad():
        final = float(cnn(normalize(plain.image))[0, 1])
    assert final == pytest.approx(plain.trace[-1], rel=1e-3, abs=1e-3)


def test_results_stay_inside_the_pixel_range(cnn, plain):
    loud = actmax.maximize(cnn, actmax.class_logit(0), steps=16, lr=1.0, seed=1, record_every=4)
    for r in (plain, loud):
        assert r.image.shape == (1, 3, 64, 64)
        for f in r.frames:
            assert f.min() >= 0 and f.max() <= 1
    # a large step size pushes against both ends: the clip is doing work
    assert (loud.image == 0).float().mean() > 0.05 and (loud.image == 1).float().mean() > 0.05
    assert loud.frame_steps == [0, 4, 8, 12, 16]


def test_same_seed_same_image_other_seed_other_image(cnn):
    kw = dict(steps=16, jitter=2, blur_every=4, tv=0.1)
    a = actmax.maximize(cnn, actmax.channel("features.11", 3), seed=5, **kw)
    b = actmax.maximize(cnn, actmax.channel("features.11", 3), seed=5, **kw)
    c = actmax.maximize(cnn, actmax.channel("features.11", 3), seed=6, **kw)
    assert torch.equal(a.image, b.image) and a.trace == b.trace
    assert not torch.equal(a.image, c.image)


def test_l2_lowers_the_norm(cnn, plain):
    r = actmax.maximize(cnn, actmax.class_logit(1), steps=STEPS, seed=0, l2=2.0)
    norm = lambda x: float(normalize(x).pow(2).mean())  # noqa: E731
    assert norm(r.image) < 0.85 * norm(plain.image), (norm(r.image), norm(plain.image))


def test_tv_lowers_total_variation(cnn, plain):
    r = actmax.maximize(cnn, actmax.class_logit(1), steps=STEPS, seed=0, tv=2.0)
    tv, tv0 = float(actmax.total_variation(r.image)), float(actmax.total_variation(plain.image))
    assert tv < 0.8 * tv0, (tv, tv0)


def test_blur_lowers_high_frequency_energy(cnn, plain):
    r = actmax.maximize(cnn, actmax.class_logit(1), steps=STEPS, seed=0, blur_every=4, blur_sigma=1.0)
    hf, hf0 = float(actmax.high_frequency_energy(r.image)), float(actmax.high_frequency_energy(plain.image))
    assert hf < 0.5 * hf0, (hf, hf0)


def test_measures_on_known_images():
    flat = torch.full((1, 3, 32, 32), 0.5)
    checker = (torch.arange(32).view(-1, 1) + torch.arange(32).view(1, -1)) % 2
    checker = checker.float().expand(1, 3, 32, 32)
    assert float(actmax.total_variation(flat)) == 0
    assert float(actmax.total_variation(checker)) == pytest.approx(2.0)
    assert float(actmax.high_frequency_energy(checker)) == pytest.approx(1.0)
    noise = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert float(actmax.high_frequency_energy(noise)) > 0.6  # 3/4 of the frequency square is "high"
    assert float(actmax.high_frequency_energy(actmax.gaussian_blur(noise, 1.5))) < 0.05
    # ruler ticks: real rulers score far above ruler-free images
    data = make_lesions(64, "unbiased", seed=TEST_SEED)
    with_r = actmax.ruler_tick_energy(data.select(ruler=True).images).mean()
    without = actmax.ruler_tick_energy(data.select(ruler=False).images).mean()
    assert with_r > 4 * without, (float(with_r), float(without))


def test_objectives_combine_linearly(cnn, real):
    x = normalize(real.images[:4])
    a, b = actmax.class_logit(1), actmax.channel("features.11", 3)
    combo = 0.5 * a + b - actmax.unit("features.11", 2, 5, 7)
    acts = {}
    h = cnn.features[11].register_forward_hook(lambda m, i, o: acts.__setitem__("f11", o))
    try:
        with torch.no_grad():
            out = cnn(x)
    finally:
        h.remove()
    expected = 0.5 * out[:, 1] + acts["f11"][:, 3].mean((1, 2)) - acts["f11"][:, 2, 5, 7]
    got = combo({"": out, "features.11": acts["f11"]})
    torch.testing.assert_close(got, expected)
    assert sum([a, b]).layers == ("", "features.11")
    r = actmax.maximize(cnn, combo, steps=8, seed=0)
    assert r.trace[-1] > r.trace[0]


@pytest.mark.parametrize("objective, message", [
    (actmax.channel("features.99", 0), r"unknown layer 'features.99'.*did you mean"),
    (actmax.channel("features.11", 99), r"channel 99 is out of range: layer 'features.11' has 64 channels"),
    (actmax.unit("features.11", 0, 20, 3), r"position \(y=20, x=3\) is outside the 16x16 grid of layer 'features.11'"),
    (actmax.class_logit(2), r"class index 2 is out of range: the model has 2 classes"),
    (actmax.channel("classifier.1", 0), r"needs a convolutional layer.*'classifier.1' gives \(1, 64\)"),
])
def test_bad_objectives_raise_clear_errors_and_leave_the_model_alone(cnn, objective, message):
    before = {k: v.clone() for k, v in cnn.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        actmax.maximize(cnn, objective, steps=4)
    assert not cnn.training and all(not m._forward_hooks for m in cnn.modules())
    assert all(p.requires_grad for p in cnn.parameters())
    assert all(torch.equal(before[k], v) for k, v in cnn.state_dict().items())


def test_bad_arguments():
    with pytest.raises(ValueError, match="channel c must be an int >= 0, got -1"):
        actmax.channel("features.11", -1)
    with pytest.raises(TypeError, match="must be an int"):
        actmax.unit("features.11", 0, 1.5, 2)
    m = models.load("lesion_cnn")
    with pytest.raises(TypeError, match="objective must be an actmax.Objective"):
        actmax.maximize(m, "logit 1")
    with pytest.raises(ValueError, match="steps must be"):
        actmax.maximize(m, actmax.class_logit(1), steps=-1)
    with pytest.raises(ValueError, match="l2 must be a finite number >= 0"):
        actmax.maximize(m, actmax.class_logit(1), l2=-1)


@pytest.fixture(scope="module")
def generator():
    return models.load("lesion_generator")


def test_dgn_am_climbs_and_stays_closer_to_real_lesions_than_pixel_am(cnn, generator, real):
    """Realism: distance to the nearest of 256 real lesions, in the pooled layer-3
    features of another network (lesion_resnet), in units of the same distance for
    held-out real lesions."""
    obj = actmax.class_logit(1)
    dgn = actmax.dgn_am(cnn, generator, obj, steps=STEPS, seed=0, n=4)
    pix = actmax.maximize(cnn, obj, steps=STEPS, seed=0, n=4)
    assert dgn.trace[-1] > dgn.trace[0] + 1
    assert dgn.image.shape == (4, 3, 64, 64) and dgn.latent.shape == (4, generator.latent_dim)
    assert dgn.image.min() >= 0 and dgn.image.max() <= 1
    feats = actmax.pooled_features(models.load("lesion_resnet"), "layer3")
    held_out = make_lesions(16, "biased", seed=TEST_SEED + 1).images
    unit_ = actmax.nearest_neighbour_distance(held_out, real.images, feats).median()
    d_dgn = actmax.nearest_neighbour_distance(dgn.image, real.images, feats).median() / unit_
    d_pix = actmax.nearest_neighbour_distance(pix.image, real.images, feats).median() / unit_
    assert d_dgn < 0.5 * d_pix, (float(d_dgn), float(d_pix))
    again = actmax.dgn_am(cnn, generator, obj, steps=8, seed=3)
    assert torch.equal(again.image, actmax.dgn_am(cnn, generator, obj, steps=8, seed=3).image)
    assert not generator.training


def test_dgn_am_leaves_both_networks_untouched(cnn, generator):
    g_before = {k: v.clone() for k, v in generator.state_dict().items()}
    generator.train()  # a caller's mode is restored, and BatchNorm statistics are not updated
    try:
        actmax.dgn_am(cnn, generator, actmax.class_logit(0), steps=4)
        assert generator.training
        assert all(torch.equal(g_before[k], v) for k, v in generator.state_dict().items())
        assert all(p.requires_grad for p in generator.parameters())
    finally:
        generator.eval()
    with pytest.raises(ValueError, match="latent_dim"):
        actmax.dgn_am(cnn, torch.nn.Linear(4, 4), actmax.class_logit(0), steps=2)


def test_widget_functions_are_pure_and_report_the_regularisers(cnn):
    from chapter6_utils import widgets

    image, stats = widgets.actmax_view(cnn, actmax.class_logit(1), steps=8, seed=0)
    image2, _ = widgets.actmax_view(cnn, actmax.class_logit(1), steps=8, seed=0)
    smooth, smooth_stats = widgets.actmax_view(cnn, actmax.class_logit(1), tv=8.0, steps=8, seed=0)
    assert image.shape == (64, 64, 3) and (image == image2).all()
    assert smooth_stats["tv"] < stats["tv"] and stats["objective"] > stats["start"]
    fig = widgets.actmax_figure((image, stats), title="t")
    assert fig.axes[0].get_title() == "t"
    grid = widgets.actmax_grid(cnn, actmax.class_logit(1), steps=4, settings={"none": {}, "TV": {"tv": 1.0}})
    assert [ax.get_title().split("\n")[0] for ax in grid.axes] == ["none", "TV"]
