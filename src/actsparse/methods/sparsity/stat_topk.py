"""Spark Transformer's statistical top-k: a linear-time threshold from the row's mean and
std, `theta = mean + std * PhiInv(1 - k/d)`, applied as the soft threshold
`ReLU(x - theta)`. At the gate site it acts on the gate *pre-activation* (Spark's
placement: `act(TopK(K1^T x))`), so the up and down projections touch only the kept
neurons; at other sites on the activation itself.

Spark trains with this operator. Applied post hoc to a pretrained SiLU-gated model it is a
different activation function, and collapses (SmolLM2-135M, WikiText-2 test, 8 x 512
tokens, dense 27.6; `benchmarks/smollm2_diagnose.py`): at level 25% (the fraction
*zeroed*, as measured) theta is about -0.8 (gate rows have negative means), so every kept
SiLU input moves up by ~0.8: perplexity 397k; the shift alone, without zeroing, 238k.
`soft: false` removes the shift but still keeps the largest *values* of g, dropping the
entries near SiLU's minimum (|SiLU| 0.25 on average): 627 at 25%, 6135 at 50%. Selecting
by |SiLU(g)| instead (exact top-k, the CATS criterion) gives 28.5 / 31.6 / 35.8 at
25 / 40 / 50%."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

from actsparse.methods.sparsity.base import (
    SPARSITY,
    BuildContext,
    SparsityMethod,
    SparsityMethodCfg,
    check_sites,
    same_rule_plan,
)
from actsparse.methods.sparsity.cats import gate_skips
from actsparse.methods.sparsity.mechanism import Rule, SparsityPlan
from actsparse.methods.sparsity.ops import gaussian_kept_error
from actsparse.methods.sparsity.threshold import MAGNITUDE_SITES


@dataclass
class StatTopKCfg(SparsityMethodCfg):
    site: str = MISSING
    soft: bool = MISSING  # ReLU(x - theta); false: the hard x * 1[x > theta]

    def sites_used(self) -> list[str]:
        return [self.site]

    def problems(self) -> list[tuple[str, str]]:
        return super().problems() + check_sites([self.site], MAGNITUDE_SITES)


@SPARSITY.register("stat_topk")
class StatTopK(SparsityMethod):
    paper = "Spark"
    summary = "`ReLU(x - theta)`, `theta = mean + std PhiInv(s)`"
    skips = "up_proj rows and down_proj columns of dropped neurons"
    Config = StatTopKCfg
    needs_calibration = False
    needs_tokens = False

    def build(self, cfg: StatTopKCfg, level: float, ctx: BuildContext) -> SparsityPlan:
        rule = Rule("stat_topk", level, soft=cfg.soft, pre_activation=cfg.site == "gate")
        plan = same_rule_plan(cfg, level, ctx, rule)
        if cfg.site == "gate":
            gate_skips(ctx.model, ctx.adapter, plan)
        return plan

    def plan_metrics(self, plan: SparsityPlan) -> dict[str, float]:
        """How far the Gaussian assumption's threshold lands from k on Gaussian rows of the
        plan's width: the estimator's own error, apart from the model's distributions."""
        if not plan.placed:
            return {}
        return {"gaussian_kept_error": gaussian_kept_error(plan.placed[0].width, plan.level)}
