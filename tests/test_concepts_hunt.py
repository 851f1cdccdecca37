"""The shortcut hunt (chapter6_utils.concepts.hunt): ranking without masks, mask scores,
ablation on a copy and the intervention's measurements."""
import pytest
import torch

from chapter6_utils import concepts, models, synthetic
from chapter6_utils.data import normalize


@pytest.fixture(scope="module")
def cnn():
    return models.load("lesion_cnn")


@pytest.fixture(scope="module")
def lesions():
    return synthetic.make_lesions(16, "biased", seed=synthetic.TEST_SEED)


def test_rank_channels_is_the_mean_share_in_any_batching(cnn, lesions):
    x = normalize(lesions.images)
    layers = ["features.5", "features.13"]
    whole = concepts.rank_channels(cnn, x, 1, layers, batch_size=64)
    split = concepts.rank_channels(cnn, x, 1, layers, batch_size=5)
    for layer in layers:
        share = concepts.channel_relevance(cnn, x, 1, layer).mean(0)
        assert torch.allclose(whole[layer].share, share, atol=1e-6)
        assert torch.allclose(split[layer].share, share, atol=1e-6)
        r = whole[layer]
        assert r.n == 16 and sorted(r.order) == list(range(len(share)))
        assert all(share[a] >= share[b] for a, b in zip(r.order, r.order[1:]))
        assert r.top(2) == r.order[:2] and layer in str(r)
    with pytest.raises(ValueError, match="empty"):
        concepts.rank_channels(cnn, x, 1, [])


def test_mask_share_matches_the_conditional_map(cnn, lesions):
    with_ruler = lesions.select(ruler=True)
    x, mask = normalize(with_ruler.images), with_ruler.ruler_mask
    shares = concepts.mask_share(cnn, x, 1, "features.10", [5, 3], mask)
    assert shares.shape == (2, len(x))
    pos = concepts.concept_relevance(cnn, x, 1, "features.10", 3).sum(1).clamp(min=0)
    by_hand = (pos * mask).sum((1, 2)) / pos.sum((1, 2))
    assert torch.allclose(shares[1], by_hand, atol=1e-5, equal_nan=True)  # in the caller's order
    everywhere = concepts.mask_share(cnn, x, 1, "features.10", 3, torch.ones_like(mask))
    ok = ~torch.isnan(everywhere[0])
    assert ok.any() and torch.allclose(everywhere[0][ok], torch.ones(int(ok.sum())))
    with pytest.raises(ValueError, match="bool tensor"):
        concepts.mask_share(cnn, x, 1, "features.10", 3, mask.float())
    with pytest.raises(ValueError, match="out of range"):
        concepts.mask_share(cnn, x, 1, "features.10", [3, 64], mask)


def test_ablation_zeroes_the_channels_on_a_copy_only(cnn, lesions):
    x = normalize(lesions.images[:4])
    before = [p.detach().clone() for p in cnn.parameters()]
    ablated = concepts.ablate_channels(cnn, "features.10", [2, 7])
    seen = []
    ablated.features[11].register_forward_hook(lambda m, i, o: seen.append(i[0]))
    with torch.no_grad():
        out_a, out = ablated(x), cnn(x)
    assert seen[0][:, [2, 7]].abs().max() == 0 and seen[0][:, 3].abs().max() > 0
    assert not torch.allclose(out_a, out)
    assert not any(m._forward_hooks for m in cnn.modules())
    assert all(torch.equal(a, b) for a, b in zip(before, cnn.parameters()))
    with pytest.raises(ValueError, match="out of range"):
        concepts.ablate_channels(cnn, "features.10", 64)
    relu_copy = concepts.ablate_channels(cnn, "features.11", 99)  # a ReLU: checked when it runs
    with pytest.raises(ValueError, match="out of range"):
        relu_copy(x)


def test_intervene_measures_before_and_after(cnn):
    result = concepts.intervene(cnn, "features.13", list(range(64)), n=40)
    u = synthetic.make_lesions(40, "unbiased", seed=synthetic.EVAL_SEED)
    with torch.no_grad():
        acc = float((cnn(normalize(u.images)).argmax(1) == u.labels).float().mean())
    assert result.unbiased[0] == pytest.approx(acc)
    # every channel of the last block zeroed: the features are gone, so a pasted ruler adds nothing
    assert result.gain[1] == pytest.approx(0.0, abs=1e-5) and result.gain[0] > 0
    assert result.n["swapped"] == 40 and result.n["pasted"] > 0
    assert "log-odds" in str(result)
