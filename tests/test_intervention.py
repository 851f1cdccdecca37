"""Ground truth by intervention (evaluation.ruler_effect) and the meta-evaluation's tau."""
import copy

import pytest
import scipy.stats
import torch

from chapter6_utils import evaluation as ev
from chapter6_utils import models, synthetic


def test_a_ruler_free_rendering_changes_only_the_rulers_pixels():
    a = synthetic.make_lesions(64, "biased", seed=5)
    b = synthetic.make_lesions(64, "biased", seed=5, draw_rulers=False)
    m = a.ruler_mask[:, None].expand_as(a.images)
    assert bool(a.has_ruler.any()) and torch.equal(a.images[~m], b.images[~m])
    assert (a.images[m] != b.images[m]).float().mean() > 0.9 and torch.equal(a.ruler_mask, b.ruler_mask)
    with pytest.raises(TypeError, match="draw_rulers"):
        synthetic.make_lesions(4, draw_rulers="no")


def test_kendall_tau_matches_scipy():
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        a, b = torch.randint(0, 4, (7,), generator=gen).double(), torch.randn(7, generator=gen).double()
        assert float(ev.kendall_tau(a, b)) == pytest.approx(scipy.stats.kendalltau(a, b).statistic, abs=1e-12)
    assert ev.kendall_tau(torch.ones(4), torch.arange(4.0)).isnan()


def test_the_shortcut_model_has_a_ruler_effect_the_clean_one_has_not():
    methods = ["gradient", "edge"]
    shortcut = ev.ruler_effect(models.load("lesion_cnn"), methods, n=48)
    clean = ev.ruler_effect(models.load("lesion_cnn_clean"), methods, n=48)
    assert shortcut.effect.shape == (48,) and 0 < int(shortcut.pasted.sum()) < 48
    assert shortcut.effect.mean() > 10 * clean.effect.abs().mean()  # the ruler moves only the shortcut model
    assert shortcut.rho["gradient"].low > 0, shortcut.rho["gradient"]  # the gradient's mass follows the effect
    assert shortcut.rho["gradient"].n_images == 48
    with pytest.raises(ValueError, match="n"):
        ev.ruler_effect(models.load("lesion_cnn"), methods, n=8)


def test_meta_evaluation_orders_metrics_by_their_tau_with_intervals(monkeypatch):
    methods = ["gradient", "saliency", "gradient_x_input"]
    evaluation = ev.evaluate(methods=methods, tests=["independent"], steps=4)
    truth = ev.ruler_effect(models.load("lesion_cnn"), methods, n=48)
    drawn = []
    real = ev.intervention.deletion_curve
    monkeypatch.setattr(ev.intervention, "deletion_curve", lambda *a, **k: drawn.append(1) or real(*a, **k))
    meta = ev.meta_evaluation(evaluation, truth, baselines=("blur",), steps=4, n_boot=200)
    assert drawn == []  # every blurred curve came from the evaluation
    assert meta.methods == methods
    assert set(meta.tau) == {"MPRT: independent", "deletion AUC (blur)", "insertion AUC (blur)",
                             "relevance mass (ruler)", "rank accuracy (ruler)", "pointing game (ruler)"}
    for name, est in meta.tau.items():
        assert est.value != est.value or -1 <= est.low <= est.value <= est.high <= 1, (name, est)
    # the score behind each tau: a lower deletion area is better, so the score is its negative
    assert all(v <= 0 for v in meta.scores["deletion AUC (blur)"].values())
    # the blurred curves evaluate() drew (same images, steps, baseline) are reused: the same scores as drawn anew
    bare = copy.copy(evaluation)
    bare.curves = {}
    again = ev.meta_evaluation(bare, truth, baselines=("blur",), steps=4, n_boot=200)
    assert len(drawn) == len(methods)
    for metric in ("deletion AUC (blur)", "insertion AUC (blur)"):
        for m in methods:
            assert again.scores[metric][m] == pytest.approx(meta.scores[metric][m], rel=1e-5, abs=1e-7)
    taus = [e.value for _, e in meta.ranking() if e.value == e.value]
    assert taus == sorted(taus, reverse=True) and "Kendall tau" in str(meta)
    with pytest.raises(ValueError, match="at least 3 methods"):
        ev.meta_evaluation(evaluation, ev.ruler_effect(models.load("lesion_cnn"), ["gradient"], n=32))
