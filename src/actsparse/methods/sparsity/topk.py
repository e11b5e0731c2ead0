"""Q-Sparse: top-K by magnitude on the input of every linear projection,
`k = int((1 - S) d)`. Post-hoc here; sparse training (`methods.training`) places the same
rule with `ste=True` (sparse forward, dense gradient)."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

from actsparse.methods.sparsity.base import (
    SPARSITY,
    BuildContext,
    LinearSitesCfg,
    SparsityMethod,
    same_rule_plan,
)
from actsparse.methods.sparsity.mechanism import Rule, SparsityPlan


@dataclass
class TopKCfg(LinearSitesCfg):
    rescale: bool = MISSING  # restore each row's L2 norm (Q-Sparse's from-scratch recipe)


@SPARSITY.register("topk")
class TopK(SparsityMethod):
    paper = "Q-Sparse"
    summary = "top-K by |x|, optional L2 rescale"
    Config = TopKCfg
    needs_calibration = False
    needs_tokens = False

    def build(self, cfg: TopKCfg, level: float, ctx: BuildContext) -> SparsityPlan:
        return same_rule_plan(cfg, level, ctx, Rule("topk", level, rescale=cfg.rescale))
