"""The ViT rows of the evaluation registry, and Chefer et al.'s perturbation protocol with the
ruler intervention (chapter6_utils.evaluation.perturbation)."""
import pytest
import torch
import torch.nn as nn

from chapter6_utils import evaluation as ev, models, synthetic
from chapter6_utils.data import normalize
from chapter6_utils.evaluation import perturbation as P

VIT_METHODS = ["cls_attention", "rollout", "rollout_max", "gradient_rollout", "gradient", "gradient_x_input",
               "attn_lrp", "cp_lrp"]
CLASS_FREE = {"cls_attention", "rollout", "rollout_max"}


@pytest.fixture(scope="module")
def pool():
    return synthetic.make_lesions(160, "biased", seed=synthetic.TEST_SEED)


# --------------------------------------------------------------------------- the registry
def test_the_vit_methods_are_registered_and_apply_to_vits_only(lesion_vit):
    cnn = models.load("lesion_cnn", pretrained=False)
    assert set(VIT_METHODS) <= set(ev.available_methods(lesion_vit))
    for name in ("cls_attention", "rollout_max", "gradient_rollout", "attn_lrp", "cp_lrp"):
        assert ev.METHODS[name].applies_to(lesion_vit) and not ev.METHODS[name].applies_to(cnn), name
    assert "lrp" not in ev.available_methods(lesion_vit)  # the CNN composite: a ViT gets attn_lrp / cp_lrp
    assert ev.METHODS["attn_lrp"].signed and not ev.METHODS["gradient_rollout"].signed


@pytest.mark.bundled("lesion_vit")
def test_every_vit_method_gives_maps_class_free_ones_ignore_the_target(lesion_vit, pool):
    x = normalize(pool[:3].images)
    for name in VIT_METHODS:
        benign, malignant = ev.get_method(name)(lesion_vit, x, 0), ev.get_method(name)(lesion_vit, x, 1)
        assert malignant.shape == (3, 64, 64) and torch.isfinite(malignant).all(), name
        if name in CLASS_FREE:
            assert torch.equal(benign, malignant), name
        else:
            assert float((benign - malignant).norm() / malignant.norm()) > 0.05, name


@pytest.mark.bundled("lesion_vit")
def test_the_sanity_check_runs_on_lesion_vit_and_lrp_maps_drift(lesion_vit, pool):
    x = normalize(pool.select(label=1, ruler=True)[:2].images)
    result = ev.randomization_sweep(lesion_vit, ["attn_lrp", "gradient_rollout", "rollout"], x, 1)
    for name, r in result.items():
        assert r.maps.shape == (len(ev.randomization_layers(lesion_vit)) + 1, 2, 64, 64), name
        assert torch.allclose(r.spearman[0], torch.ones(2)), name
    assert float(result["attn_lrp"].final().mean()) < 0.5  # a randomised ViT is explained differently


# --------------------------------------------------------------------------- the protocol
class Watcher(nn.Module):
    """Predicts class 1 when the top-left 4 x 4 block is bright and records every batch."""

    def __init__(self):
        super().__init__()
        self.seen = []
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, x):
        self.seen.append(x.detach().clone())
        score = x[:, :, :4, :4].mean((1, 2, 3)) * self.w
        return torch.stack([torch.zeros_like(score), score], 1)


def test_pixels_are_removed_in_the_maps_order_and_the_area_is_the_trapezoid():
    model = Watcher()
    x = torch.rand(2, 3, 8, 8) + 0.5  # bright: normalised values well above black's
    ranking = torch.zeros(2, 8, 8)
    ranking[:, :4, :4] = 1.0  # the block that carries the evidence ranks first
    curve = P.perturbation_curve(model, x, [1, 1], ranking, "positive", fractions=(0.0, 0.25, 0.5))
    black = normalize(torch.zeros(1, 3, 1, 1))
    removed = torch.isclose(torch.cat(model.seen), black).all(1)  # (steps * N, 8, 8)
    assert removed.flatten(1).sum(1).tolist() == [0, 0, 16, 16, 32, 32]
    assert removed[2:4, :4, :4].all()  # the 16 top-ranked pixels first
    assert curve.hits.tolist() == [[True, False, False], [True, False, False]]
    assert curve.auc == pytest.approx(100 * (1 + 0) / 2 * 0.25)
    model.seen.clear()
    negative = P.perturbation_curve(model, x, [1, 1], ranking, "negative", fractions=(0.0, 0.25, 0.5, 0.75))
    assert negative.hits.all()  # the 48 unranked pixels go first: the evidence survives up to 75%
    assert torch.isclose(torch.cat(model.seen), black).all(1)[-2:, 4:, :].all()
    with pytest.raises(ValueError, match="order"):
        P.perturbation_curve(model, x, 1, ranking, "random")
    with pytest.raises(ValueError, match="non-finite"):
        P.perturbation_curve(model, x, 1, ranking * float("nan"))
    with pytest.raises(ValueError, match="ranking has shape"):
        P.perturbation_curve(model, x, 1, ranking[:, :4])


def test_known_unperturbed_hits_are_reused_and_orders_can_be_chosen():
    model = Watcher()
    x = torch.rand(3, 3, 8, 8) + 0.5
    ranking = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    full = P.perturbation_curve(model, x, 1, ranking)
    model.seen.clear()
    reused = P.perturbation_curve(model, x, 1, ranking, unperturbed_hits=full.hits[:, 0])
    assert torch.equal(reused.hits, full.hits)
    assert sum(len(b) for b in model.seen) == 3 * (len(P.FRACTIONS) - 1)  # the 0% point is not rerun
    table = P.perturbation_test(model, x, [1, 1, 1], [ev.Method("r", lambda m, x, t: ranking, False, "value",
                                                                  reduce=None)], orders=("positive",))
    assert set(table.curves["r"]["predicted"]) == {"positive"} and "-" in str(table)
    with pytest.raises(ValueError, match="orders"):
        P.perturbation_test(model, x, 1, ["gradient"], orders="positive")


def test_spearman_and_bootstrap_helpers():
    scipy_stats = pytest.importorskip("scipy.stats")
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (40,), generator=gen).double()  # many ties
    b = torch.randn(40, generator=gen).double()
    ours = float(P._spearman(torch.stack([a, b], 1)))
    assert ours == pytest.approx(scipy_stats.spearmanr(a, b).statistic, abs=1e-12)
    value, lo, hi = P._bootstrap(b, P._mean, n_boot=500)
    assert value == pytest.approx(float(b.mean())) and lo < value < hi


@pytest.mark.bundled("lesion_vit")
def test_protocol_table_on_lesion_vit(lesion_vit, pool):
    rand = ev.Method("random", lambda model, x, target: ev.random_map(x), False, "value", reduce=None,
                     label="random map")
    table, perturb, intervention = P.protocol_table(lesion_vit, ["rollout", "attn_lrp", rand], pool, n_perturb=12,
                                                    n_ruler=10, n_boot=200)
    assert [r["name"] for r in table.rows] == ["rollout", "attn_lrp", "random"]
    rollout = table.rows[0]
    assert rollout["pos_pred"] == rollout["pos_other"] and rollout["gap"] == (0.0, 0.0, 0.0)
    for r in table.rows:
        for key in ("pos_pred", "neg_pred", "gap", "ruler_share", "pointing", "rho"):
            value, lo, hi = r[key]
            assert lo <= value <= hi, (r["name"], key)
        assert 0 <= r["pos_pred"][0] <= 90 and 0 <= r["ruler_share"][0] <= 1
    assert perturb.curves["attn_lrp"]["predicted"]["positive"].hits.shape == (12, len(P.FRACTIONS))
    assert intervention["effect"].shape == (10,) and intervention["attn_lrp"]["mass"].shape == (10,)
    assert "intervention rho" in str(table)
    with pytest.raises(ValueError, match="without a ruler"):
        P.ruler_intervention(lesion_vit, ["rollout"], pool.select(ruler=True)[:3], pool.select(ruler=True)[:3])
