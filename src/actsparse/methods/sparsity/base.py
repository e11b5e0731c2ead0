"""What every sparsity method is: a config dataclass and `build(cfg, level, ctx) -> plan`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from omegaconf import MISSING

from actsparse.activation_stats import histogram_quantile
from actsparse.methods.registry import parse_entry
from actsparse.methods.sparsity.mechanism import SparsityPlan
from actsparse.models.adapters import LINEAR_SITES, SITES, FamilyAdapter, linear_shape
from actsparse.tables import CHANNEL_STATS, HISTOGRAMS, LINEARS, read_table


@dataclass
class SparsityMethodCfg:
    """Keys every method's config has (`conf/sparsify/<method>.yaml`)."""

    method: str = MISSING  # the registered method this entry runs
    levels: list[float] | None = None  # null: the study's sparsify.levels
    models: list[str] | None = None  # null: every model of the study; []: none

    def sites_used(self) -> list[str]:
        """The sites this entry places rules at (checked against each model's family)."""
        return []

    def problems(self) -> list[tuple[str, str]]:
        return level_problems(self.levels or [])


def level_problems(levels: list[float]) -> list[tuple[str, str]]:
    """(key, message) for each sparsity level outside [0, 1)."""
    return [
        ("levels", f"sparsity levels must be in [0, 1), got {level}")
        for level in levels
        if not 0.0 <= level < 1.0
    ]


def check_sites(sites: list[str], allowed: tuple[str, ...] = SITES) -> list[tuple[str, str]]:
    bad = [s for s in sites if s not in allowed]
    return [("sites", f"unknown site(s) {bad}; sites: {', '.join(allowed)}")] if bad else []


class CalibrationStats:
    """Read side of a calibrate job: per-layer histograms and widths, checked against a model."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.linears = read_table(self.folder / "linears.parquet", LINEARS)
        self._hist: dict[Any, Any] = {}  # layer -> table; (layer, site) -> arrays

    def histogram(self, layer: int, site: str) -> tuple[np.ndarray, np.ndarray]:
        if (layer, site) in self._hist:
            return self._hist[(layer, site)]
        if layer not in self._hist:
            self._hist[layer] = read_table(
                self.folder / "histograms" / f"layer_{layer:03d}.parquet", HISTOGRAMS
            )
        h = self._hist[layer]
        h = h[h.site == site].sort_values("bin")
        if h.empty:
            raise ValueError(
                f"{self.folder}: no calibrated histogram for layer {layer} site {site!r} "
                "(calibrated with an older version? rerun calibrate)"
            )
        self._hist[(layer, site)] = (h.hi.to_numpy()[:-1], h["count"].to_numpy())
        return self._hist[(layer, site)]

    def threshold(self, layer: int, site: str, level: float) -> float:
        """TEAL's `t = F^-1(0.5 + s/2)` for a symmetric distribution: `P(|x| < t) = s`."""
        edges, counts = self.histogram(layer, site)
        return histogram_quantile(edges, counts, level)

    def check_model(self, model, adapter: FamilyAdapter, who: str, sites: list[str]) -> None:
        """Refuse statistics calibrated on another model: layer count and widths must match."""
        n_layers = len(adapter.layers(model))
        cal_layers = int(self.linears.layer.max()) + 1
        if cal_layers != n_layers:
            raise ValueError(
                f"{who}: calibration in {self.folder} has {cal_layers} layers, the model "
                f"{n_layers}: calibrated on another model?"
            )
        widths = {(int(r.layer), r.site): int(r.in_features) for r in self.linears.itertuples()}
        for layer in range(n_layers):
            for site in sites:
                if site not in LINEAR_SITES:
                    continue
                name, module = adapter.site_linears(model, layer)[site][0]
                got, want = linear_shape(module)[0], widths.get((layer, site))
                if got != want:
                    raise ValueError(
                        f"{who}: layer {layer} site {site!r}: the model's {name} reads width "
                        f"{got}, the calibration {self.folder} has width {want} (shape "
                        "mismatch: calibrated on another model?)"
                    )
        if "gate" in sites:
            stats = read_table(self.folder / "channel_stats" / "layer_000.parquet", CHANNEL_STATS)
            width = int((stats.site == "gate").sum())
            gate = model.get_submodule(f"{adapter.block_path(model, 0)}.{adapter.gate_linear}")
            if width != linear_shape(gate)[1]:
                raise ValueError(
                    f"{who}: layer 0 site 'gate': calibrated width {width}, the model's "
                    f"{linear_shape(gate)[1]} (shape mismatch: calibrated on another model?)"
                )


@dataclass
class BuildContext:
    model: Any
    adapter: FamilyAdapter
    stats: CalibrationStats | None
    tokens: torch.Tensor | None  # calibration token stream (methods that run the model)
    device: torch.device
    seed: int = 0
    window: int | None = None  # the evaluation's window (evaluate.seq_len; None: the context)


class SparsityMethod(ABC):
    """A registered method. Subclasses set `Config` and implement `build`."""

    Config: ClassVar[type[SparsityMethodCfg]] = SparsityMethodCfg
    needs_calibration: ClassVar[bool] = True

    @classmethod
    def parse(cls, raw: dict[str, Any], where: str) -> SparsityMethodCfg:
        """The typed config of one entry; ValueError naming `where.<key>` on a bad one."""
        return parse_entry(cls.Config, raw, where)  # type: ignore[no-any-return]

    def plan(self, cfg: Any, level: float, ctx: BuildContext, entry: str = "") -> SparsityPlan:
        """Check the level and the model's sites, then `build`; errors name the method."""
        who = f"sparsity method {entry or cfg.method!r}" + (f" ({cfg.method})" if entry else "")
        if not 0.0 <= level < 1.0:
            raise ValueError(f"{who}: level must be in [0, 1), got {level}")
        for site in cfg.sites_used():
            ctx.adapter.check_site(site, who)
        if self.needs_calibration and ctx.stats is not None:
            ctx.stats.check_model(ctx.model, ctx.adapter, who, cfg.sites_used())
        plan = self.build(cfg, level, ctx)
        plan.entry = entry or cfg.method
        return plan

    @abstractmethod
    def build(self, cfg: Any, level: float, ctx: BuildContext) -> SparsityPlan:
        """The method's rules for `ctx.model` at `level` (level and sites already checked)."""


# --------------------------------------------------------------------------- thresholds

SITE_ORDER = ("attn_in", "o_proj_in", "ffn_in", "gate", "ffn_intermediate", "heads")


@dataclass
class ThresholdMethodCfg(SparsityMethodCfg):
    """Keys of methods whose rules are magnitude thresholds calibrated for a target level."""

    # sequential: each (layer, site) in forward order is calibrated on activations with
    # every earlier rule applied, so upstream sparsity cannot shift what it achieves;
    # dense: every threshold from the dense model's histograms (the calibrate stage), as
    # in TEAL's paper: downstream sites then drift from their targets
    calibration: str = "sequential"
    calib_tokens: int = 16384  # sequential: calibration tokens (train split)
    calib_seq_len: int | None = None  # null: the evaluation's window (activations depend on it)

    def problems(self) -> list[tuple[str, str]]:
        out = super().problems()
        if self.calibration not in ("sequential", "dense"):
            out.append(
                ("calibration", f"must be 'sequential' or 'dense', got {self.calibration!r}")
            )
        if self.calib_tokens < 2 or (self.calib_seq_len is not None and self.calib_seq_len < 2):
            out.append(("calib_tokens", "calib_tokens and calib_seq_len must be >= 2"))
        return out


def context_len(model, seq_len: int) -> int:
    """`seq_len`, capped at the model's context (tiny models have short ones)."""
    limit = getattr(model.config, "max_position_embeddings", None)
    return min(seq_len, int(limit)) if limit else seq_len


@torch.no_grad()
def calibrate_thresholds(placed: list, cfg: ThresholdMethodCfg, ctx: BuildContext) -> list:
    """Fill in the threshold of every threshold rule in `placed` for its level.

    A threshold `t` with `P(|x| < t) = level` (TEAL's `F^-1(0.5 + s/2)`), read from a
    histogram of |x|: the calibrate stage's (dense) or one collected here, in forward
    order, with the rules already calibrated switched on (sequential). Sequentially, each
    block's inputs are captured once (with every earlier block's rules on) and the block
    alone is rerun for each of its sites.
    """
    from dataclasses import replace

    from actsparse.activation_stats import SiteStats, log_bin_edges
    from actsparse.data import batch_at
    from actsparse.methods.sparsity.mechanism import (
        SparsityPlan,
        apply,
        block_inputs,
        run_block,
    )

    if cfg.calibration == "dense":
        assert ctx.stats is not None
        return [
            replace(
                p,
                rule=replace(p.rule, threshold=ctx.stats.threshold(p.layer, p.site, p.rule.level)),
            )
            for p in placed
        ]
    if ctx.tokens is None:
        raise ValueError("sequential threshold calibration needs calibration tokens")
    model, adapter = ctx.model, ctx.adapter
    seq_len = context_len(model, cfg.calib_seq_len or ctx.window or 10**9)
    n_batches = max(1, cfg.calib_tokens // (8 * seq_len))
    batches = [batch_at(ctx.tokens, b, 8, seq_len, ctx.seed) for b in range(n_batches)]
    edges = log_bin_edges(2048, 1e-6, 1e4)
    groups: dict[tuple[int, str], list] = {}
    for p in placed:
        groups.setdefault((p.layer, p.site), []).append(p)
    done: list = []
    for layer in sorted({layer for layer, _ in groups}):
        handle = apply(model, adapter, SparsityPlan("calibration", "", 0.0, done))
        try:
            inputs = block_inputs(model, adapter, layer, batches)
        finally:
            handle.remove()
        for site in [s for s in SITE_ORDER if (layer, s) in groups]:
            group = groups[(layer, site)]
            stats = SiteStats(group[0].width, edges, 0.0, gram=False, device=ctx.device)
            where = f"layer {layer} site {site}"
            if site == "gate":
                _, act = adapter.act_module(model, layer)
                hook = act.register_forward_hook(
                    lambda m, a, out, s=stats, w=where: s.update(out, w)
                )
            else:
                module = model.get_submodule(group[0].module)
                hook = module.register_forward_pre_hook(
                    lambda m, a, s=stats, w=where: s.update(a[0], w)
                )
            handle = apply(model, adapter, SparsityPlan("calibration", "", 0.0, done))
            try:
                run_block(model, adapter, layer, inputs)
            finally:
                hook.remove()
                handle.remove()
            counts, e = stats.hist.cpu().numpy(), edges.numpy()
            done += [
                replace(
                    p, rule=replace(p.rule, threshold=histogram_quantile(e, counts, p.rule.level))
                )
                for p in group
            ]
    return done
