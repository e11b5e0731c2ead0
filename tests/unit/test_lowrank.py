"""Low-rank methods against the identities of METHODS.md, in float64 on random layers."""

import math

import pytest
import torch

from actsparse.methods.lowrank import LOWRANK
from actsparse.methods.lowrank.base import LayerStats
from actsparse.methods.lowrank.linalg import (
    FactorizationError,
    rank_for_ratio,
    truncated,
    whitened_truncation,
    whitening,
)
from actsparse.methods.lowrank.nsvd import split_rank
from actsparse.sweeps import default_entry

M, N, T = 48, 40, 400


def layer(seed=0, m=M, n=N, t=T):
    """A weight and correlated, anisotropic activations (tokens x n), float64."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(m, n, generator=g, dtype=torch.float64)
    mix = torch.randn(n, n, generator=g, dtype=torch.float64) * torch.logspace(
        0, -2, n, dtype=torch.float64
    )
    X = torch.randn(t, n, generator=g, dtype=torch.float64) @ mix.T + 0.3
    return W, X


def stats_of(X):
    return LayerStats(gram=X.T @ X / len(X), mean_abs=X.abs().mean(0), n_tokens=len(X))


def factors(method, X, W, k, **cfg):
    m = LOWRANK.get(method)()
    c = default_entry("decompose", method, **cfg).cfg
    A, B, _ = m.factorize(c, W, stats_of(X), k, "test layer", {})
    return A, B


def test_rank_convention():
    assert rank_for_ratio(4096, 11008, 0.2) == int(4096 * 11008 * 0.8 / (4096 + 11008))
    assert rank_for_ratio(128, 128, 0.5) == 32
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="layer q: compression ratio must be in \\(0, 1\\)"):
            rank_for_ratio(8, 8, bad, "layer q")
    with pytest.raises(ValueError, match="leaves rank 0"):
        rank_for_ratio(2, 2, 0.9, "layer q")


@pytest.mark.parametrize("kind", ["cholesky", "eigh"])
@pytest.mark.parametrize("k", [1, 7, 20])
def test_whitened_truncation_loss_is_the_tail_of_the_spectrum(kind, k):
    W, X = layer()
    G = X.T @ X  # unnormalised: the loss is then ||(W - W') X||_F^2 itself
    A, B, s = whitened_truncation(W, whitening(G, kind, "t"), k, "t")
    loss = ((W - A @ B) @ X.T).pow(2).sum()
    tail = (s[k:] ** 2).sum()
    assert abs(loss / tail - 1) <= 1e-8


def test_whitening_is_optimal_among_the_methods():
    W, X = layer(1)
    k = 10
    losses = {
        m: ((W - A @ B) @ X.T).norm() for m in LOWRANK.names() for A, B in [factors(m, X, W, k)]
    }
    assert losses["svdllm"] <= min(losses.values()) + 1e-9
    assert losses["svd"] > losses["svdllm"]


def test_asvd_with_alpha_zero_is_plain_svd():
    W, X = layer(2)
    A, B = factors("asvd", X, W, 9, alpha=0.0)
    A0, B0 = truncated(W, 9, "t")
    assert torch.allclose(A @ B, A0 @ B0, atol=1e-12, rtol=0)


def test_nsvd_limits_are_svdllm_and_svd():
    W, X = layer(3)
    k = 12
    A, B = factors("nsvd", X, W, k, k1_fraction=1.0)  # k2 = 0
    A1, B1 = factors("svdllm", X, W, k)
    assert torch.allclose(A @ B, A1 @ B1, atol=1e-12, rtol=0)
    A, B = factors("nsvd", X, W, k, k1_fraction=0.0)  # k1 = 0
    A0, B0 = truncated(W, k, "t")
    assert torch.allclose(A @ B, A0 @ B0, atol=1e-12, rtol=0)
    assert split_rank(20, 0.95) == (19, 1) and split_rank(12, 0.5) == (6, 6)


@pytest.mark.parametrize("seed", range(5))
def test_nsvd_bound_holds_on_activations_it_never_saw(seed):
    W, X = layer(seed)
    k = 14
    k1, _ = split_rank(k, 0.75)
    A, B = factors("nsvd", X, W, k, k1_fraction=0.75)
    A1, B1 = factors("svdllm", X, W, k1)
    g = torch.Generator().manual_seed(100 + seed)
    for Y in (
        torch.randn(300, N, generator=g, dtype=torch.float64),  # isotropic
        torch.randn(300, N, generator=g, dtype=torch.float64)
        * torch.linspace(5, 0.01, N, dtype=torch.float64),
        torch.eye(N, dtype=torch.float64),  # ||.||_F of the weight error itself
    ):
        nested = ((W - A @ B) @ Y.T).norm()
        first = ((W - A1 @ B1) @ Y.T).norm()
        assert nested <= first * (1 + 1e-12)


def test_every_method_keeps_k_times_m_plus_n_parameters():
    W, X = layer(4)
    for m in LOWRANK.names():
        A, B = factors(m, X, W, 11)
        assert A.shape == (M, 11) and B.shape == (11, N), m


def test_singular_covariance_gets_a_recorded_ridge_and_eigh_needs_none():
    W, X = layer(5)
    X[:, 3] = X[:, 4]  # two identical channels: G is singular
    G = X.T @ X
    G[3, 3] -= 1e-9 * G[3, 3]  # and slightly indefinite
    wh = whitening(G, "cholesky", "t")
    assert wh.ridge > 0
    _, _, s = whitened_truncation(W, wh, 5, "t")
    assert torch.isfinite(s).all()
    assert whitening(G, "eigh", "t").ridge == 0.0


def test_failures_name_the_layer():
    W, X = layer(6)
    G = X.T @ X
    G[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="layer 3 down_proj: non-finite.*covariance"):
        whitening(G, "cholesky", "layer 3 down_proj")
    W[1, 1] = float("inf")
    with pytest.raises(FloatingPointError, match="layer 3 q_proj: non-finite"):
        truncated(W, 3, "layer 3 q_proj")
    with pytest.raises(
        FactorizationError, match="layer 0 o_proj: the calibration covariance is zero"
    ):
        whitening(torch.zeros(4, 4, dtype=torch.float64), "eigh", "layer 0 o_proj")
    with pytest.raises(ValueError, match="whitening must be"):
        whitening(G.nan_to_num(), "qr", "t")


# --------------------------------------------------------------- SVD-LLM V2, the update


def test_svdllm_v2_uniform_is_svdllm_and_its_truncation_loss_is_the_measured_one():
    """Eigendecomposition whitening equals SVD-LLM's Cholesky truncation on a positive
    definite covariance (an orthogonal factor apart), and `truncation_loss` is
    `||(W - W') X||_F` over `loss_tokens` tokens (here, the calibration's)."""
    W, X = layer(3)
    k = 12
    A1, B1 = factors("svdllm", X, W, k)
    A2, B2 = factors("svdllm_v2", X, W, k, allocation="uniform")
    assert torch.allclose(A1 @ B1, A2 @ B2, rtol=0, atol=1e-10 * float(W.abs().max()))
    v2 = LOWRANK.get("svdllm_v2")()
    cfg = default_entry("decompose", "svdllm_v2", loss_tokens=len(X)).cfg
    loss = v2.truncation_loss(cfg, W, stats_of(X), k, "test layer", {})
    assert loss == pytest.approx(float(((W - A2 @ B2) @ X.T).norm()), rel=1e-9)


def test_svdllm_v2_ratios_follow_the_inverse_log_loss_within_each_type():
    from actsparse.methods.lowrank.base import TruncationLoss
    from actsparse.methods.lowrank.svdllm_v2 import inverse_log_ratios

    losses = [
        TruncationLoss("l0.q", "q", 100, 1e4),
        TruncationLoss("l1.q", "q", 100, 1e8),
        TruncationLoss("l0.down", "down", 300, 50.0),
    ]
    r = inverse_log_ratios(losses, 0.4, 0.9)
    s0, s1 = 1 / math.log(1e4), 1 / math.log(1e8)
    assert r["l0.q"] == pytest.approx(2 * 0.4 * s0 / (s0 + s1), rel=1e-12)
    assert r["l1.q"] == pytest.approx(2 * 0.4 * s1 / (s0 + s1), rel=1e-12)
    assert r["l1.q"] < 0.4 < r["l0.q"]  # the one that loses more is compressed less
    assert r["l0.down"] == pytest.approx(0.4, rel=1e-12)  # alone in its group
    with pytest.raises(FactorizationError, match=r"l0\.q loses 0\.5.*1 / ln L.*loss_tokens"):
        inverse_log_ratios([TruncationLoss("l0.q", "q", 100, 0.5)], 0.4, 0.9)


def test_svdllm_v2_caps_a_ratio_and_gives_the_excess_to_its_group():
    """SmolLM2's case: one linear loses far less than the rest of its type (16 against
    ~4,000), and the formula alone would remove more than all of it."""
    from actsparse.methods.lowrank.base import TruncationLoss
    from actsparse.methods.lowrank.svdllm_v2 import inverse_log_ratios

    losses = [TruncationLoss("l0.o", "o", 1, 15.7)] + [
        TruncationLoss(f"l{i}.o", "o", 1, 4000.0 + 100 * i) for i in range(1, 6)
    ]
    free = inverse_log_ratios(losses, 0.4, 0.99)
    assert free["l0.o"] > 0.9  # what the formula gives, under a loose cap
    r = inverse_log_ratios(losses, 0.4, 0.9)
    assert r["l0.o"] == 0.9
    assert sum(r.values()) == pytest.approx(6 * 0.4, rel=1e-12)  # the group's budget kept
    rest = [r[f"l{i}.o"] for i in range(1, 6)]
    s = [1 / math.log(4000.0 + 100 * i) for i in range(1, 6)]
    assert [a / b for a, b in zip(rest, s, strict=True)] == pytest.approx(
        [rest[0] / s[0]] * 5, rel=1e-12
    )
    assert r["l1.o"] > free["l1.o"]  # the others take the excess
    with pytest.raises(FactorizationError, match="above max_ratio"):
        inverse_log_ratios(losses, 0.95, 0.9)


def test_the_update_on_the_whitening_inputs_returns_the_truncation_and_never_loses():
    """`update_left` with the covariance the right factor was whitened with is the
    truncation's own left factor (1e-10); on other inputs it is their least-squares
    optimum: never worse than the truncation there, better in general."""
    from actsparse.methods.lowrank.linalg import update_left

    W, X = layer(4)
    k = 10
    A, B = factors("svdllm", X, W, k)
    G = X.T @ X / len(X)
    assert torch.allclose(update_left(W, B, G, "t"), A, rtol=0, atol=1e-10 * float(A.abs().max()))
    _, X2 = layer(5)
    X2 = X2 * 1.5 + 0.2  # what the layer reads once upstream layers are compressed
    A2 = update_left(W, B, X2.T @ X2 / len(X2), "t")
    before, after = (float(((W - a @ B) @ X2.T).norm()) for a in (A, A2))
    assert after < before
    # the optimum: the residual is orthogonal to every direction the factor can move in
    R = (W - A2 @ B) @ X2.T
    assert torch.allclose(
        R @ (B @ X2.T).T, torch.zeros(M, k, dtype=torch.float64), atol=1e-8 * float(R.norm())
    )
    with pytest.raises(FactorizationError, match="layer 7.*not positive definite"):
        update_left(W, B, torch.zeros(N, N, dtype=torch.float64), "layer 7")
