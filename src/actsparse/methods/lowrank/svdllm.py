"""SVD-LLM: truncation-aware whitening. `S S^T = G`; `W S = U Σ V^T`; `W' = U_k Σ_k V_k^T S^-1`.

`whitening: cholesky` is the paper's (float64, a logged ridge when `G` is not positive
definite); `eigh` is SVD-LLM v2's eigendecomposition square root, which needs no
definiteness. Truncating `W S` minimises `||(W - W') X||_F` exactly: the loss is the tail
sum of the squared singular values of `W S` (reported per layer as `whitened_loss`).

`update: true` adds the paper's second step as its reference code computes it in closed
form (AIoT-MLSys-Lab/SVD-LLM `whitening_local_update`, before its optional LoRA): block by
block, with every earlier block already compressed, each linear's left factor is refitted
by least squares to the dense linear's own outputs on the inputs it now receives,
`A = W G' B^T (B G' B^T)^-1` with `G' = X'^T X' / T'` (`linalg.update_left`); the right
factor `B` stays the whitened one. On the dense inputs (`G' = G`) this returns the
truncation's own `A`, so it changes only what upstream compression moved. The decompose
stage runs it (`update_step`): `update_tokens` calibration tokens in sequences of
`update_seq_len` (the reference: 16 x 2048).
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

from actsparse.methods.lowrank.base import LOWRANK, LowRankMethod, LowRankMethodCfg, UpdateStep
from actsparse.methods.lowrank.linalg import whitened_truncation, whitening

WHITENINGS = ("cholesky", "eigh")


@dataclass
class WhiteningCfg(LowRankMethodCfg):
    """Keys of the methods that truncate `W S` with `S S^T = G` (SVD-LLM and its kin)."""

    whitening: str = MISSING  # cholesky | eigh
    ridge_eps: float = MISSING  # ridge beyond -lambda_min, relative to mean(diag G)

    def problems(self):
        out = super().problems()
        if self.whitening not in WHITENINGS:
            out.append(("whitening", f"must be one of {WHITENINGS}, got {self.whitening!r}"))
        if not 0.0 < self.ridge_eps < 1.0:
            out.append(("ridge_eps", f"must be in (0, 1), got {self.ridge_eps}"))
        return out


@dataclass
class SVDLLMCfg(WhiteningCfg):
    update: bool = MISSING  # the closed-form update of the left factor (module doc)
    update_tokens: int = MISSING  # calibration tokens the update fits on
    update_seq_len: int = MISSING  # their sequence length (capped at the model's context)

    def problems(self):
        out = super().problems()
        if self.update_tokens < 1 or self.update_seq_len < 2:
            out.append(("update_tokens", "update_tokens must be >= 1 and update_seq_len >= 2"))
        return out


def site_whitening(cfg: WhiteningCfg, stats, where: str, cache: dict):
    """The whitening of this input (computed once for the linears that share it)."""
    if "whitening" not in cache:
        cache["whitening"] = whitening(stats.gram, cfg.whitening, where, cfg.ridge_eps)
    return cache["whitening"]


def whitened_factors(cfg: WhiteningCfg, W, stats, k: int, where: str, cache: dict):
    """`factorize` of the whitening methods: `[W S]_k S^-1` with this input's `S`."""
    wh = site_whitening(cfg, stats, where, cache)
    A, B, s = whitened_truncation(W, wh, k, where)
    return A, B, {"whitened_loss": float((s[k:] ** 2).sum()), "ridge": wh.ridge}


@LOWRANK.register("svdllm")
class SVDLLM(LowRankMethod):
    paper = "SVD-LLM"
    summary = (
        "`S S^T = G`; `[W S]_k S^-1`; `whitening: cholesky` (the paper) or `eigh` (SVD-LLM v2); "
        "`update: true`: the left factor refitted on the compressed model's inputs"
    )
    Config = SVDLLMCfg

    def update_step(self, cfg: SVDLLMCfg) -> UpdateStep | None:
        return UpdateStep(cfg.update_tokens, cfg.update_seq_len) if cfg.update else None

    def factorize(self, cfg, W, stats, k, where, cache):
        return whitened_factors(cfg, W, stats, k, where, cache)
