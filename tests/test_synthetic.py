"""The lesion world: shapes, determinism, split statistics, masks, errors, speed."""

import pytest
import torch

from chapter6_utils.synthetic import CLASSES, SPLITS, make_lesions, paste_rulers


@pytest.fixture(scope="module")
def biased():
    return make_lesions(2000, "biased", seed=5)


def test_shapes_and_dtypes(biased):
    d = biased
    assert d.images.shape == (2000, 3, 64, 64) and d.images.dtype == torch.float32
    assert d.labels.shape == (2000,) and d.labels.dtype == torch.int64
    for m in (d.lesion_mask, d.ruler_mask):
        assert m.shape == (2000, 64, 64) and m.dtype == torch.bool
    assert d.has_ruler.shape == (2000,) and d.has_ruler.dtype == torch.bool
    assert tuple(d.classes) == CLASSES == ("benign", "malignant")
    assert float(d.images.min()) >= 0.0 and float(d.images.max()) <= 1.0
    assert set(d.labels.unique().tolist()) == {0, 1}
    assert int((d.labels == 1).sum()) == 1000  # balanced classes


def test_same_seed_same_bits_other_seed_other_data():
    a, b = make_lesions(300, "unbiased", seed=11), make_lesions(300, "unbiased", seed=11)
    for k in ("images", "labels", "lesion_mask", "ruler_mask", "has_ruler", "malignancy"):
        assert torch.equal(getattr(a, k), getattr(b, k)), k
    c = make_lesions(300, "unbiased", seed=12)
    assert not torch.equal(a.images, c.images)


@pytest.mark.parametrize("split", sorted(SPLITS))
def test_ruler_rates_follow_the_split(split):
    d = make_lesions(4000, split, seed=3)
    p_benign, p_malignant = SPLITS[split]
    rate = lambda c: float(d.has_ruler[d.labels == c].float().mean())  # noqa: E731
    # 2000 draws per class: the standard error is at most 1.1 points
    assert abs(rate(0) - p_benign) < 0.04
    assert abs(rate(1) - p_malignant) < 0.04


def test_masks_match_the_images(biased):
    d = biased
    # the ruler mask is empty exactly when there is no ruler
    assert torch.equal(d.ruler_mask.flatten(1).any(1), d.has_ruler)
    # every image has a visible lesion, never overlapping the ruler
    assert bool(d.lesion_mask.flatten(1).any(1).all())
    assert not bool((d.lesion_mask & d.ruler_mask).any())
    # rulers sit along an edge: every ruler touches the outer 13-pixel frame only
    frame = torch.zeros(64, 64, dtype=torch.bool)
    frame[:13], frame[-13:], frame[:, :13], frame[:, -13:] = True, True, True, True
    assert not bool((d.ruler_mask & ~frame).any())
    # lesions are darker than the skin around them
    lum = d.images.mean(1)
    skin = ~(d.lesion_mask | d.ruler_mask)
    for i in range(0, 2000, 97):
        assert lum[i][d.lesion_mask[i]].mean() < lum[i][skin[i]].mean()


def test_rulers_carry_tick_marks(biased):
    # along the strip, the brightness must alternate (ticks), not be a plain bar
    d = biased.select(ruler=True)[:50]
    lum = d.images.mean(1)
    for i in range(len(d)):
        vals = lum[i][d.ruler_mask[i]]
        assert float(vals.max() - vals.min()) > 0.2


def test_abcd_features_separate_the_classes_with_overlap(biased):
    d = biased
    area = d.lesion_mask.flatten(1).float().sum(1)  # D: diameter

    def variegation(i):  # C: spread of the blue chromaticity inside the lesion (robust to hair)
        px = d.images[i][:, d.lesion_mask[i]]
        blue = px[2] / (px.sum(0) + 1e-3)
        return torch.quantile(blue, 0.9) - torch.quantile(blue, 0.1)

    colour_spread = torch.stack([variegation(i) for i in range(len(d))])
    for feature in (area, colour_spread):
        mal, ben = feature[d.labels == 1], feature[d.labels == 0]
        assert mal.median() > ben.median()
        # ...but with overlap: some benign lesions score above the lowest tenth of malignant ones
        assert float((ben > mal.quantile(0.1)).float().mean()) > 0.01
    # the latent value behind the features gives ~90% accuracy, not 100%
    acc = float(((d.malignancy > 0.5).long() == d.labels).float().mean())
    assert 0.85 < acc < 0.95


def test_select_and_indexing(biased):
    sub = biased.select(label=1, ruler=True)
    assert len(sub) > 0 and bool((sub.labels == 1).all()) and bool(sub.has_ruler.all())
    one = biased[7]
    assert len(one) == 1 and torch.equal(one.images[0], biased.images[7])
    assert "2000 images" in biased.summary()


@pytest.mark.parametrize("kwargs, match", [
    (dict(n=0), "n must be a positive integer"),
    (dict(n=-3), "n must be a positive integer"),
    (dict(n=2.5), "n must be a positive integer"),
    (dict(n=10, split="balanced"), "valid splits are \\['biased', 'swapped', 'unbiased'\\]"),
    (dict(n=10, seed=-1), "seed must be an integer"),
    (dict(n=10, seed="0"), "seed must be an integer"),
    (dict(n=10, seed=1.5), "seed must be an integer"),
])
def test_bad_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_lesions(**kwargs)


def test_one_image_works():
    d = make_lesions(1, "swapped", seed=0)
    assert d.images.shape == (1, 3, 64, 64)


def test_paste_rulers_changes_only_the_ruler_pixels():
    pool = make_lesions(400, "unbiased", seed=9)
    target = pool.select(ruler=False)[:50]
    donor = pool.select(ruler=True)[:50]
    edited = paste_rulers(target, donor)
    m = donor.ruler_mask.unsqueeze(1).expand_as(target.images)
    assert torch.equal(edited.images[m], donor.images[m])
    assert torch.equal(edited.images[~m], target.images[~m])
    assert bool(edited.has_ruler.all()) and torch.equal(edited.labels, target.labels)
    assert not bool((edited.lesion_mask & edited.ruler_mask).any())
    with pytest.raises(ValueError, match="same length|has 50 images"):
        paste_rulers(target, donor[:10])
    with pytest.raises(ValueError, match="needs a ruler"):
        paste_rulers(target, target)
