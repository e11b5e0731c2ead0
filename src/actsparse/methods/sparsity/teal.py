"""TEAL: magnitude thresholds on the input of every projection, `x * 1[|x| > t]` with
`t = F^-1(0.5 + s/2)` of the calibrated (symmetric, zero-mean) distribution, i.e.
`P(|x| < t) = s`, read from histograms of |x| (see `calibration` in the config: TEAL's
paper reads the dense model's; `sequential` recalibrates with upstream rules applied).

Allocation:
- `uniform`: every projection at the target level;
- `greedy`: TEAL's block-wise greedy search. Per block, all projections start dense;
  each step raises the sparsity of the one projection whose increase adds the least
  error to the block's output (on `greedy_tokens` calibration tokens, earlier blocks
  dense; `greedy_objective` below), by `step / w_p` with `w_p = P_p / d^2` (`P_p` its real parameter count,
  `d^2` that of a square hidden-to-hidden projection, as in TEAL's code; GQA's smaller k/v
  take larger steps), until the block's effective sparsity `sum(P_p s_p) / sum(P_p)`
  reaches the target (the last step is cut to land on it). The search reads the dense
  calibration histograms and reruns only the block, on its captured inputs; the chosen
  levels are then calibrated like uniform ones.

`greedy_objective`: `relative_sq` is `||Y - Y_dense||_F^2 / ||Y_dense||_F^2` over every
position (the attention-sink token included); `teal` is what TEAL's code measures
(FasterDecoding/TEAL `teal/greedyopt.py`): the first half of each sequence dense (its
`SparsifyFn` sparsifies the second half only), the L2 norm over the positions of the last
quarter of each sequence, per sequence and channel, averaged over both.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from omegaconf import MISSING
from tqdm import tqdm

from actsparse.data import batch_at
from actsparse.methods.sparsity.base import (
    SPARSITY,
    BuildContext,
    LinearSitesCfg,
    SparsityMethod,
    context_len,
)
from actsparse.methods.sparsity.calibration import ThresholdMethodCfg, calibrate_thresholds
from actsparse.methods.sparsity.mechanism import Placed, Rule, SparsityPlan, placed_for_sites
from actsparse.methods.sparsity.wrappers import apply
from actsparse.models.adapters import linear_shape
from actsparse.models.blocks import block_inputs, run_block

log = logging.getLogger("actsparse.teal")

OBJECTIVES = ("relative_sq", "teal")


@dataclass
class GreedyCfg(LinearSitesCfg):
    """Keys of a method whose per-projection levels may come from TEAL's greedy search
    (TEAL, WINA): the search is `greedy_path`, each method gives it its rule at a level."""

    allocation: str = MISSING  # uniform | greedy
    greedy_step: float = MISSING  # sparsity added per step to a d x d projection (TEAL's 0.05)
    greedy_tokens: int = MISSING  # calibration tokens the greedy search measures errors on
    greedy_seq_len: int = MISSING
    max_level: float = MISSING  # no projection is made sparser than this
    greedy_objective: str = MISSING  # relative_sq | teal (module doc)

    def problems(self) -> list[tuple[str, str]]:
        out = super().problems()
        if self.allocation not in ("uniform", "greedy"):
            out.append(("allocation", f"must be 'uniform' or 'greedy', got {self.allocation!r}"))
        if not 0.0 < self.greedy_step <= 0.5:
            out.append(("greedy_step", f"must be in (0, 0.5], got {self.greedy_step}"))
        if self.greedy_tokens < 2 or self.greedy_seq_len < 2:
            out.append(("greedy_tokens", "greedy_tokens and greedy_seq_len must be >= 2"))
        if self.greedy_objective not in OBJECTIVES:
            out.append(
                ("greedy_objective", f"must be one of {OBJECTIVES}, got {self.greedy_objective!r}")
            )
        if not 0.0 < self.max_level < 1.0:
            out.append(("max_level", f"must be in (0, 1), got {self.max_level}"))
        return out


@dataclass
class TealCfg(ThresholdMethodCfg, GreedyCfg):
    pass


@SPARSITY.register("teal")
class Teal(SparsityMethod):
    paper = "TEAL"
    summary = "`t = F^-1(0.5 + s/2)` per projection; `allocation: uniform` or `greedy`"
    Config = TealCfg

    def searches_allocation(self, cfg: TealCfg) -> bool:
        return cfg.allocation == "greedy"

    def search_allocations(
        self, cfg: TealCfg, levels: list[float], ctx: BuildContext
    ) -> dict[float, dict[str, float]]:
        return greedy_path(cfg, levels, ctx, threshold_at(ctx))

    def build(self, cfg: TealCfg, level: float, ctx: BuildContext) -> SparsityPlan:
        levels = allocated_levels(cfg, level, ctx, threshold_at)
        placed = placed_for_sites(
            ctx.model,
            ctx.adapter,
            cfg.sites,
            lambda layer, site, module: Rule("threshold", levels.get(module, level), 0.0),
        )
        return SparsityPlan(cfg.method, "", level, calibrate_thresholds(placed, cfg, ctx))


def allocated_levels(
    cfg: GreedyCfg,
    level: float,
    ctx: BuildContext,
    rule_at: Callable[[BuildContext], Callable[[int, str, float], Rule]],
    rotations: dict[str, torch.Tensor] | None = None,
) -> dict[str, float]:
    """module -> level of an entry at `level`: none (every module at `level`) for a
    uniform one; a greedy one's from its allocate job's walk, or a walk of its own."""
    if cfg.allocation == "uniform" or level == 0.0:
        return {}
    if ctx.allocation is not None:  # the allocate job's walk
        return ctx.allocation
    return greedy_path(cfg, [level], ctx, rule_at(ctx), rotations)[level]


def threshold_at(ctx: BuildContext) -> Callable[[int, str, float], Rule]:
    """TEAL's rule at a level in the greedy search: the dense histograms' threshold."""
    if ctx.stats is None:
        raise ValueError("teal greedy allocation needs the calibrate stage's statistics")
    stats = ctx.stats
    return lambda layer, site, level: Rule("threshold", level, stats.threshold(layer, site, level))


@torch.no_grad()
def greedy_path(
    cfg: GreedyCfg,
    targets: list[float],
    ctx: BuildContext,
    rule_at: Callable[[int, str, float], Rule],
    rotations: dict[str, torch.Tensor] | None = None,
) -> dict[float, dict[str, float]]:
    """target -> (module -> sparsity level) from TEAL's block-wise greedy search (module
    doc), for every target in one walk per block; `rotations`: the bases `rule_at`'s rules
    name (WINA's transform).

    Walks for two targets take the same steps until a step toward the lower one would be
    cut short to land on it. There the walk for that target is finished on a copy, and the
    shared walk goes on toward the next target; so each target's levels are exactly those
    of a walk made for it alone, and all of them cost about one walk to the highest."""
    model, adapter = ctx.model, ctx.adapter
    if ctx.tokens is None:
        raise ValueError(f"{cfg.method} greedy allocation needs calibration tokens")
    targets = sorted({float(t) for t in targets if t > 0.0})
    seq_len = context_len(model, cfg.greedy_seq_len)
    n_batches = max(1, cfg.greedy_tokens // seq_len)
    x = torch.cat([batch_at(ctx.tokens, b, 1, seq_len, ctx.seed) for b in range(n_batches)])
    out: dict[float, dict[str, float]] = {t: {} for t in targets}
    desc = "teal greedy s=" + ",".join(f"{t:g}" for t in targets)
    for layer in tqdm(range(len(adapter.layers(model))), desc=desc):
        with _BlockSearch(cfg, ctx, layer, x, rule_at, rotations) as block:
            lv = {name: 0.0 for name in block.params}
            eff = 0.0
            for target in targets:
                lv, eff, cut = block.walk(lv, eff, target, stop_before_cut=True)
                if cut:
                    found, _, _ = block.walk(dict(lv), eff, target, stop_before_cut=False)
                    block.set_levels(lv)  # the shared walk resumes from before the cut
                else:
                    found = dict(lv)
                out[target].update(found)
                log.info(
                    "layer %d, s=%g: %s",
                    layer,
                    target,
                    {k.rsplit(".", 1)[1]: round(v, 3) for k, v in found.items()},
                )
    return out


class _BlockSearch:
    """One block's greedy search: its captured inputs and dense output, one threshold
    wrapper per projection (trials only swap thresholds), the relative error of a trial."""

    def __init__(
        self,
        cfg: GreedyCfg,
        ctx: BuildContext,
        layer: int,
        x: torch.Tensor,
        rule_at: Callable[[int, str, float], Rule],
        rotations: dict[str, torch.Tensor] | None = None,
    ):
        model, adapter = ctx.model, ctx.adapter
        self.cfg, self.ctx, self.layer, self.rule_at = cfg, ctx, layer, rule_at
        self.inputs = block_inputs(model, adapter, layer, [x])  # earlier blocks dense
        self.dense = run_block(model, adapter, layer, self.inputs)[0].float()
        self.dense_sq = float((self.dense**2).sum())
        mods = [
            (site, name, module)
            for site in cfg.sites
            for name, module in adapter.site_linears(model, layer)[site]
        ]
        self.site_of = {name: site for site, name, _ in mods}
        self.params = {name: float(math.prod(linear_shape(m))) for _, name, m in mods}
        self.total = sum(self.params.values())
        self.hidden = int(model.config.hidden_size)
        placed = [
            Placed(layer, s, n, linear_shape(m)[0], rule_at(layer, s, 0.0)) for s, n, m in mods
        ]
        plan = SparsityPlan(cfg.method, "greedy", 0.0, placed, rotations=rotations or {})
        self.handle = apply(model, adapter, plan)

    def __enter__(self) -> _BlockSearch:
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()

    def set_level(self, name: str, level: float) -> None:
        w = self.handle.wrappers[name]
        w.placed = replace(w.placed, rule=self.rule_at(self.layer, self.site_of[name], level))

    def set_levels(self, lv: dict[str, float]) -> None:
        for name, level in lv.items():
            self.set_level(name, level)

    def error(self) -> float:
        if self.cfg.greedy_objective == "teal":
            return self._teal_error()
        y = run_block(self.ctx.model, self.ctx.adapter, self.layer, self.inputs)[0].float()
        return float(((y - self.dense) ** 2).sum()) / self.dense_sq

    def _teal_error(self) -> float:
        """TEAL's `torch.norm(target[:, s:] - new[:, s:], dim=1).mean()`, `s = 3T/4`, with
        the first half of every sequence dense."""
        t = self.dense.shape[1]
        with self.handle.dense_prefix(t // 2, t):
            y = run_block(self.ctx.model, self.ctx.adapter, self.layer, self.inputs)[0].float()
        start = int(t * 0.75)
        return float((y[:, start:] - self.dense[:, start:]).norm(dim=1).mean())

    def walk(
        self, lv: dict[str, float], eff: float, target: float, stop_before_cut: bool
    ) -> tuple[dict[str, float], float, bool]:
        """Greedy steps from (levels `lv`, effective sparsity `eff`) until `eff` reaches
        `target`; with `stop_before_cut`, stop before a step that some projection would
        have to cut short. Returns the levels, the effective sparsity, and whether it
        stopped there. The wrappers hold the returned levels."""
        cfg = self.cfg
        while eff < target - 1e-9:
            candidates = []
            for name, params in self.params.items():
                full = (
                    lv[name] + cfg.greedy_step * self.hidden * self.hidden / params
                )  # TEAL: 0.05 / w_p
                landing = lv[name] + (target - eff) * self.total / params
                if landing < full and stop_before_cut:
                    return lv, eff, True
                candidates.append((name, min(full, landing)))
            best: tuple[float, str, float] | None = None
            for name, new in candidates:
                if new > cfg.max_level:
                    continue
                self.set_level(name, new)
                err = self.error()
                self.set_level(name, lv[name])
                if best is None or err < best[0]:
                    best = (err, name, new)
            if best is None:
                raise ValueError(
                    f"{cfg.method} greedy: layer {self.layer} cannot reach effective sparsity "
                    f"{target} with every projection at most {cfg.max_level}"
                )
            _, name, new = best
            eff += (new - lv[name]) * self.params[name] / self.total
            lv = {**lv, name: new}
            self.set_level(name, new)
        return lv, eff, False
