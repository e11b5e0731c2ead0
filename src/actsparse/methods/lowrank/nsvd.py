"""NSVD (nested activation-aware decomposition, Lu et al. 2025), reconstructed from the paper.

Split the rank `k = k1 + k2` (`k1 = round(k1_fraction · k)`):
`W1 = [W S]_{k1} S^-1` (SVD-LLM whitening), `W2 = [W - W1]_{k2}` (plain SVD of the
residual); stored as `[A1 A2] [B1; B2]`, the same `k (m + n)` parameters. Because
`W - W1 - W2` is the residual projected off its top `k2` left singular vectors, the error
never exceeds SVD-LLM's-at-k1 on *any* activations: `||(W - W1 - W2) X|| <= ||(W - W1) X||`.
`k1_fraction = 1` is SVD-LLM whitening at rank k, `0` plain SVD.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import MISSING

from actsparse.methods.lowrank.base import LOWRANK, LowRankMethod
from actsparse.methods.lowrank.linalg import truncated, whitened_truncation
from actsparse.methods.lowrank.svdllm import WhiteningCfg, site_whitening


@dataclass
class NSVDCfg(WhiteningCfg):
    k1_fraction: float = MISSING  # share of the rank fitted to the calibration activations

    def problems(self):
        out = super().problems()
        if not 0.0 <= self.k1_fraction <= 1.0:
            out.append(("k1_fraction", f"must be in [0, 1], got {self.k1_fraction}"))
        return out


def split_rank(k: int, k1_fraction: float) -> tuple[int, int]:
    k1 = int(round(k1_fraction * k))
    return k1, k - k1


@LOWRANK.register("nsvd")
class NSVD(LowRankMethod):
    paper = "NSVD"
    summary = (
        "`k1 = round(k1_fraction k)` ranks by `svdllm`, `k2 = k - k1` by `svd` of the residual"
    )
    Config = NSVDCfg

    def factorize(self, cfg, W, stats, k, where, cache):
        W = W.double()
        k1, k2 = split_rank(k, cfg.k1_fraction)
        m, n = W.shape
        A1, B1 = W.new_zeros(m, 0), W.new_zeros(0, n)
        ridge = 0.0
        if k1 > 0:
            wh = site_whitening(cfg, stats, where, cache)
            A1, B1, _ = whitened_truncation(W, wh, k1, where)
            ridge = wh.ridge
            k1 = A1.shape[1]  # below the request only when G's rank is (eigh whitening)
            k2 = k - k1
        A2, B2 = (
            truncated(W - A1 @ B1, k2, where) if k2 > 0 else (W.new_zeros(m, 0), W.new_zeros(0, n))
        )
        return torch.cat([A1, A2], 1), torch.cat([B1, B2], 0), {"k1": k1, "k2": k2, "ridge": ridge}
