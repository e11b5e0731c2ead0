"""Plain truncated SVD: `W' = [W]_k`, blind to the activations (the baseline that collapses)."""

from __future__ import annotations

from actsparse.methods.lowrank.base import LOWRANK, LowRankMethod
from actsparse.methods.lowrank.linalg import truncated


@LOWRANK.register("svd")
class PlainSVD(LowRankMethod):
    summary = "`[W]_k` (Eckart-Young): blind to activations"

    def factorize(self, cfg, W, stats, k, where, cache):
        A, B = truncated(W, k, where)
        return A, B, {}
