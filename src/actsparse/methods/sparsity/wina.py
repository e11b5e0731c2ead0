"""WINA (weight-informed neuron activation; Chen et al., ICLR 2026, microsoft/wina): keep
the input channels of each linear with the largest `|x_i| * ||W[:, i]||_2`, the magnitude
of the activation times the norm of the weight column it multiplies, `k = int((1 - S) d)`
per token.

The column norms are those of each wrapped linear, so q, k and v (and gate and up), which
read the same activation, each keep their own channels. Decisions (the paper leaves
them open, docs/sparsity.md): the top-K form of the rule (the paper's thresholds on the
score, with TEAL's greedy allocation, are a calibrated variant not built here); the
column norms of a low-rank linear are those of its dense equivalent `A B`; the optional
orthogonalising transform of the weights is not applied.
"""

from __future__ import annotations

from actsparse.methods.sparsity.base import (
    SPARSITY,
    BuildContext,
    LinearSitesCfg,
    SparsityMethod,
    same_rule_plan,
)
from actsparse.methods.sparsity.mechanism import Rule, SparsityPlan


@SPARSITY.register("wina")
class Wina(SparsityMethod):
    paper = "WINA"
    summary = "top-K per linear by |x_i| ‖W[:, i]‖₂ (the column norm of the weight it multiplies)"
    Config = LinearSitesCfg  # each reading linear keeps its own channels
    needs_calibration = False
    needs_tokens = False

    def build(self, cfg: LinearSitesCfg, level: float, ctx: BuildContext) -> SparsityPlan:
        return same_rule_plan(cfg, level, ctx, Rule("weighted_topk", level))
