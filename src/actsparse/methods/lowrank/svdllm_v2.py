"""SVD-LLM V2 (Wang et al., NAACL 2025; no code released): SVD-LLM's truncation with a
compression ratio per linear set from its truncation loss.

Allocation (the paper's Algorithm 1): the linears are grouped by type across layers (all
q_proj, all down_proj, ...). Each linear's loss is `L_i = ||W_i X - [W_i X]_k||_F` at the
model-wide ratio `R` (the tail of the singular values of `W_i S` over the calibration
tokens); within a group of `n` linears, `r_i = n R s_i / sum_j s_j` with `s_i = 1 / ln L_i`,
so every group removes `R` of its parameters on average and a linear that loses more is
compressed less. Truncation (Algorithm 2, Theorem 3.1): `S = U_s sqrt(Λ_s)` from the
eigendecomposition of `X^T X`, then the SVD of `W S`: `whitening: eigh`, the same square
root `svdllm` offers. With a positive definite covariance it equals SVD-LLM's Cholesky
truncation in exact arithmetic (an orthogonal factor apart), so `allocation: uniform` is
SVD-LLM up to rounding.

Decisions where the paper is silent (docs/lowrank.md): `1 / ln L` is not scale-free, so
the ratios depend on how many tokens `L` sums over; `L_i` is taken over `loss_tokens`
tokens (default the paper's 256 x 2048), `sqrt(loss_tokens Σ_{j>k} σ_j²)` with `σ` the
singular values of `W S` per calibration token, so the allocation does not move with the
size of this study's calibration. A loss `L_i <= 1`, where `1 / ln L_i` is no weight, is an
error naming the linear. The formula has no bound: a linear that loses far less than its
group (SmolLM2's first o_proj: 16 against ~4,000) gets `r_i > 1` (1.12 at `R = 0.4`), so
ratios are capped at `max_ratio` and the group's excess is spread over the others in
proportion to their `s_i` (water-filling), which keeps each group's mean at `R`. Ranks
from the allocated ratios by SVD-LLM's `int(m n (1 - r) / (m + n))`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from omegaconf import MISSING

from actsparse.methods.lowrank.base import LOWRANK, LowRankMethod, TruncationLoss
from actsparse.methods.lowrank.linalg import FactorizationError, svd
from actsparse.methods.lowrank.svdllm import WhiteningCfg, site_whitening, whitened_factors

ALLOCATIONS = ("heterogeneous", "uniform")


@dataclass
class SVDLLMV2Cfg(WhiteningCfg):
    allocation: str = MISSING  # heterogeneous | uniform
    loss_tokens: int = MISSING  # the tokens each loss sums over (the paper's calibration)
    max_ratio: float = MISSING  # no linear loses more than this share of its parameters

    def problems(self):
        out = super().problems()
        if not 0.0 < self.max_ratio < 1.0:
            out.append(("max_ratio", f"must be in (0, 1), got {self.max_ratio}"))
        if self.loss_tokens < 1:
            out.append(("loss_tokens", f"must be >= 1, got {self.loss_tokens}"))
        if self.allocation not in ALLOCATIONS:
            out.append(("allocation", f"must be one of {ALLOCATIONS}, got {self.allocation!r}"))
        return out


def inverse_log_ratios(
    losses: list[TruncationLoss], ratio: float, max_ratio: float
) -> dict[str, float]:
    """The paper's `r_i = n R s_i / sum_j s_j`, `s_i = 1 / ln L_i`, per group of one kind,
    capped at `max_ratio` with the excess spread over the rest of the group (module doc)."""
    groups: dict[str, list[TruncationLoss]] = {}
    for item in losses:
        groups.setdefault(item.kind, []).append(item)
    out = {}
    for group in groups.values():
        for item in group:
            if not item.loss > 1.0:
                raise FactorizationError(
                    f"svdllm_v2: {item.linear} loses {item.loss:.3g} at ratio {ratio:g}, and "
                    "1 / ln L is no weight for L <= 1 (a larger loss_tokens, or "
                    "allocation: uniform)"
                )
        if ratio > max_ratio:
            raise FactorizationError(
                f"svdllm_v2: the model-wide ratio {ratio:g} is above max_ratio {max_ratio:g}"
            )
        s = {item.linear: 1.0 / math.log(item.loss) for item in group}
        capped: set[str] = set()
        while True:  # water-filling: at most one pass per linear
            free = [n for n in s if n not in capped]
            budget = len(group) * ratio - max_ratio * len(capped)
            total = sum(s[n] for n in free)
            r = {n: budget * s[n] / total for n in free}
            over = {n for n, v in r.items() if v > max_ratio}
            if not over:
                break
            capped |= over
        out.update(r)
        out.update({n: max_ratio for n in capped})
    return out


@LOWRANK.register("svdllm_v2")
class SVDLLMV2(LowRankMethod):
    paper = "SVD-LLM V2"
    summary = (
        "a ratio per linear `r_i ∝ 1 / ln L_i` within each type (`L_i`: its truncation loss "
        "at the model-wide ratio); `[W S]_k S^-1` with `S = U sqrt(Λ)`"
    )
    Config = SVDLLMV2Cfg

    def allocates(self, cfg: SVDLLMV2Cfg) -> bool:
        return cfg.allocation == "heterogeneous"

    def truncation_loss(self, cfg, W, stats, k, where, cache):
        wh = site_whitening(cfg, stats, where, cache)
        _, s, _ = svd(W.double() @ wh.S, where)
        return math.sqrt(cfg.loss_tokens * float((s[k:] ** 2).sum()))

    def allocate(self, cfg, losses, ratio):
        return inverse_log_ratios(losses, ratio, cfg.max_ratio)

    def factorize(self, cfg, W, stats, k, where, cache):
        return whitened_factors(cfg, W, stats, k, where, cache)
