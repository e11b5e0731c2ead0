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
from actsparse.data import TokenData
from actsparse.io import load_tensors, read_safetensors_metadata
from actsparse.methods.registry import Registry, parse_entry
from actsparse.methods.sparsity.mechanism import SparsityPlan, placed_for_sites
from actsparse.models.adapters import LINEAR_SITES, SITES, FamilyAdapter, linear_shape
from actsparse.schema.stages import level_problems
from actsparse.tables import ALLOCATIONS, CHANNEL_STATS, HISTOGRAMS, LINEARS, read_table

# Every method file registers itself here (`@SPARSITY.register("teal")`). Import it from
# `actsparse.methods.sparsity`, whose `__init__` imports every method file, so that the
# registry is full; it lives in this module so that the method files need not import
# their own package back.
SPARSITY: Registry = Registry("sparsity")


@dataclass
class SparsityMethodCfg:
    """Keys every method's config has (`conf/sparsify/<method>.yaml`)."""

    method: str = MISSING  # the registered method this entry runs
    levels: list[float] | None = MISSING  # null: the study's sparsify.levels
    models: list[str] | None = MISSING  # null: every model of the study; []: none

    def sites_used(self) -> list[str]:
        """The sites this entry places rules at (checked against each model's family)."""
        return []

    def problems(self) -> list[tuple[str, str]]:
        return level_problems(self.levels or [])

    def problems_at(self, levels: list[float]) -> list[tuple[str, str]]:
        """Problems of running this entry at `levels` (its own, or the sweep's)."""
        return []

    def family_problems(self, adapter: FamilyAdapter) -> list[str]:
        """What this entry needs of a model family that `adapter`'s lacks, beyond its
        sites (checked when the config is composed for trained models, and by the job)."""
        return []


def check_sites(sites: list[str], allowed: tuple[str, ...] = SITES) -> list[tuple[str, str]]:
    bad = [s for s in sites if s not in allowed]
    return [("sites", f"unknown site(s) {bad}; sites: {', '.join(allowed)}")] if bad else []


@dataclass
class LinearSitesCfg(SparsityMethodCfg):
    """A method acting on the inputs of the linears reading each of `sites`."""

    sites: list[str] = MISSING  # linear-input sites: every reading linear gets the rule

    def sites_used(self) -> list[str]:
        return list(self.sites)

    def problems(self) -> list[tuple[str, str]]:
        return super().problems() + check_sites(self.sites, LINEAR_SITES)


def same_rule_plan(cfg: SparsityMethodCfg, level: float, ctx: BuildContext, rule) -> SparsityPlan:
    """The plan of a method that places one `rule` at every module reading its sites."""
    placed = placed_for_sites(ctx.model, ctx.adapter, cfg.sites_used(), lambda *_: rule)
    return SparsityPlan(cfg.method, "", level, placed)


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

    def gram(self, layer: int, site: str) -> torch.Tensor:
        """`X^T X / T` (float64) of a linear-input site's activation on the dense model."""
        path = self.folder / "gram" / f"layer_{layer:03d}.safetensors"
        grams = load_tensors(path)  # names the file and tensor on NaN or inf
        if site not in grams:
            raise ValueError(f"{path}: no covariance for site {site!r} of layer {layer}")
        return grams[site].double() / int(read_safetensors_metadata(path)["n_tokens"])

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
    # module -> level at this build's level, from the entry's allocation search (the
    # allocate stage); None: a method that searches does it itself, for this level only
    allocation: dict[str, float] | None = None


def build_context(
    method: SparsityMethod,
    inputs: dict[str, str],
    model,
    adapter: FamilyAdapter,
    device: torch.device,
    seed: int,
    window: int | None,
) -> BuildContext:
    """What a sparsify or allocate job gives a method: the calibrate job's statistics (for
    calibrated methods) and the calibration corpus's train-split tokens (where planned)."""
    stats = CalibrationStats(inputs["calibration"]) if method.needs_calibration else None
    tokens = (
        torch.from_numpy(TokenData(inputs["data"]).tokens("train")) if "data" in inputs else None
    )
    return BuildContext(model, adapter, stats, tokens, device, seed, window)


def read_allocation(folder: str | Path, level: float) -> dict[str, float]:
    """module -> level found for `level` by an allocate job (`allocations.parquet`)."""
    table = read_table(Path(folder) / "allocations.parquet", ALLOCATIONS)
    rows = table[np.isclose(table.target, level, rtol=0.0, atol=1e-12)]
    if rows.empty:
        raise ValueError(
            f"{folder}: the allocation search has no level {level} (it has "
            f"{sorted(set(table.target))}); rerun allocate with this level"
        )
    return dict(zip(rows.module, rows.level.astype(float), strict=True))


class SparsityMethod(ABC):
    """A registered method. Subclasses set `Config` and implement `build`."""

    Config: ClassVar[type[SparsityMethodCfg]] = SparsityMethodCfg
    needs_calibration: ClassVar[bool] = True  # the calibrate stage's statistics
    needs_tokens: ClassVar[bool] = True  # calibration tokens (sequential calibration, searches)
    # its row in docs/sparsity.md's method table (`actsparse methods`)
    paper: ClassVar[str] = ""  # whose method it is, if not this project's
    summary: ClassVar[str] = ""  # the rule, in one line
    skips: ClassVar[str] = ""  # which weight rows a kernel may skip beside the input's columns

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
        for problem in cfg.family_problems(ctx.adapter):
            raise ValueError(f"{who}: {problem}")
        if self.needs_calibration and ctx.stats is not None:
            ctx.stats.check_model(ctx.model, ctx.adapter, who, cfg.sites_used())
        plan = self.build(cfg, level, ctx)
        plan.entry = entry or cfg.method
        return plan

    @abstractmethod
    def build(self, cfg: Any, level: float, ctx: BuildContext) -> SparsityPlan:
        """The method's rules for `ctx.model` at `level` (level and sites already checked)."""

    def needs_tokens_for(self, cfg: Any) -> bool:
        """Whether this entry reads calibration tokens (a method whose search is optional
        says so per entry)."""
        return self.needs_tokens

    def plan_metrics(self, plan: SparsityPlan) -> dict[str, float]:
        """Method-specific figures of a built plan, for the sparsify job's metrics."""
        return {}

    def searches_allocation(self, cfg: Any) -> bool:
        """Whether this entry's per-module levels come from a search that serves all of its
        levels at once (TEAL's greedy walk). The study then runs it in one allocate job per
        model, and each level's build reads its part as `ctx.allocation`."""
        return False

    def search_allocations(
        self, cfg: Any, levels: list[float], ctx: BuildContext
    ) -> dict[float, dict[str, float]]:
        """level -> (module -> level) for every level of the entry (see searches_allocation)."""
        raise TypeError(f"{cfg.method} has no allocation search (searches_allocation is False)")


def basis_dtype(model) -> torch.dtype:
    """The dtype a plan stores its bases in: float64 for a float64 model (the exact
    tests), float32 otherwise."""
    return torch.float64 if next(model.parameters()).dtype == torch.float64 else torch.float32


def rms_norm_weight(ctx: BuildContext, layer: int, site: str, who: str) -> torch.Tensor:
    """The RMSNorm weight in front of `site` (float64), for a method that rotates the
    residual stream and divides by it (LaRoSA's residual form, WINA's transform)."""
    g = ctx.adapter.rms_norm_weight(ctx.model, layer, site).double()
    if not (torch.isfinite(g).all() and (g != 0).all()):
        raise ValueError(
            f"{who}: layer {layer} site {site!r}: the RMSNorm weight has "
            f"{int((g == 0).sum())} zero and {int((~torch.isfinite(g)).sum())} non-finite "
            "entries; the rotated residual stream needs it invertible"
        )
    return g


def context_len(model, seq_len: int) -> int:
    """`seq_len`, capped at the model's context (tiny models have short ones)."""
    limit = getattr(model.config, "max_position_embeddings", None)
    return min(seq_len, int(limit)) if limit else seq_len
