"""ASVD: scale input channels by `s_j = (mean_t |X_jt|)^alpha`, truncate `W diag(s)`, unscale.

Channels that never fire (`mean |X_j| = 0`) would get `s_j = 0` and an infinite unscale;
they are floored at `floor · max_j s_j` and counted (`asvd_floored`), not hidden.

Uniform rank per linear (no ASVD sensitivity-based allocation). This equals the reference
code (hahnyuan/ASVD4LLM `SVDLinear.from_linear`). On SmolLM2-135M at R = 0.2 it collapses
as a method, not by a defect (`benchmarks/smollm2_diagnose.py`; dense 29.6): alpha 0 / 0.25
/ 0.5 / 1 give 1.1e8 (plain SVD, bit for bit) / 4.6e7 / 1.9e5 / 4.1e3, and scaling by the
channel RMS 4.8e3, against SVD-LLM's 69.6. Its inputs' energy lies along a few directions
that are not channels (off-diagonal share of ||G||_F 0.58-0.96 per site), which no
diagonal scale can weight; the per-linear output errors (median 0.09-0.38) are all
between plain SVD's and SVD-LLM's and compound over 210 linears.
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

from actsparse.methods.lowrank.base import LOWRANK, LowRankMethod, LowRankMethodCfg
from actsparse.methods.lowrank.linalg import check_finite, truncated


@dataclass
class ASVDCfg(LowRankMethodCfg):
    alpha: float = MISSING  # 0: plain SVD
    floor: float = MISSING  # smallest scale, relative to the largest

    def problems(self):
        out = super().problems()
        if not 0.0 <= self.alpha <= 2.0:
            out.append(("alpha", f"must be in [0, 2], got {self.alpha}"))
        if not 0.0 < self.floor < 1.0:
            out.append(("floor", f"must be in (0, 1), got {self.floor}"))
        return out


@LOWRANK.register("asvd")
class ASVD(LowRankMethod):
    paper = "ASVD"
    summary = "`s_j = (mean_t |X_jt|)^alpha`; `[W diag(s)]_k diag(s)^-1`; `alpha: 0` is `svd`"
    Config = ASVDCfg

    def factorize(self, cfg, W, stats, k, where, cache):
        check_finite(stats.mean_abs, "the calibration's mean |x|", where)
        s = stats.mean_abs.double() ** cfg.alpha
        low = s < cfg.floor * s.max()
        s = s.clamp_min(float(cfg.floor * s.max()))
        A, B = truncated(W.double() * s, k, where)
        return A, B / s, {"asvd_floored": float(low.sum())}
