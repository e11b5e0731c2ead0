"""Q-Sparse: top-K by magnitude on the input of every linear projection,
`k = int((1 - S) d)`. Post-hoc here; sparse training (`methods.training`) places the same
rule with `ste=True` (sparse forward, dense gradient)."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

from actsparse.methods.sparsity.base import (
    SPARSITY,
    BuildContext,
    SparsityMethod,
    SparsityMethodCfg,
    check_sites,
)
from actsparse.methods.sparsity.mechanism import Rule, SparsityPlan, placed_for_sites
from actsparse.models.adapters import LINEAR_SITES


@dataclass
class TopKCfg(SparsityMethodCfg):
    sites: list[str] = MISSING
    rescale: bool = MISSING  # restore each row's L2 norm (Q-Sparse's from-scratch recipe)

    def sites_used(self) -> list[str]:
        return list(self.sites)

    def problems(self) -> list[tuple[str, str]]:
        return super().problems() + check_sites(self.sites, LINEAR_SITES)


@SPARSITY.register("topk")
class TopK(SparsityMethod):
    paper = "Q-Sparse"
    summary = "top-K by |x|, optional L2 rescale"
    Config = TopKCfg
    needs_calibration = False

    def build(self, cfg: TopKCfg, level: float, ctx: BuildContext) -> SparsityPlan:
        rule = Rule("topk", level, rescale=cfg.rescale)
        placed = placed_for_sites(ctx.model, ctx.adapter, cfg.sites, lambda *_: rule)
        return SparsityPlan(cfg.method, "", level, placed)
