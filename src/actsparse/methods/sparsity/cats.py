"""CATS: threshold the gate branch, `act(g) * 1[|act(g)| > t]`, `t` the per-layer
percentile of `|act(g)|`; the up projection then only computes surviving neurons and the
down projection only reads them. Gated (GLU) FFNs only."""

from __future__ import annotations

from dataclasses import dataclass

from actsparse.methods.sparsity import SPARSITY
from actsparse.methods.sparsity.base import (
    BuildContext,
    SparsityMethod,
    ThresholdMethodCfg,
    calibrate_thresholds,
)
from actsparse.methods.sparsity.mechanism import Rule, SparsityPlan, placed_for_sites


@dataclass
class CatsCfg(ThresholdMethodCfg):
    def sites_used(self) -> list[str]:
        return ["gate"]


def up_skips(model, adapter, plan: SparsityPlan) -> dict[str, str]:
    """The up projection's rows of neurons the gate dropped are never computed."""
    skips = {}
    for p in plan.placed:
        if p.site == "gate":
            up = f"{adapter.block_path(model, p.layer)}.{adapter.up_linear}"
            skips[up] = p.module
    return skips


@SPARSITY.register("cats")
class Cats(SparsityMethod):
    Config = CatsCfg

    def build(self, cfg: CatsCfg, level: float, ctx: BuildContext) -> SparsityPlan:
        ctx.adapter.check_site("gate", f"sparsity method {cfg.method!r}")
        rule = Rule("threshold", level, 0.0)
        placed = placed_for_sites(ctx.model, ctx.adapter, ["gate"], lambda *_: rule)
        plan = SparsityPlan(cfg.method, "", level, calibrate_thresholds(placed, cfg, ctx))
        plan.output_skips = up_skips(ctx.model, ctx.adapter, plan)
        return plan
