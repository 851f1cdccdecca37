"""The randomisation tests of evaluation.sanity: each variant changes what it should,
leaves the model alone, and separates methods by their intervals."""
import numpy as np
import pytest
import scipy.stats
import torch

from chapter6_utils import evaluation as ev

MALIGNANT = 1


def test_map_entropy_is_numpys_histogram_entropy():
    gen = torch.Generator().manual_seed(0)
    m = torch.randn(3, 16, 16, generator=gen) ** 3
    for i in range(3):
        counts, _ = np.histogram(m[i].numpy().astype(np.float64), bins=100)
        assert float(ev.map_entropy(m)[i]) == pytest.approx(scipy.stats.entropy(counts), abs=1e-6)
    assert ev.map_entropy(torch.ones(1, 8, 8))[0] == 0


def test_guided_backprop_survives_the_cascade_the_gradient_does_not(cnn, x32):
    state = {k: v.clone() for k, v in cnn.state_dict().items()}
    report = ev.sanity_checks(cnn, ["gradient", "guided_backprop"], x32, MALIGNANT, tests=["cascading", "independent"],
                              curve=True)
    assert all(torch.equal(v, state[k]) for k, v in cnn.state_dict().items())  # the model is left alone
    est = report.estimates["cascading"]
    assert est["guided_backprop"].low > est["gradient"].high, (est["guided_backprop"], est["gradient"])
    assert report.verdicts["cascading"]["guided_backprop"] == "fail"
    # the curve starts at 1 (the trained map against itself) and its step k // 2 is the test's value
    k = len(report.layers)
    curve = report.curve["gradient"]
    assert curve.shape == (k + 1, 3, 32) and bool((curve[0] == 1).all())
    assert torch.allclose(curve[k // 2], report.values["cascading"]["gradient"])
    # the fully random maps differ between seeds (each seed draws its own weights)
    r = report.random["gradient"]
    assert r.shape == (3, 32, 64, 64) and not torch.equal(r[0], r[1])


def test_a_curve_for_the_first_seed_leaves_the_tests_as_they_were(cnn, x32):
    x = x32
    full = ev.sanity_checks(cnn, ["gradient"], x, MALIGNANT, tests=["cascading", "emprt"], curve=True, n_boot=100)
    one = ev.sanity_checks(cnn, ["gradient"], x, MALIGNANT, tests=["cascading", "emprt"], curve=True, curve_seeds=1,
                           n_boot=100)
    k = len(one.layers)
    assert one.curve["gradient"].shape == (k + 1, 1, 32)
    assert torch.equal(one.curve["gradient"], full.curve["gradient"][:, :1])
    for t in ("cascading", "emprt"):  # every seed still feeds the tests
        assert torch.equal(one.values[t]["gradient"], full.values[t]["gradient"])
    assert torch.equal(one.random["gradient"], full.random["gradient"])
    for bad in (0, 4, 1.5):
        with pytest.raises((ValueError, TypeError), match="curve_seeds"):
            ev.sanity_checks(cnn, ["gradient"], x, MALIGNANT, tests=["cascading"], curve=True, curve_seeds=bad)


def test_the_same_seed_gives_the_same_numbers(cnn, x32):
    a = ev.sanity_checks(cnn, ["gradient"], x32, MALIGNANT, tests=["bottom_up", "emprt"])
    b = ev.sanity_checks(cnn, ["gradient"], x32, MALIGNANT, tests=["bottom_up", "emprt"])
    c = ev.sanity_checks(cnn, ["gradient"], x32, MALIGNANT, tests=["bottom_up", "emprt"], seeds=(3, 4, 5))
    assert torch.equal(a.values["bottom_up"]["gradient"], b.values["bottom_up"]["gradient"])
    assert not torch.equal(a.values["bottom_up"]["gradient"], c.values["bottom_up"]["gradient"])
    assert a.estimates["emprt"]["gradient"] == b.estimates["emprt"]["gradient"]
