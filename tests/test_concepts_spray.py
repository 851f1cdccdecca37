"""SpRAy (chapter6_utils.concepts.clusters): planted strategies are recovered, the eigengap
chooses their number, and bad maps are refused."""
import pytest
import torch

from chapter6_utils import concepts as sp


def planted(n_per=30, places=((4, 4), (4, 24), (24, 14)), seed=0):
    """Maps whose relevance sits in one of ``places`` (a blob there, noise elsewhere)."""
    gen = torch.Generator().manual_seed(seed)
    maps, truth = [], []
    for j, (r, c) in enumerate(places):
        for _ in range(n_per):
            m = 0.05 * torch.rand(32, 32, generator=gen)
            rr = r + int(torch.randint(-2, 3, (1,), generator=gen))
            cc = c + int(torch.randint(-2, 3, (1,), generator=gen))
            m[rr:rr + 6, cc:cc + 6] += 1.0 + torch.rand(1, generator=gen)
            maps.append(m - 0.02)  # some negative relevance too
            truth.append(j)
    return torch.stack(maps), torch.tensor(truth)


def test_recovers_planted_strategies_and_their_number():
    maps, truth = planted()
    result = sp.spray(maps, max_k=6)
    assert result.k == 3 and result.eigengap > 0
    assert result.eigengap == pytest.approx(float(result.eigenvalues[3] - result.eigenvalues[2]))
    # each cluster is one planted group (labels are a permutation)
    for j in range(3):
        members = truth[result.labels == j]
        assert len(members) == 30 and (members == members[0]).all()
    assert result.mean_maps.shape == (3, 32, 32) and result.sizes.tolist() == [30, 30, 30]
    forced = sp.spray(maps, k=2, max_k=6)
    assert forced.k == 2 and forced.labels.max() == 1


def test_purity():
    labels = torch.tensor([0, 0, 1, 1, 1])
    truth = torch.tensor([True, False, True, True, True])
    assert torch.allclose(sp.purity(labels, truth), torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError):
        sp.purity(labels, truth.float())


def test_bad_maps_are_refused():
    maps, _ = planted(n_per=4)
    with pytest.raises(ValueError, match="too few"):
        sp.spray(maps[:5], max_k=6)
    bad = maps.clone()
    bad[0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        sp.spray(bad, max_k=4)
    empty = maps.clone()
    empty[1] = -1.0
    with pytest.raises(ValueError, match="no positive relevance"):
        sp.spray(empty, max_k=4)
    with pytest.raises(ValueError, match="float tensor"):
        sp.spray(maps.long(), max_k=4)
