"""TEAL: magnitude thresholds on the input of every projection, `x * 1[|x| > t]` with
`t = F^-1(0.5 + s/2)` of the calibrated (symmetric, zero-mean) distribution, i.e.
`P(|x| < t) = s`, read from histograms of |x| (see `calibration` in the config: TEAL's
paper reads the dense model's; `sequential` recalibrates with upstream rules applied).

Allocation:
- `uniform`: every projection at the target level;
- `greedy`: TEAL's block-wise greedy search. Per block, all projections start dense;
  each step raises the sparsity of the one projection whose increase adds the least
  relative error to the block's output (on `greedy_tokens` calibration tokens, earlier
  blocks dense), by `step / w_p` with `w_p = P_p / d^2` (`P_p` its real parameter count,
  `d^2` that of a square hidden-to-hidden projection, as in TEAL's code; GQA's smaller k/v
  take larger steps), until the block's effective sparsity `sum(P_p s_p) / sum(P_p)`
  reaches the target (the last step is cut to land on it). The search reads the dense
  calibration histograms and reruns only the block, on its captured inputs; the chosen
  levels are then calibrated like uniform ones.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import torch
from tqdm import tqdm

from actsparse.data import batch_at
from actsparse.methods.sparsity.base import (
    SPARSITY,
    BuildContext,
    SparsityMethod,
    ThresholdMethodCfg,
    calibrate_thresholds,
    check_sites,
    context_len,
)
from actsparse.methods.sparsity.mechanism import (
    Placed,
    Rule,
    SparsityPlan,
    apply,
    block_inputs,
    placed_for_sites,
    run_block,
)
from actsparse.models.adapters import LINEAR_SITES, linear_shape

log = logging.getLogger("actsparse.teal")


@dataclass
class TealCfg(ThresholdMethodCfg):
    sites: list[str] = field(default_factory=lambda: list(LINEAR_SITES))
    allocation: str = "uniform"  # uniform | greedy
    greedy_step: float = 0.05  # sparsity added per step to a d x d projection (TEAL's 0.05)
    greedy_tokens: int = 1024  # calibration tokens the greedy search measures errors on
    greedy_seq_len: int = 128
    max_level: float = 0.99  # no projection is made sparser than this

    def sites_used(self) -> list[str]:
        return list(self.sites)

    def problems(self) -> list[tuple[str, str]]:
        out = super().problems() + check_sites(self.sites, LINEAR_SITES)
        if self.allocation not in ("uniform", "greedy"):
            out.append(("allocation", f"must be 'uniform' or 'greedy', got {self.allocation!r}"))
        if not 0.0 < self.greedy_step <= 0.5:
            out.append(("greedy_step", f"must be in (0, 0.5], got {self.greedy_step}"))
        if self.greedy_tokens < 2 or self.greedy_seq_len < 2:
            out.append(("greedy_tokens", "greedy_tokens and greedy_seq_len must be >= 2"))
        if not 0.0 < self.max_level < 1.0:
            out.append(("max_level", f"must be in (0, 1), got {self.max_level}"))
        return out


@SPARSITY.register("teal")
class Teal(SparsityMethod):
    Config = TealCfg

    def build(self, cfg: TealCfg, level: float, ctx: BuildContext) -> SparsityPlan:
        if cfg.allocation == "uniform" or level == 0.0:
            levels: dict[str, float] = {}
        else:
            levels = greedy_levels(cfg, level, ctx)
        placed = placed_for_sites(
            ctx.model,
            ctx.adapter,
            cfg.sites,
            lambda layer, site, module: Rule("threshold", levels.get(module, level), 0.0),
        )
        return SparsityPlan(cfg.method, "", level, calibrate_thresholds(placed, cfg, ctx))


def _rule(stats, layer: int, site: str, level: float) -> Rule:
    return Rule("threshold", level, stats.threshold(layer, site, level))


@torch.no_grad()
def greedy_levels(cfg: TealCfg, target: float, ctx: BuildContext) -> dict[str, float]:
    """module -> sparsity level from TEAL's block-wise greedy search (module doc)."""
    model, adapter, stats = ctx.model, ctx.adapter, ctx.stats
    if ctx.tokens is None or stats is None:
        raise ValueError("teal greedy allocation needs calibration tokens and statistics")
    seq_len = context_len(model, cfg.greedy_seq_len)
    n_batches = max(1, cfg.greedy_tokens // seq_len)
    x = torch.cat([batch_at(ctx.tokens, b, 1, seq_len, ctx.seed) for b in range(n_batches)])
    hidden = int(model.config.hidden_size)
    out: dict[str, float] = {}
    for layer in tqdm(range(len(adapter.layers(model))), desc=f"teal greedy s={target:g}"):
        inputs = block_inputs(model, adapter, layer, [x])  # earlier blocks dense
        dense = run_block(model, adapter, layer, inputs)[0].float()
        dense_sq = float((dense**2).sum())
        mods = [
            (site, name, linear_shape(m)[0], float(linear_shape(m)[0] * linear_shape(m)[1]))
            for site in cfg.sites
            for name, m in adapter.site_linears(model, layer)[site]
        ]
        params_of = {name: p for _, name, _, p in mods}
        total = sum(params_of.values())
        lv = {name: 0.0 for _, name, _, _ in mods}
        # one wrapper per projection; trials only swap their thresholds
        handle = apply(
            model,
            adapter,
            SparsityPlan(
                "teal",
                "greedy",
                target,
                [Placed(layer, s, n, w, Rule("threshold", 0.0, 0.0)) for s, n, w, _ in mods],
            ),
        )
        site_of = {name: site for site, name, _, _ in mods}

        def set_level(name: str, level: float, layer=layer, handle=handle, site_of=site_of):
            w = handle.wrappers[name]
            t = stats.threshold(layer, site_of[name], level)
            w.placed = replace(w.placed, rule=Rule("threshold", level, t))

        eff = 0.0
        try:
            while eff < target - 1e-9:
                best: tuple[float, str, float] | None = None
                for _, name, _, params in mods:
                    step = cfg.greedy_step * hidden * hidden / params  # TEAL: 0.05 / w_p
                    new = min(lv[name] + step, lv[name] + (target - eff) * total / params)
                    if new > cfg.max_level:
                        continue
                    set_level(name, new)
                    y = run_block(model, adapter, layer, inputs)[0].float()
                    err = float(((y - dense) ** 2).sum()) / dense_sq
                    set_level(name, lv[name])
                    if best is None or err < best[0]:
                        best = (err, name, new)
                if best is None:
                    raise ValueError(
                        f"teal greedy: layer {layer} cannot reach effective sparsity {target} "
                        f"with every projection at most {cfg.max_level}"
                    )
                _, name, new = best
                eff += (new - lv[name]) * params_of[name] / total
                lv[name] = new
                set_level(name, new)
        finally:
            handle.remove()
        log.info("layer %d: %s", layer, {k.rsplit(".", 1)[1]: round(v, 3) for k, v in lv.items()})
        out.update(lv)
    return out
