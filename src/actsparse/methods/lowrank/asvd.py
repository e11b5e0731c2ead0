"""ASVD: scale input channels by `s_j = (mean_t |X_jt|)^alpha`, truncate `W diag(s)`, unscale.

Channels that never fire (`mean |X_j| = 0`) would get `s_j = 0` and an infinite unscale;
they are floored at `floor · max_j s_j` and counted (`asvd_floored`), not hidden.
"""

from __future__ import annotations

from dataclasses import dataclass

from actsparse.methods.lowrank import LOWRANK
from actsparse.methods.lowrank.base import LowRankMethod, LowRankMethodCfg
from actsparse.methods.lowrank.linalg import check_finite, truncated


@dataclass
class ASVDCfg(LowRankMethodCfg):
    alpha: float = 0.5  # 0: plain SVD
    floor: float = 1e-6  # smallest scale, relative to the largest

    def problems(self):
        out = super().problems()
        if not 0.0 <= self.alpha <= 2.0:
            out.append(("alpha", f"must be in [0, 2], got {self.alpha}"))
        if not 0.0 < self.floor < 1.0:
            out.append(("floor", f"must be in (0, 1), got {self.floor}"))
        return out


@LOWRANK.register("asvd")
class ASVD(LowRankMethod):
    Config = ASVDCfg

    def factorize(self, cfg, W, stats, k, where, cache):
        check_finite(stats.mean_abs, "the calibration's mean |x|", where)
        s = stats.mean_abs.double() ** cfg.alpha
        low = s < cfg.floor * s.max()
        s = s.clamp_min(float(cfg.floor * s.max()))
        A, B = truncated(W.double() * s, k, where)
        return A, B / s, {"asvd_floored": float(low.sum())}
