"""WINA (weight-informed neuron activation; Chen et al., ICLR 2026, microsoft/wina): keep
the input channels of each linear with the largest `|x_i| * ||W[:, i]||_2`, the magnitude
of the activation times the norm of the weight column it multiplies, `k = int((1 - S) d)`
per token.

The column norms are those of each wrapped linear, so q, k and v (and gate and up), which
read the same activation, each keep their own channels. `allocation: greedy` gives each
projection its own level from TEAL's block-wise greedy search (`teal.greedy_path`, run once
per model by the allocate stage), as WINA's code does; `uniform` puts every projection at
the target. Decisions (the paper leaves them open, docs/sparsity.md): the rule is top-K of
the score at each projection's level (the reference's thresholds on the score, calibrated
to that level, differ only in letting the count vary per token); the column norms of a
low-rank linear are those of its dense equivalent `A B`; the optional orthogonalising
transform of the weights is not applied.
"""

from __future__ import annotations

from actsparse.methods.sparsity.base import SPARSITY, BuildContext, SparsityMethod
from actsparse.methods.sparsity.mechanism import Rule, SparsityPlan, placed_for_sites
from actsparse.methods.sparsity.teal import GreedyCfg, allocated_levels, greedy_path


@SPARSITY.register("wina")
class Wina(SparsityMethod):
    paper = "WINA"
    summary = (
        "top-K per linear by |x_i| ‖W[:, i]‖₂ (the column norm of the weight it multiplies); "
        "`allocation: uniform` or `greedy` (TEAL's search)"
    )
    Config = GreedyCfg  # each reading linear keeps its own channels
    needs_calibration = False
    needs_tokens = False  # but a greedy entry reads them (needs_tokens_for)

    def needs_tokens_for(self, cfg: GreedyCfg) -> bool:
        return cfg.allocation == "greedy"  # the search's calibration tokens

    def searches_allocation(self, cfg: GreedyCfg) -> bool:
        return cfg.allocation == "greedy"

    def search_allocations(
        self, cfg: GreedyCfg, levels: list[float], ctx: BuildContext
    ) -> dict[float, dict[str, float]]:
        return greedy_path(cfg, levels, ctx, _rule_at)

    def build(self, cfg: GreedyCfg, level: float, ctx: BuildContext) -> SparsityPlan:
        levels = allocated_levels(cfg, level, ctx, lambda _: _rule_at)
        placed = placed_for_sites(
            ctx.model,
            ctx.adapter,
            cfg.sites,
            lambda layer, site, m: _rule_at(layer, site, levels.get(m, level)),
        )
        return SparsityPlan(cfg.method, "", level, placed)


def _rule_at(layer: int, site: str, level: float) -> Rule:
    return Rule("weighted_topk", level)
