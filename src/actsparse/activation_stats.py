"""Streaming statistics of one activation site, accumulated batch by batch in float64.

Memory is fixed by the site's width (`n` channels: O(n^2) for the Gram matrix, O(n) for
the moments, O(bins) for the histogram), never by the number of tokens seen.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def log_bin_edges(bins: int, lo: float, hi: float) -> torch.Tensor:
    """`bins + 1` log-spaced edges over [lo, hi] (float64)."""
    return torch.logspace(math.log10(lo), math.log10(hi), bins + 1, dtype=torch.float64)


class SiteStats:
    """Per-channel moments, a magnitude histogram, zero counts and `X^T X` of one site.

    `x` rows are tokens, columns channels. Moments merge with Chan et al.'s parallel
    update, so the result equals the two-pass float64 statistics of all tokens.
    Histogram bin 0 holds |x| < edges[0] (exact zeros included), bin i (1..bins) holds
    edges[i-1] <= |x| < edges[i], and bin bins+1 holds |x| >= edges[-1].
    """

    def __init__(
        self,
        n: int,
        edges: torch.Tensor,
        near_zero_eps: float,
        gram: bool = True,
        device: torch.device | str = "cpu",
    ):
        f64 = dict(dtype=torch.float64, device=device)
        self.n, self.eps = n, near_zero_eps
        self.edges = edges.to(device)
        self.count = 0
        self.mean = torch.zeros(n, **f64)
        self.m2 = torch.zeros(n, **f64)
        self.sum_abs = torch.zeros(n, **f64)
        self.n_zero = torch.zeros(n, dtype=torch.int64, device=device)
        self.n_near_zero = torch.zeros(n, dtype=torch.int64, device=device)
        self.hist = torch.zeros(len(edges) + 1, dtype=torch.int64, device=device)
        self.gram = torch.zeros(n, n, **f64) if gram else None

    @torch.no_grad()
    def update(self, x: torch.Tensor, where: str = "") -> None:
        x = x.reshape(-1, x.shape[-1]).to(torch.float64)  # (tokens, n)
        if x.shape[1] != self.n:
            raise ValueError(f"{where}: expected {self.n} channels, got {x.shape[1]}")
        if not torch.isfinite(x).all():
            raise FloatingPointError(f"{where}: non-finite activations (NaN or inf)")
        b = x.shape[0]
        if b == 0:
            return
        batch_mean = x.mean(0)
        batch_m2 = ((x - batch_mean) ** 2).sum(0)
        total = self.count + b
        delta = batch_mean - self.mean
        self.mean += delta * (b / total)
        self.m2 += batch_m2 + delta**2 * (self.count * b / total)
        self.count = total
        a = x.abs()
        self.sum_abs += a.sum(0)
        self.n_zero += (x == 0).sum(0)
        self.n_near_zero += (a <= self.eps).sum(0)
        idx = torch.bucketize(a.reshape(-1), self.edges, right=True)
        self.hist += torch.bincount(idx, minlength=len(self.hist))
        if self.gram is not None:
            self.gram += x.T @ x

    @property
    def std(self) -> torch.Tensor:
        return (self.m2 / max(self.count, 1)).sqrt()


def histogram_quantile(edges: np.ndarray, counts: np.ndarray, q: float) -> float:
    """Threshold `t` with a fraction `q` of the histogram's mass below it.

    `counts` has `len(edges) + 1` bins laid out as in `SiteStats`. Within a log-spaced
    bin the mass is taken as log-uniform, within the underflow bin as uniform on
    [0, edges[0]). This is TEAL's `F^-1` on magnitudes: `P(|x| < t) = q`.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {q}")
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        raise ValueError("empty histogram")
    target = q * total
    cum = np.cumsum(counts)
    i = int(np.searchsorted(cum, target, side="left"))
    i = min(i, len(counts) - 1)
    before = cum[i - 1] if i > 0 else 0.0
    frac = 0.0 if counts[i] == 0 else (target - before) / counts[i]
    if i == 0:
        return float(edges[0] * frac)
    if i == len(counts) - 1:
        return float(edges[-1])
    lo, hi = edges[i - 1], edges[i]
    return float(lo * (hi / lo) ** frac)
