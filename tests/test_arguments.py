"""Bad arguments get a clear error before any work: every public function of the package
called with values out of range, of the wrong type, NaN or infinite, with maps holding
NaN or inf. Each case must raise ValueError or TypeError whose message names the argument
(the value and what is allowed are part of the message, as the validators of
chapter6_utils._checks write it); never a raw torch or Python error, uninitialised memory,
a NaN result or a silent no-op.

The table also serves scripts/ that count the outcomes (``CASES``, ``fixtures()``)."""
import math
import re
import types

import pytest
import torch
import torch.nn as nn

from chapter6_utils import (actmax, attention, data, deconvnet, evaluation, lrp, models, saliency, synthetic,
                            seed_everything, train, viz)
from chapter6_utils import _checks as checks

NAN, INF = float("nan"), float("inf")


def fixtures():
    """The models, inputs and maps the cases use (small: the lesion world at 64x64)."""
    torch.manual_seed(0)
    f = types.SimpleNamespace()
    f.cnn = models.load("lesion_cnn")
    f.vit = models.load("lesion_vit")
    f.gen = models.load("lesion_generator")
    f.lesions = synthetic.make_lesions(4, "biased", seed=synthetic.TEST_SEED)
    f.x = data.normalize(f.lesions.images[:2])
    f.map = torch.rand(2, 64, 64, generator=torch.Generator().manual_seed(0))
    f.mask = f.lesions.ruler_mask[:2] | f.lesions.lesion_mask[:2]
    f.attn = attention.attention_maps(f.vit, f.x)
    f.obj = actmax.class_logit(1)
    f.small = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                            nn.Linear(4 * 32 * 32, 2)).eval()
    return f


def nan_map(f, value=NAN):
    m = f.map.clone()
    m[1, 3, 4] = value
    return m


# (case id, the argument the message must name, the call). Grouped by module.
CASES = [
    # ---------------------------------------------------------------- checks themselves
    ("checks.integer-bool", "n", lambda f: checks.integer(True, "n", low=1)),
    ("checks.real-nan", "lr", lambda f: checks.real(NAN, "lr", low=0, low_open=True)),
    # ---------------------------------------------------------------- package root, data, synthetic
    ("seed_everything-None", "seed", lambda f: seed_everything(None)),
    ("seed_everything-negative", "seed", lambda f: seed_everything(-1)),
    ("seed_everything-float", "seed", lambda f: seed_everything(1.5)),
    ("gaussian_blur-nan", "sigma", lambda f: data.gaussian_blur(f.x, NAN)),
    ("gaussian_blur-negative", "sigma", lambda f: data.gaussian_blur(f.x, -1.0)),
    ("gaussian_blur-str", "sigma", lambda f: data.gaussian_blur(f.x, "2")),
    ("gaussian_blur-padding", "padding", lambda f: data.gaussian_blur(f.x, 1.0, padding="mirror")),
    ("gaussian_blur-x", "x", lambda f: data.gaussian_blur(f.x[0], 1.0)),
    ("preprocess-size0", "size", lambda f: data.preprocess(f.lesions.images[0], size=0)),
    ("preprocess-size-float", "size", lambda f: data.preprocess(f.lesions.images[0], size=22.5)),
    ("samoyed_tensor-size", "size", lambda f: data.samoyed_tensor(size=-3)),
    ("make_lesions-seed-None", "seed", lambda f: synthetic.make_lesions(2, seed=None)),
    ("make_lesions-n-float", "n", lambda f: synthetic.make_lesions(2.5)),
    ("select-label", "label", lambda f: f.lesions.select(label=2)),
    ("select-label-float", "label", lambda f: f.lesions.select(label=0.5)),
    ("select-ruler", "ruler", lambda f: f.lesions.select(ruler="yes")),
    ("predict-batch_size0", "batch_size", lambda f: train.predict(f.cnn, f.lesions.images, batch_size=0)),
    ("predict-batch_size-neg", "batch_size", lambda f: train.predict(f.cnn, f.lesions.images, batch_size=-4)),
    ("eval_set-seed-None", "seed", lambda f: train.eval_set("biased", 8, None)),
    ("normalize-int", "x", lambda f: data.normalize(torch.zeros(1, 3, 4, 4, dtype=torch.long))),
    ("pixel_bounds-dtype", "dtype", lambda f: data.pixel_bounds(dtype=torch.int64)),
    ("pixel_bounds_like-int", "x", lambda f: data.pixel_bounds_like(torch.zeros(1, 3, 2, 2, dtype=torch.long))),
    ("generator.sample-n0", "n", lambda f: f.gen.sample(0)),
    ("generator.sample-seed-None", "seed", lambda f: f.gen.sample(2, seed=None)),
    ("predict-images", "images", lambda f: train.predict(f.cnn, f.x[0])),
    # ---------------------------------------------------------------- saliency
    ("default_batch_size-list", "x", lambda f: saliency.default_batch_size([1])),
    ("smoothgrad-n_samples0", "n_samples", lambda f: saliency.smoothgrad(f.cnn, f.x, 1, n_samples=0)),
    ("smoothgrad-sigma-nan", "sigma", lambda f: saliency.smoothgrad(f.cnn, f.x, 1, sigma=NAN)),
    ("smoothgrad-batch_size-float", "batch_size", lambda f: saliency.smoothgrad(f.cnn, f.x, 1, batch_size=2.0)),
    ("smoothgrad-seed-float", "seed", lambda f: saliency.smoothgrad(f.cnn, f.x, 1, seed=1.5)),
    # ---------------------------------------------------------------- deconvnet
    ("relu_backward-rule", "rule", lambda f: deconvnet.relu_backward(f.x, f.x, "lrp")),
    ("relu_backward-shapes", "g", lambda f: deconvnet.relu_backward(f.x, f.x[:, :1, :3], "guided")),
    ("relu_rule-model", "model", lambda f: deconvnet.relu_rule("cnn", "guided").__enter__()),
    ("relu_rule-rule", "rule", lambda f: deconvnet.relu_rule(f.cnn, "Guided").__enter__()),
    ("project-channel-neg", "channel", lambda f: deconvnet.project(f.cnn, f.x, "features.3", -1)),
    ("project-channel-float", "channel", lambda f: deconvnet.project(f.cnn, f.x, "features.3", 1.0)),
    ("project-top_k0", "top_k", lambda f: deconvnet.project(f.cnn, f.x, "features.3", 0, top_k=0)),
    ("project-layer", "layer", lambda f: deconvnet.project(f.cnn, f.x, "features.99", 0)),
    ("project-layer-None", "layer", lambda f: deconvnet.project(f.cnn, f.x, None, 0)),
    ("receptive_field-row", "row", lambda f: deconvnet.receptive_field(f.cnn, f.x, "features.3", 64, 0)),
    ("receptive_field-col", "col", lambda f: deconvnet.receptive_field(f.cnn, f.x, "features.3", 0, -1)),
    ("top_activations-k0", "k", lambda f: deconvnet.top_activations(f.cnn, f.x, "features.3", 0, k=0)),
    ("top_activations-batch_size-neg", "batch_size",
     lambda f: deconvnet.top_activations(f.cnn, f.x, "features.3", 0, batch_size=-1)),
    ("top_activations-channel", "channel", lambda f: deconvnet.top_activations(f.cnn, f.x, "features.3", 99)),
    # ---------------------------------------------------------------- LRP
    ("Epsilon-nan", "epsilon", lambda f: lrp.Epsilon(NAN)),
    ("Epsilon-inf", "epsilon", lambda f: lrp.Epsilon(INF)),
    ("Epsilon-str", "epsilon", lambda f: lrp.Epsilon("0.25")),
    ("Gamma-nan", "gamma", lambda f: lrp.Gamma(NAN)),
    ("Gamma-stabiliser", "stabiliser", lambda f: lrp.Gamma(0.25, stabiliser=-1e-6)),
    ("ZBox-low-nan", "low", lambda f: lrp.ZBox(low=NAN)),
    ("ZBox-high-inf", "high", lambda f: lrp.ZBox(high=INF)),
    ("ZBox-low-tensor-nan", "low", lambda f: lrp.ZBox(low=torch.tensor([0.0, NAN, 0.0]).view(1, 3, 1, 1))),
    ("ZBox-low-str", "low", lambda f: lrp.ZBox(low="0")),
    ("ZBox-order", "low", lambda f: lrp.ZBox(low=1.0, high=-1.0)),
    ("ZBox-tensor-order", "low", lambda f: lrp.lrp(f.cnn, f.x, 1, composite=lrp.chapter(
        low=torch.full((1, 3, 1, 1), 2.0), high=torch.full((1, 3, 1, 1), 1.0)))),
    ("ZBox-stabiliser-nan", "stabiliser", lambda f: lrp.ZBox(stabiliser=NAN)),
    ("Composite-first-str", "first", lambda f: lrp.Composite(first="zB", lower=lrp.Zero(), upper=lrp.Zero(),
                                                             dense=lrp.Zero())),
    ("Composite-lower-Pass", "lower", lambda f: lrp.Composite(first=None, lower=lrp.Pass(), upper=lrp.Zero(),
                                                              dense=lrp.Zero())),
    ("Composite-norm-str", "norm", lambda f: lrp.Composite(first=None, lower=lrp.Zero(), upper=lrp.Zero(),
                                                           dense=lrp.Zero(), norm="epsilon")),
    ("Composite-dense-Rule", "dense", lambda f: lrp.Composite(first=None, lower=lrp.Zero(), upper=lrp.Zero(),
                                                              dense=lrp.Rule())),
    ("Composite-lower_share-str", "lower_share", lambda f: lrp.Composite(first=None, lower=lrp.Zero(),
                                                                         upper=lrp.Zero(), dense=lrp.Zero(),
                                                                         lower_share="half")),
    ("Composite-lower_share-nan", "lower_share", lambda f: lrp.chapter(lower_share=NAN)),
    ("chapter-gamma-neg", "gamma", lambda f: lrp.chapter(gamma=-0.25)),
    ("chapter-low-str", "low", lambda f: lrp.chapter(low="min")),
    ("all_epsilon-norm_epsilon", "epsilon", lambda f: lrp.all_epsilon(0.25, norm_epsilon=NAN)),
    ("lrp-maxpool", "maxpool", lambda f: lrp.lrp(f.cnn, f.x, 1, maxpool="max")),
    ("lrp-composite", "composite", lambda f: lrp.lrp(f.cnn, f.x, 1, composite="chapter")),
    ("lrp-return_layers", "return_layers", lambda f: lrp.lrp(f.cnn, f.x, 1, return_layers="yes")),
    ("conservation-maxpool", "maxpool", lambda f: lrp.conservation(f.cnn, f.x, 1, maxpool=None)),
    ("canonize-x", "x", lambda f: lrp.canonize(f.cnn, f.x[0])),
    # ---------------------------------------------------------------- activation maximisation
    ("class_logit-neg", "c", lambda f: actmax.class_logit(-1)),
    ("channel-layer-type", "layer", lambda f: actmax.channel(3, 0)),
    ("unit-y-float", "y", lambda f: actmax.unit("features.3", 0, 1.5, 0)),
    ("Objective-mul-nan", "weight", lambda f: NAN * f.obj),
    ("Objective-mul-inf", "weight", lambda f: f.obj * INF),
    ("maximize-l2-inf", "l2", lambda f: actmax.maximize(f.cnn, f.obj, steps=2, l2=INF)),
    ("maximize-tv-nan", "tv", lambda f: actmax.maximize(f.cnn, f.obj, steps=2, tv=NAN)),
    ("maximize-tv-inf", "tv", lambda f: actmax.maximize(f.cnn, f.obj, steps=2, tv=INF)),
    ("maximize-lr-inf", "lr", lambda f: actmax.maximize(f.cnn, f.obj, steps=2, lr=INF)),
    ("maximize-lr-str", "lr", lambda f: actmax.maximize(f.cnn, f.obj, steps=2, lr="fast")),
    ("maximize-blur_sigma-neg", "blur_sigma", lambda f: actmax.maximize(f.cnn, f.obj, steps=2, blur_every=1,
                                                                       blur_sigma=-1.0)),
    ("maximize-blur_every-bool", "blur_every", lambda f: actmax.maximize(f.cnn, f.obj, steps=2, blur_every=True)),
    ("maximize-jitter-neg", "jitter", lambda f: actmax.maximize(f.cnn, f.obj, steps=2, jitter=-2)),
    ("maximize-jitter-huge", "jitter", lambda f: actmax.maximize(f.cnn, f.obj, steps=2, jitter=1000)),
    ("maximize-seed-None", "seed", lambda f: actmax.maximize(f.cnn, f.obj, steps=2, seed=None)),
    ("maximize-seed-float", "seed", lambda f: actmax.maximize(f.cnn, f.obj, steps=2, seed=0.5)),
    ("maximize-seed-huge", "seed", lambda f: actmax.maximize(f.cnn, f.obj, steps=2, seed=2 ** 70)),
    ("maximize-image_size0", "image_size", lambda f: actmax.maximize(f.cnn, f.obj, steps=2, image_size=0)),
    ("maximize-image_size-float", "image_size", lambda f: actmax.maximize(f.cnn, f.obj, steps=2, image_size=63.5)),
    ("maximize-record_every-bool", "record_every", lambda f: actmax.maximize(f.cnn, f.obj, steps=2,
                                                                            record_every=True)),
    ("maximize-steps-float", "steps", lambda f: actmax.maximize(f.cnn, f.obj, steps=2.0)),
    ("maximize-n0", "n", lambda f: actmax.maximize(f.cnn, f.obj, steps=2, n=0)),
    ("maximize-init-nan", "init", lambda f: actmax.maximize(f.cnn, f.obj, steps=2, init=torch.full(
        (1, 3, 64, 64), NAN))),
    ("maximize-init-list", "init", lambda f: actmax.maximize(f.cnn, f.obj, steps=2, init=[[0.5]])),
    ("maximize-init-int", "init", lambda f: actmax.maximize(f.cnn, f.obj, steps=2, init=torch.zeros(
        1, 3, 64, 64, dtype=torch.uint8))),
    ("maximize-objective", "objective", lambda f: actmax.maximize(f.cnn, "logit 1", steps=2)),
    ("dgn_am-z_init-nan", "z_init", lambda f: actmax.dgn_am(f.cnn, f.gen, f.obj, steps=2, z_init=torch.full(
        (1, f.gen.latent_dim), NAN))),
    ("dgn_am-l2_latent-inf", "l2_latent", lambda f: actmax.dgn_am(f.cnn, f.gen, f.obj, steps=2, l2_latent=INF)),
    ("dgn_am-lr-nan", "lr", lambda f: actmax.dgn_am(f.cnn, f.gen, f.obj, steps=2, lr=NAN)),
    ("dgn_am-seed-None", "seed", lambda f: actmax.dgn_am(f.cnn, f.gen, f.obj, steps=2, seed=None)),
    ("dgn_am-n-float", "n", lambda f: actmax.dgn_am(f.cnn, f.gen, f.obj, steps=2, n=1.0)),
    ("total_variation-2d", "x", lambda f: actmax.total_variation(torch.zeros(4, 4))),
    ("high_frequency_energy-cutoff", "cutoff", lambda f: actmax.high_frequency_energy(f.x, cutoff=NAN)),
    ("high_frequency_energy-cutoff-big", "cutoff", lambda f: actmax.high_frequency_energy(f.x, cutoff=0.7)),
    ("ruler_tick_energy-band0", "band", lambda f: actmax.ruler_tick_energy(f.x, band=0)),
    ("ruler_tick_energy-band-big", "band", lambda f: actmax.ruler_tick_energy(f.x, band=65)),
    ("ruler_tick_energy-periods", "periods", lambda f: actmax.ruler_tick_energy(f.x, periods=(0.0, 4.0))),
    ("nearest_neighbour_distance-shapes", "reference",
     lambda f: actmax.nearest_neighbour_distance(f.x, f.x[:, :, :32])),
    ("pooled_features-layer", "layer", lambda f: actmax.pooled_features(f.cnn, "features.99")),
    # ---------------------------------------------------------------- attention
    ("cls_attention-layer", "layer", lambda f: attention.cls_attention(f.attn, 6)),
    ("cls_attention-head", "head", lambda f: attention.cls_attention(f.attn, 0, 4)),
    ("rollout-discard-nan", "discard_ratio", lambda f: attention.rollout(f.attn, discard_ratio=NAN)),
    ("rollout-alpha-nan", "alpha", lambda f: attention.rollout(f.attn, alpha=NAN)),
    ("rollout-alpha-str", "alpha", lambda f: attention.rollout(f.attn, alpha="half")),
    ("rollout-head_fusion", "head_fusion", lambda f: attention.rollout(f.attn, head_fusion="median")),
    ("rollout-num_prefix_tokens", "num_prefix_tokens", lambda f: attention.rollout(f.attn, num_prefix_tokens=-1)),
    ("rollout-readout", "readout", lambda f: attention.rollout(f.attn, readout="cls")),
    ("rollout-nan-row", "attn", lambda f: attention.rollout(torch.where(f.attn == f.attn.max(), NAN, f.attn))),
    ("token_layout-model", "model", lambda f: attention.token_layout("vit")),
    ("rollout_map-discard", "discard_ratio", lambda f: attention.rollout_map(f.vit, f.x, discard_ratio=1.0)),
    ("rollout_map-mode", "mode", lambda f: attention.rollout_map(f.vit, f.x, mode="bicubic")),
    ("upsample_to_image-size", "image_size", lambda f: attention.upsample_to_image(f.map, 0)),
    ("upsample_to_image-size-str", "image_size", lambda f: attention.upsample_to_image(f.map, "64")),
    # ---------------------------------------------------------------- evaluation: faithfulness
    ("deletion-batch_size-neg", "batch_size", lambda f: evaluation.deletion_curve(f.cnn, f.x, 1, f.map,
                                                                                 batch_size=-1)),
    ("deletion-batch_size0", "batch_size", lambda f: evaluation.deletion_curve(f.cnn, f.x, 1, f.map, batch_size=0)),
    ("deletion-blur_sigma0", "blur_sigma", lambda f: evaluation.deletion_curve(f.cnn, f.x, 1, f.map,
                                                                              blur_sigma=0.0)),
    ("deletion-blur_sigma-neg", "blur_sigma", lambda f: evaluation.deletion_curve(f.cnn, f.x, 1, f.map,
                                                                                 blur_sigma=-2.0)),
    ("insertion-blur_sigma-nan", "blur_sigma", lambda f: evaluation.insertion_curve(f.cnn, f.x, 1, f.map,
                                                                                   blur_sigma=NAN)),
    ("deletion-steps-bool", "steps", lambda f: evaluation.deletion_curve(f.cnn, f.x, 1, f.map, steps=True)),
    ("deletion-steps0", "steps", lambda f: evaluation.deletion_curve(f.cnn, f.x, 1, f.map, steps=0)),
    ("deletion-baseline", "baseline", lambda f: evaluation.deletion_curve(f.cnn, f.x, 1, f.map, baseline="black")),
    ("deletion-score", "score", lambda f: evaluation.deletion_curve(f.cnn, f.x, 1, f.map, score="prob")),
    ("deletion-map-nan", "attribution", lambda f: evaluation.deletion_curve(f.cnn, f.x, 1, nan_map(f))),
    ("insertion-map-inf", "attribution", lambda f: evaluation.insertion_curve(f.cnn, f.x, 1, nan_map(f, INF))),
    ("random_map-seed-None", "seed", lambda f: evaluation.random_map(f.x, seed=None)),
    ("relevance_mass-nan", "evidence", lambda f: evaluation.relevance_mass(nan_map(f), f.mask)),
    ("relevance_mass-inf", "evidence", lambda f: evaluation.relevance_mass(nan_map(f, INF), f.mask)),
    ("rank_accuracy-nan", "evidence", lambda f: evaluation.relevance_rank_accuracy(nan_map(f), f.mask)),
    ("pointing_game-nan", "evidence", lambda f: evaluation.pointing_game(nan_map(f), f.mask)),
    ("pointing_game-tolerance-neg", "tolerance", lambda f: evaluation.pointing_game(f.map, f.mask, tolerance=-1)),
    ("pointing_game-tolerance-float", "tolerance", lambda f: evaluation.pointing_game(f.map, f.mask, tolerance=1.5)),
    ("relevance_mass-mask-float", "mask", lambda f: evaluation.relevance_mass(f.map, f.map)),
    # ---------------------------------------------------------------- evaluation: similarity
    ("spearman-nan", "a", lambda f: evaluation.spearman(nan_map(f), f.map)),
    ("spearman-inf-b", "b", lambda f: evaluation.spearman(f.map, nan_map(f, -INF))),
    ("spearman-2d", "a", lambda f: evaluation.spearman(f.map[0], f.map[1])),
    ("ssim-nan", "a", lambda f: evaluation.ssim(nan_map(f), f.map)),
    ("ssim-window-even", "window", lambda f: evaluation.ssim(f.map, f.map, window=8)),
    ("ssim-window-big", "window", lambda f: evaluation.ssim(f.map, f.map, window=65)),
    ("ssim-window1", "window", lambda f: evaluation.ssim(f.map, f.map, window=1)),
    ("ssim-window-float", "window", lambda f: evaluation.ssim(f.map, f.map, window=7.0)),
    ("agreement-empty", "maps", lambda f: evaluation.agreement({})),
    ("agreement-list", "maps", lambda f: evaluation.agreement([f.map, f.map])),
    ("agreement-nan", "a", lambda f: evaluation.agreement({"a": nan_map(f), "b": f.map})),
    ("agreement-shapes", "maps", lambda f: evaluation.agreement({"a": f.map, "b": f.map[:1]})),
    # ---------------------------------------------------------------- evaluation: randomisation and registry
    ("randomized_models-seed-None", "seed", lambda f: next(evaluation.randomized_models(f.cnn, seed=None))),
    ("randomized_models-order", "order", lambda f: next(evaluation.randomized_models(f.cnn, order="random"))),
    ("model_randomization-seed-float", "seed", lambda f: evaluation.model_randomization(f.cnn, "gradient", f.x, 1,
                                                                                       seed=0.5)),
    ("randomization_sweep-methods", "methods", lambda f: evaluation.randomization_sweep(f.cnn, [], f.x, 1)),
    ("randomization_sweep-options", "options", lambda f: evaluation.randomization_sweep(f.cnn, ["gradient"], f.x, 1,
                                                                                       options=["n_samples"])),
    ("relative_cost-repeat0", "repeat", lambda f: evaluation.relative_cost(f.cnn, "gradient", f.x, 1, repeat=0)),
    ("method_maps-options", "options", lambda f: evaluation.method_maps(f.cnn, f.x, 1, ["gradient"], options=3)),
    ("get_method-unknown", "method", lambda f: evaluation.get_method("grad")),
    ("randomization_layers-model", "model", lambda f: evaluation.randomization_layers("cnn")),
    ("final-metric", "metric", lambda f: evaluation.randomization_sweep(f.cnn, "gradient", f.x, 1).popitem()[1]
     .final("pearson")),
    ("similarity_curves-metrics", "metrics", lambda f: evaluation.similarity_curves(
        evaluation.randomization_sweep(f.cnn, ["gradient"], f.x, 1), metrics=("pearson",))),
    ("similarity_curves-empty", "results", lambda f: evaluation.similarity_curves({})),
    ("curves_figure-empty", "curves", lambda f: evaluation.curves_figure({})),
    ("agreement_figure-type", "result", lambda f: evaluation.agreement_figure("matrix")),
    ("randomization_grid-index", "index", lambda f: evaluation.randomization_grid(
        evaluation.randomization_sweep(f.cnn, ["gradient"], f.x, 1, order="independent"), index=2)),
    # ---------------------------------------------------------------- viz
    ("robust_max-percentile", "percentile", lambda f: viz.robust_max(f.map[0], percentile=150)),
    ("robust_max-percentile-nan", "percentile", lambda f: viz.robust_max(f.map[0], percentile=NAN)),
    ("heatmap-percentile", "percentile", lambda f: viz.heatmap(None, f.map[0], percentile=0)),
    ("overlay-alpha", "alpha", lambda f: viz.overlay(None, f.x[0], f.map[0], alpha=1.5)),
    ("to_map-reduce", "reduce", lambda f: viz.to_map(f.x[:1], reduce="mean")),
    ("scaling_note-percentile", "percentile", lambda f: viz.scaling_note(True, percentile=-5)),
    ("as_image-shape", "x", lambda f: viz.as_image(torch.zeros(5, 4, 4))),
    ("plot_confusion-shape", "matrix", lambda f: viz.plot_confusion(torch.zeros(2, 3), ["a", "b"])),
    ("show_lesions-ncols0", "ncols", lambda f: viz.show_lesions(f.lesions, ncols=0)),
    ("method_grid-overlay_alpha", "overlay_alpha", lambda f: viz.method_grid(f.x, {"m": f.map},
                                                                             overlay_alpha=NAN)),
]


@pytest.fixture(scope="module")
def f():
    return fixtures()


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_argument_gets_a_clear_error_naming_it(case, f):
    _, arg, call = case
    with pytest.raises((ValueError, TypeError)) as info:
        call(f)
    message = str(info.value)
    assert re.search(rf"(?<![\w.]){re.escape(arg)}(?!\w)", message), message


def test_lesion_set_index_out_of_range():
    lesions = synthetic.make_lesions(3, seed=0)
    assert len(lesions[-1]) == 1 and len(lesions[2]) == 1
    with pytest.raises(IndexError, match="index 3 is out of range for a LesionSet of 3 images"):
        lesions[3]


def test_checks_return_canonical_values_and_say_what_is_allowed():
    assert checks.integer(torch.tensor(3), "k", low=1) == 3 and isinstance(checks.integer(3, "k"), int)
    assert checks.integer(None, "k", none_ok=True) is None
    assert checks.real(1, "lr", low=0, low_open=True) == 1.0 and checks.real(torch.tensor(0.5), "p") == 0.5
    assert checks.choice("avg", "mode", ("avg", "max")) == "avg"
    assert checks.seed(2 ** 64 - 1) == 2 ** 64 - 1
    with pytest.raises(ValueError, match=r"batch_size must be an int >= 1 \(steps per pass\), got -1"):
        checks.integer(-1, "batch_size", low=1, hint="steps per pass")
    with pytest.raises(ValueError, match=r"lr must be a finite number > 0, got inf"):
        checks.real(INF, "lr", low=0, low_open=True)
    with pytest.raises(ValueError, match=r"p must be a finite number >= 0 and < 1, got 1"):
        checks.real(1.0, "p", low=0.0, high=1.0, high_open=True)
    with pytest.raises(ValueError, match=r"mode must be one of 'a', 'b', got 'c'"):
        checks.choice("c", "mode", "ab")
    with pytest.raises(ValueError, match=r"m has 2 non-finite values \(1 NaN, 1 inf\) of 4; clean it"):
        checks.finite(torch.tensor([0.0, NAN, INF, 1.0]), "m", cause="clean it")
    with pytest.raises(TypeError, match=r"rule must be an LRP rule, got 'zB' \(str\)"):
        checks.instance("zB", "rule", lrp.Rule, "an LRP rule")
    assert math.isfinite(checks.real(-0.0, "x"))


def test_huge_blur_sigma_builds_no_huge_kernel():
    """maximize(blur_sigma=1e9) used to build its kernel before clamping it to the image
    (a 6e9-tap kernel, 21 GB). The kernel is now clamped first, so a huge sigma is an
    ordinary, nearly flat blur."""
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    flat = data.gaussian_blur(x, 1e9)
    assert flat.shape == x.shape and torch.isfinite(flat).all()
    assert float(flat.std((2, 3)).max()) < 0.15 * float(x.std((2, 3)).min())
    assert torch.allclose(data.gaussian_blur(x, 0.0), x)  # sigma 0: no blur, as before
    result = actmax.maximize(models.load("lesion_cnn"), actmax.class_logit(1), steps=2, blur_every=1, blur_sigma=1e9)
    assert result.image.shape == (1, 3, 64, 64) and torch.isfinite(result.image).all()
