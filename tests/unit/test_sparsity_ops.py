"""Sparsity operators on hand-made tensors: exact outputs, the STE gradient, statistical
top-k's kept fraction on Gaussian rows, and histogram thresholds against torch.quantile."""

import numpy as np
import pytest
import torch
from scipy.stats import norm

from actsparse.activation_stats import SiteStats, histogram_quantile, log_bin_edges
from actsparse.methods.sparsity import ops
from actsparse.methods.sparsity.mechanism import Rule


def test_threshold_keeps_magnitudes_strictly_above_t():
    x = torch.tensor([[-3.0, -0.5, 0.0, 0.5, 0.7, 2.0]])
    assert torch.equal(ops.threshold(x, 0.5), torch.tensor([[-3.0, 0.0, 0.0, 0.0, 0.7, 2.0]]))
    assert torch.equal(ops.threshold(x, 0.0), x)


def test_topk_keeps_k_largest_magnitudes_per_row():
    x = torch.tensor([[1.0, -4.0, 2.0, -3.0], [0.1, 0.4, -0.3, 0.2]])
    # level 0.5 of 4 -> k = 2
    expected = torch.tensor([[0.0, -4.0, 0.0, -3.0], [0.0, 0.4, -0.3, 0.0]])
    assert torch.equal(ops.topk(x, 0.5), expected)
    assert torch.equal(ops.topk(x, 0.0), x)
    assert ops.keep_count(10, 0.75) == 2 and ops.keep_count(10, 0.0) == 10
    assert torch.equal(ops.topk(x, 0.9), torch.zeros_like(x))  # k = int(0.4) = 0


def test_topk_rescale_restores_the_l2_norm():
    x = torch.tensor([[3.0, 4.0, 0.0, 1.0]])
    y = ops.topk(x, 0.5, rescale=True)  # keeps 3, 4 (norm 5) -> scaled to norm sqrt(26)
    torch.testing.assert_close(y, torch.tensor([[3.0, 4.0, 0.0, 0.0]]) * (26**0.5 / 5))


def test_stat_topk_soft_and_hard_thresholds():
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])  # mean 2.5, population std sqrt(1.25)
    theta = 2.5 + 1.25**0.5 * norm.ppf(0.5)  # level 0.5: theta = mean
    torch.testing.assert_close(ops.stat_threshold(x, 0.5), torch.tensor([[theta]], dtype=x.dtype))
    assert torch.equal(ops.stat_topk(x, 0.5, soft=True), torch.relu(x - 2.5))
    assert torch.equal(ops.stat_topk(x, 0.5, soft=False), torch.tensor([[0.0, 0.0, 3.0, 4.0]]))
    t = 2.5 + 1.25**0.5 * norm.ppf(0.7)
    torch.testing.assert_close(ops.stat_topk(x, 0.7), torch.relu(x - t))
    assert torch.equal(ops.stat_topk(x, 0.0), x)  # level 0 keeps everything


@pytest.mark.parametrize("level", [0.25, 0.5, 0.7, 0.9, 0.95])
def test_stat_topk_kept_fraction_on_gaussian_rows_within_half_a_point(level):
    assert ops.gaussian_kept_error(4096, level, rows=256) <= 0.005


def test_head_topk_keeps_the_heads_with_the_largest_norm():
    x = torch.tensor([[1.0, 1.0, 0.1, 0.1, -3.0, 0.0, 0.2, 0.2]])  # 4 heads of 2
    expected = torch.tensor([[1.0, 1.0, 0.0, 0.0, -3.0, 0.0, 0.0, 0.0]])
    assert torch.equal(ops.head_topk(x, 4, 0.5), expected)
    with pytest.raises(ValueError, match="not divisible by 3 heads"):
        ops.head_topk(x, 3, 0.5)


def test_rules_validate_their_parameters():
    with pytest.raises(ValueError, match=r"level must be in \[0, 1\), got 1.0"):
        Rule("topk", 1.0)
    with pytest.raises(ValueError, match="got -0.1"):
        Rule("topk", -0.1)
    with pytest.raises(ValueError, match="needs a threshold"):
        Rule("threshold", 0.5)
    with pytest.raises(ValueError, match="unknown rule 'magic'"):
        Rule("magic", 0.5)


@pytest.mark.parametrize("q", [0.1, 0.25, 0.5, 0.7, 0.9, 0.99])
def test_histogram_thresholds_match_torch_quantile_within_one_bin(q):
    torch.manual_seed(1)
    x = torch.randn(20000, 64) * torch.logspace(-2, 1, 64)  # channels of different scales
    x[:, :4] = 0.0  # some exact zeros (the underflow bin)
    edges = log_bin_edges(2048, 1e-6, 1e4)
    s = SiteStats(64, edges, 1e-3, gram=False)
    s.update(x)
    t = histogram_quantile(edges.numpy(), s.hist.numpy(), q)
    ref = torch.quantile(x.abs().double().flatten()[::7], q).item()  # torch.quantile's size cap
    exact = np.quantile(x.abs().double().numpy(), q)
    i = np.searchsorted(edges.numpy(), exact)
    lo = edges[i - 1].item() if i > 0 else 0.0
    hi = edges[min(i, len(edges) - 1)].item()
    width = hi - lo
    assert abs(t - exact) <= width, (t, exact, width)
    assert abs(t - ref) <= 2 * width + abs(ref - exact)
    # the achieved fraction below the threshold is q to within the mass of one bin
    frac = (x.abs() < t).double().mean().item()
    bin_mass = s.hist[i].item() / s.hist.sum().item() if i < len(s.hist) else 0
    assert abs(frac - q) <= bin_mass + 1e-4
