"""CATS: threshold the gate branch, `act(g) * 1[|act(g)| > t]`, `t` the per-layer
percentile of `|act(g)|`; the up projection then only computes surviving neurons and the
down projection only reads them. Gated (GLU) FFNs only."""

from __future__ import annotations

from dataclasses import dataclass

from actsparse.methods.sparsity.base import (
    SPARSITY,
    BuildContext,
    SparsityMethod,
)
from actsparse.methods.sparsity.calibration import ThresholdMethodCfg, calibrate_thresholds
from actsparse.methods.sparsity.mechanism import Rule, SparsityPlan, placed_for_sites


@dataclass
class CatsCfg(ThresholdMethodCfg):
    def sites_used(self) -> list[str]:
        return ["gate"]


def gate_skips(model, adapter, plan: SparsityPlan) -> None:
    """Neurons the gate dropped: their up_proj rows are never computed and down_proj never
    reads their columns (its input `act(gate) * up` is zero there)."""
    for p in plan.placed:
        if p.site == "gate":
            block = adapter.block_path(model, p.layer)
            plan.output_skips[f"{block}.{adapter.up_linear}"] = p.module
            down = adapter.site_linears(model, p.layer)["ffn_intermediate"][0][0]
            plan.input_skips[down] = p.module


@SPARSITY.register("cats")
class Cats(SparsityMethod):
    paper = "CATS"
    summary = "per-layer percentile of |act(g)|"
    skips = "up_proj rows and down_proj columns of dropped neurons"
    Config = CatsCfg

    def build(self, cfg: CatsCfg, level: float, ctx: BuildContext) -> SparsityPlan:
        ctx.adapter.check_site("gate", f"sparsity method {cfg.method!r}")
        rule = Rule("threshold", level, 0.0)
        placed = placed_for_sites(ctx.model, ctx.adapter, ["gate"], lambda *_: rule)
        plan = SparsityPlan(cfg.method, "", level, calibrate_thresholds(placed, cfg, ctx))
        gate_skips(ctx.model, ctx.adapter, plan)
        return plan
