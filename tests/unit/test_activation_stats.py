import numpy as np
import pytest
import torch

from actsparse.activation_stats import SiteStats, histogram_quantile, log_bin_edges


def _stream(x: np.ndarray, sizes: list[int], bins: int = 512, eps: float = 0.05) -> SiteStats:
    edges = log_bin_edges(bins, 1e-4, 1e3)
    s = SiteStats(x.shape[1], edges, near_zero_eps=eps)
    start = 0
    for size in sizes:
        s.update(torch.from_numpy(x[start : start + size]).float())
        start += size
    assert start == len(x)
    return s


def test_streamed_moments_and_gram_equal_float64_reference():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1000, 24)) * rng.uniform(0.1, 5, 24) + rng.uniform(-2, 2, 24)
    x[rng.random(x.shape) < 0.1] = 0.0
    x32 = x.astype(np.float32).astype(np.float64)  # what the stream sees after the float cast
    s = _stream(x32, [1, 7, 300, 692])
    np.testing.assert_allclose(s.mean.numpy(), x32.mean(0), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(s.std.numpy(), x32.std(0), rtol=1e-10)
    np.testing.assert_allclose((s.sum_abs / s.count).numpy(), np.abs(x32).mean(0), rtol=1e-12)
    np.testing.assert_array_equal(s.n_zero.numpy(), (x32 == 0).sum(0))
    np.testing.assert_array_equal(s.n_near_zero.numpy(), (np.abs(x32) <= 0.05).sum(0))
    gram = x32.T @ x32
    assert np.abs(s.gram.numpy() - gram).max() <= 1e-12 * np.abs(gram).max()
    assert s.count == 1000


def test_histogram_counts_match_numpy():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((400, 8)) * 10.0 ** rng.uniform(-3, 2, (400, 8))
    x[:5] = 0.0
    x[5, 0] = 5e3  # overflow bin
    x32 = x.astype(np.float32).astype(np.float64)
    s = _stream(x32, [400], bins=64)
    edges = s.edges.numpy()
    a = np.abs(x32).ravel()
    expected = np.concatenate(
        [[np.sum(a < edges[0])], np.histogram(a, edges)[0], [np.sum(a >= edges[-1])]]
    )
    # np.histogram's last bin is closed; ours sends |x| == edges[-1] to overflow: none here
    np.testing.assert_array_equal(s.hist.numpy(), expected)
    assert s.hist.sum().item() == a.size


@pytest.mark.parametrize("q", [0.1, 0.25, 0.5, 0.75, 0.9])
def test_histogram_quantile_hits_the_target_fraction(q):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((20000, 4)) * np.exp(rng.standard_normal(4))
    s = _stream(x, [20000], bins=2048)
    t = histogram_quantile(s.edges.numpy(), s.hist.numpy(), q)
    achieved = np.mean(np.abs(x.astype(np.float32)) < t)
    assert abs(achieved - q) < 2e-3  # percentile thresholds well inside +-1 point


def test_histogram_quantile_rejects_bad_input():
    edges = log_bin_edges(16, 1e-3, 1.0).numpy()
    with pytest.raises(ValueError, match="quantile"):
        histogram_quantile(edges, np.ones(17), 1.5)
    with pytest.raises(ValueError, match="empty"):
        histogram_quantile(edges, np.zeros(17), 0.5)


def test_non_finite_activations_fail_naming_the_site():
    s = SiteStats(3, log_bin_edges(16, 1e-3, 1.0), 0.0)
    with pytest.raises(FloatingPointError, match="layer 4 site ffn_in"):
        s.update(torch.tensor([[1.0, float("nan"), 0.0]]), "layer 4 site ffn_in")
