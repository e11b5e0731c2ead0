"""SVD-LLM: truncation-aware whitening. `S S^T = G`; `W S = U Σ V^T`; `W' = U_k Σ_k V_k^T S^-1`.

`whitening: cholesky` is the paper's (float64, a logged ridge when `G` is not positive
definite); `eigh` is SVD-LLM v2's eigendecomposition square root, which needs no
definiteness. Truncating `W S` minimises `||(W - W') X||_F` exactly: the loss is the tail
sum of the squared singular values of `W S` (reported per layer as `whitened_loss`).
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

from actsparse.methods.lowrank.base import LOWRANK, LowRankMethod, LowRankMethodCfg
from actsparse.methods.lowrank.linalg import whitened_truncation, whitening

WHITENINGS = ("cholesky", "eigh")


@dataclass
class SVDLLMCfg(LowRankMethodCfg):
    whitening: str = MISSING  # cholesky | eigh
    ridge_eps: float = MISSING  # ridge beyond -lambda_min, relative to mean(diag G)

    def problems(self):
        out = super().problems()
        if self.whitening not in WHITENINGS:
            out.append(("whitening", f"must be one of {WHITENINGS}, got {self.whitening!r}"))
        if not 0.0 < self.ridge_eps < 1.0:
            out.append(("ridge_eps", f"must be in (0, 1), got {self.ridge_eps}"))
        return out


def site_whitening(cfg: SVDLLMCfg, stats, where: str, cache: dict):
    """The whitening of this input (computed once for the linears that share it)."""
    if "whitening" not in cache:
        cache["whitening"] = whitening(stats.gram, cfg.whitening, where, cfg.ridge_eps)
    return cache["whitening"]


@LOWRANK.register("svdllm")
class SVDLLM(LowRankMethod):
    paper = "SVD-LLM"
    summary = (
        "`S S^T = G`; `[W S]_k S^-1`; `whitening: cholesky` (the paper) or `eigh` (SVD-LLM v2)"
    )
    Config = SVDLLMCfg

    def factorize(self, cfg, W, stats, k, where, cache):
        wh = site_whitening(cfg, stats, where, cache)
        A, B, s = whitened_truncation(W, wh, k, where)
        return A, B, {"whitened_loss": float((s[k:] ** 2).sum()), "ridge": wh.ridge}
