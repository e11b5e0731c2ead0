"""Dhar et al.'s "additional sparsity": zero FFN intermediate activations whose magnitude
is below a per-layer percentile of the calibration distribution (training-free)."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

from actsparse.methods.sparsity.base import (
    SPARSITY,
    BuildContext,
    SparsityMethod,
    check_sites,
)
from actsparse.methods.sparsity.calibration import ThresholdMethodCfg, calibrate_thresholds
from actsparse.methods.sparsity.mechanism import Rule, SparsityPlan, placed_for_sites

MAGNITUDE_SITES = ("attn_in", "o_proj_in", "ffn_in", "ffn_intermediate", "gate")


@dataclass
class ThresholdCfg(ThresholdMethodCfg):
    site: str = MISSING

    def sites_used(self) -> list[str]:
        return [self.site]

    def problems(self) -> list[tuple[str, str]]:
        return super().problems() + check_sites([self.site], MAGNITUDE_SITES)


@SPARSITY.register("threshold")
class Threshold(SparsityMethod):
    paper = "Dhar et al."
    summary = "per-layer percentile of |x|"
    Config = ThresholdCfg

    def build(self, cfg: ThresholdCfg, level: float, ctx: BuildContext) -> SparsityPlan:
        rule = Rule("threshold", level, 0.0)
        placed = placed_for_sites(ctx.model, ctx.adapter, [cfg.site], lambda *_: rule)
        return SparsityPlan(cfg.method, "", level, calibrate_thresholds(placed, cfg, ctx))
