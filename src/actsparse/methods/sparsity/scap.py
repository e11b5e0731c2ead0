"""SCAP (statistical calibrated activation pruning; Chua et al., Intel Labs 2024,
IntelLabs/SCAP): a magnitude threshold on the input of each linear after centring it on
the mode of its distribution, the shift folded into a bias so that the output is the
dense one wherever nothing is dropped: `W S_t(x - m) + b + W (m 1)`.

Per layer and site, on the calibration tokens with every earlier rule on (sequential, as
the reference's hooks do): one scalar centre `m` over all tokens and channels, then
`t = quantile(|x - m|, s)`; entries with `|x - m| <= t` are dropped (`Rule.shift`,
`calibration.centred_rules`). Gate and up read one input and share `m` and `t`.

`center`: `mode` is the peak of a Gaussian KDE (Scott's bandwidth times 0.5, evaluated on
2000 points between the sample's extremes: the reference's seaborn `kdeplot(bw_adjust=0.5,
gridsize=2000, cut=0)`) of `kde_samples` strided values; `median` is the reference's other
estimator; `zero` is no centring (the reference's Llama-2 and Mistral configs). Decisions
(docs/sparsity.md): one KDE sample where the reference tries three sizes and keeps the
centre with the smallest output error; the sites default to the FFN's inputs (gate/up and
down, the released configs), one level at both.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from omegaconf import MISSING

from actsparse.methods.sparsity.base import SPARSITY, BuildContext, SparsityMethod, check_sites
from actsparse.methods.sparsity.calibration import ThresholdMethodCfg, calibrate_thresholds
from actsparse.methods.sparsity.mechanism import Rule, SparsityPlan, placed_for_sites
from actsparse.models.adapters import LINEAR_SITES

CENTERS = ("mode", "median", "zero")


@dataclass
class ScapCfg(ThresholdMethodCfg):
    sites: list[str] = MISSING  # linear-input sites
    center: str = MISSING  # mode | median | zero
    kde_samples: int = MISSING  # values the mode's KDE is fitted on

    def sites_used(self) -> list[str]:
        return list(self.sites)

    def problems(self) -> list[tuple[str, str]]:
        out = super().problems() + check_sites(self.sites, LINEAR_SITES)
        if self.center not in CENTERS:
            out.append(("center", f"must be one of {CENTERS}, got {self.center!r}"))
        if self.calibration != "sequential":
            out.append(("calibration", "scap centres on activations it sees: sequential only"))
        if self.kde_samples < 100:
            out.append(("kde_samples", f"must be >= 100, got {self.kde_samples}"))
        return out


def kde_mode(x: torch.Tensor, n_samples: int) -> float:
    """The peak of a Gaussian KDE of `n_samples` strided values of `x` (module doc)."""
    v = x[:: max(1, len(x) // n_samples)].numpy()
    if np.ptp(v) == 0:
        return float(v[0])
    from scipy.stats import gaussian_kde  # here: scipy.stats costs every job 0.7 s to import

    kde = gaussian_kde(v, bw_method=lambda k: 0.5 * k.scotts_factor())
    grid = np.linspace(v.min(), v.max(), 2000)
    return float(grid[np.argmax(kde(grid))])


def center_fn(cfg: ScapCfg):
    if cfg.center == "mode":
        return partial(kde_mode, n_samples=cfg.kde_samples)
    if cfg.center == "median":
        return lambda x: float(x.median())
    return lambda x: 0.0


@SPARSITY.register("scap")
class Scap(SparsityMethod):
    paper = "SCAP"
    summary = "per-layer quantile of `|x - m|`, `m` the mode (KDE), `W m` folded into a bias"
    Config = ScapCfg
    needs_calibration = False  # its centres and thresholds come from the tokens alone

    def build(self, cfg: ScapCfg, level: float, ctx: BuildContext) -> SparsityPlan:
        rule = Rule("threshold", level, 0.0)
        placed = placed_for_sites(ctx.model, ctx.adapter, cfg.sites, lambda *_: rule)
        return SparsityPlan(
            cfg.method, "", level, calibrate_thresholds(placed, cfg, ctx, center=center_fn(cfg))
        )

    def plan_metrics(self, plan: SparsityPlan) -> dict[str, float]:
        shifts = [p.rule.shift for p in plan.placed]
        return {
            "center_mean": float(np.mean(shifts)),
            "center_abs_max": float(np.max(np.abs(shifts))),
        }
