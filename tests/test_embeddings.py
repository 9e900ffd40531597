"""Embedding probes and the figures drawn from them."""
import numpy as np
import pytest
import torch

from net.presets import build_model
from utils.analysis.embeddings import (
    difference_map,
    explained_variance,
    latents,
    mean_cosine,
    nearest_neighbour_accuracy,
    nearest_neighbour_chance,
    pca_2d,
    pooled,
)
from utils.analysis.figures import embedding_projection, pipeline_diagram, takeaway_maps


def test_latents_match_the_forward_pass():
    torch.manual_seed(0)
    net = build_model("BaryNet", "tiny").eval()
    x = torch.rand(2, 3, 32, 32)
    b, r = latents(net, x)
    with torch.no_grad():
        out = net(x)
    torch.testing.assert_close(b, out.bary_latent)
    torch.testing.assert_close(r, out.residual)
    assert pooled(b).shape == (2, 128)


def test_difference_map_and_cosine():
    a = torch.zeros(4, 2, 2)
    b = torch.zeros(4, 2, 2)
    b[:, 0, 0] = 1.0                              # distance 2 at one position
    m = difference_map(a, b, (16, 16))
    assert m.shape == (16, 16) and m.max() <= 2.0 + 1e-6 and m.min() >= 0
    assert difference_map(a, a, (8, 8)).abs().max() == 0
    x = torch.randn(3, 5)
    assert abs(mean_cosine(x, x).item() - 1) < 1e-6
    assert abs(mean_cosine(x, -x).item() + 1) < 1e-6


def test_pca_finds_the_dominant_direction():
    g = torch.Generator().manual_seed(0)
    t = torch.linspace(-1, 1, 50)
    feats = torch.stack([10 * t, 0.1 * torch.randn(50, generator=g), 0.1 * torch.randn(50, generator=g)], 1)
    p = pca_2d(feats)
    assert p.shape == (50, 2)
    assert torch.corrcoef(torch.stack([p[:, 0], t]))[0, 1].abs() > 0.999
    assert p[:, 0].var() > 100 * p[:, 1].var()


def test_nearest_neighbour_accuracy_and_chance():
    x = torch.tensor([[0.0], [0.1], [5.0], [5.1]])
    assert nearest_neighbour_accuracy(x, ["a", "a", "b", "b"]) == 1.0
    assert nearest_neighbour_accuracy(x, ["a", "b", "a", "b"]) == 0.0
    assert nearest_neighbour_accuracy(x, ["a", "a", "a", "b"]) == 0.5   # 5.1's neighbour 5.0 says a, so does 5.0's
    assert nearest_neighbour_chance(["a", "a", "b", "b"]) == pytest.approx(4 / 12)   # 2 x (2 x 1) of 4 x 3 pairs
    assert nearest_neighbour_chance(["a", "b", "c"]) == 0.0
    with pytest.raises(ValueError, match="labels"):
        nearest_neighbour_accuracy(x, ["a", "b"])


def test_explained_variance():
    t = torch.linspace(-1, 1, 20)
    feats = torch.stack([3 * t, 0.3 * torch.cos(7 * t), torch.zeros(20)], 1)
    var = explained_variance(feats)
    assert var.shape == (2,) and var.sum() == pytest.approx(1.0, abs=1e-5) and var[0] > 0.9
    assert explained_variance(torch.ones(4, 3)).tolist() == [0.0, 0.0]


def test_figures_are_written(tmp_path):
    rng = np.random.default_rng(0)
    imgs = [rng.random((32, 32, 3)) for _ in range(3)]
    maps = [rng.random((32, 32)) for _ in range(2)]
    assert takeaway_maps(imgs, ["a", "b", "c"], maps, maps, tmp_path / "t.png").stat().st_size > 0
    feats = rng.random((6, 5))
    assert embedding_projection(feats, feats, ["x", "y"] * 3, tmp_path / "p.png").stat().st_size > 0
    assert embedding_projection(feats, feats, ["x", "y"] * 3, tmp_path / "q.png", photos=["u"] * 3 + ["v"] * 3) \
        .stat().st_size > 0
    assert pipeline_diagram(tmp_path / "d.png").stat().st_size > 0


def test_relative_difference_map_is_scale_free():
    torch.manual_seed(0)
    a, b = torch.randn(8, 3, 3), torch.randn(8, 3, 3)
    m = difference_map(a, b, (6, 6), relative=True)
    torch.testing.assert_close(difference_map(10 * a, 10 * b, (6, 6), relative=True), m)
    assert not torch.allclose(difference_map(10 * a, 10 * b, (6, 6)), difference_map(a, b, (6, 6)))


def test_difference_map_is_the_l2_distance_over_channels_bilinearly_upsampled():
    a = torch.zeros(4, 2, 2)
    b = torch.zeros(4, 2, 2)
    b[:, 0, 0] = 1.0  # distance sqrt(4 x 1) = 2 at one position
    assert difference_map(a, b, (2, 2)).tolist() == [[2.0, 0.0], [0.0, 0.0]]
    row = difference_map(torch.zeros(1, 1, 2), torch.tensor([[[0.0, 1.0]]]), (1, 4))
    assert row.tolist() == [[0.0, 0.25, 0.75, 1.0]]  # bilinear, not nearest


def test_relative_difference_map_divides_by_the_mean_norm_of_the_two():
    a = torch.zeros(2, 3, 3)
    a[0] = 3.0  # norm 3 at every position
    torch.testing.assert_close(difference_map(a, -a, (3, 3), relative=True), torch.full((3, 3), 2.0))  # 6 / 3


def test_pca_is_centred_and_signed_by_the_largest_loading():
    """A shift of every row changes nothing; each component points along its largest loading, so a
    negated dominant feature gives a negated first coordinate, not a flip of sign left to the SVD."""
    g = torch.Generator().manual_seed(0)
    t = torch.linspace(-1, 1, 30)
    noise = 0.1 * torch.randn(30, 2, generator=g)
    for sign in (1.0, -1.0):
        feats = torch.cat([sign * 10 * t[:, None], noise], 1)
        p = pca_2d(feats)
        torch.testing.assert_close(pca_2d(feats + 100.0), p, rtol=0, atol=1e-4)
        assert torch.corrcoef(torch.stack([p[:, 0], feats[:, 0]]))[0, 1] > 0.999


def test_pca_gives_the_same_projection_whichever_signs_the_svd_returns(monkeypatch):
    """LAPACK may return any component negated: the projection must not follow it."""
    feats = torch.randn(20, 5, generator=torch.Generator().manual_seed(1))
    expected = pca_2d(feats)
    svd = torch.linalg.svd

    def negated_svd(x, full_matrices=True):
        u, s, vh = svd(x, full_matrices=full_matrices)
        return -u, s, -vh

    monkeypatch.setattr(torch.linalg, "svd", negated_svd)
    torch.testing.assert_close(pca_2d(feats), expected)
