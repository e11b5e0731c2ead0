"""What every sparsity method is: a config dataclass and `build(cfg, level, ctx) -> plan`."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from omegaconf import MISSING

from actsparse.activation_stats import histogram_quantile, log_bin_edges
from actsparse.data import TokenData, batch_at
from actsparse.methods.registry import Registry, parse_entry
from actsparse.methods.sparsity.mechanism import SparsityPlan, apply
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
    levels: list[float] | None = None  # null: the study's sparsify.levels
    models: list[str] | None = None  # null: every model of the study; []: none

    def sites_used(self) -> list[str]:
        """The sites this entry places rules at (checked against each model's family)."""
        return []

    def problems(self) -> list[tuple[str, str]]:
        return level_problems(self.levels or [])


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

    def searches_allocation(self, cfg: Any) -> bool:
        """Whether this entry's per-module levels come from a search that serves all of its
        levels at once (TEAL's greedy walk). The study then runs it in one allocate job per
        model, and each level's build reads its part as `ctx.allocation`."""
        return False

    def search_allocations(
        self, cfg: Any, levels: list[float], ctx: BuildContext
    ) -> dict[float, dict[str, float]]:
        """level -> (module -> level) for every level of the entry (see searches_allocation)."""
        raise NotImplementedError(f"{cfg.method} has no allocation search")


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


class _Stop(Exception):
    """Ends a forward pass early once what it was run for has been seen."""


def _split_call(args: tuple, kwargs: dict) -> tuple[torch.Tensor, tuple, dict]:
    """(hidden states, other positional args, kwargs) of a block call."""
    if args:
        return args[0], args[1:], kwargs
    kwargs = dict(kwargs)
    return kwargs.pop("hidden_states"), (), kwargs


def _call_block(block, hidden: torch.Tensor, call: tuple[tuple, dict]) -> torch.Tensor:
    rest, kwargs = call
    out = block(hidden, *rest, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def _count_magnitudes(
    hist: torch.Tensor, x: torch.Tensor, edges: torch.Tensor, width: int, where: str
) -> None:
    """Add the histogram of |x| to `hist` (bins as in `SiteStats`, binned the same way, in
    float64): thresholds need nothing else, and the moments `SiteStats` also keeps cost
    as much as the block itself at FFN widths."""
    x = x.reshape(-1, x.shape[-1])
    if x.shape[1] != width:
        raise ValueError(f"{where}: expected {width} channels, got {x.shape[1]}")
    if not torch.isfinite(x).all():
        raise FloatingPointError(f"{where}: non-finite activations (NaN or inf)")
    idx = torch.bucketize(x.abs().reshape(-1).to(torch.float64), edges, right=True)
    hist += torch.bincount(idx, minlength=len(hist))


@torch.no_grad()
def block_calls(model, adapter: FamilyAdapter, last: int, batches: list) -> tuple[list, list]:
    """What blocks `0..last` are called with for each batch of token ids, without running
    them: (the hidden states block 0 receives per batch, `calls[layer][batch]` = the
    other (args, kwargs) of that block's call: masks, rotary embeddings, positions).

    The model's own forward computes these (no family-specific code); its blocks are
    stood in for by pass-throughs meanwhile, so this costs the embeddings only. They are
    taken per layer since they may differ between layers (Qwen2's sliding-window layers
    get another mask).
    """
    blocks = adapter.layers(model)
    device = next(model.parameters()).device
    first: list[torch.Tensor] = []
    calls: list[list] = [[] for _ in range(last + 1)]
    passed: list[torch.Tensor | None] = [None]

    def stand_in(layer: int):
        def forward(*args, **kwargs):
            hidden, rest, kw = _split_call(args, kwargs)
            if layer == 0:
                first.append(hidden)
            elif hidden is not passed[0]:
                # carrying outputs forward assumes the model feeds each block's output
                # straight into the next one
                raise RuntimeError(
                    f"block {layer} does not receive block {layer - 1}'s output as its "
                    "hidden states: sequential calibration cannot carry them forward"
                )
            calls[layer].append((rest, kw))
            if layer == last:
                raise _Stop
            passed[0] = hidden
            return hidden

        return forward

    saved = {i: blocks[i].__dict__.get("forward") for i in range(last + 1)}
    try:
        for i in range(last + 1):
            blocks[i].forward = stand_in(i)
        for x in batches:
            passed[0] = None
            with contextlib.suppress(_Stop):
                model(input_ids=x.to(device), use_cache=False)
    finally:
        for i, forward in saved.items():
            if forward is None:
                del blocks[i].forward
            else:
                blocks[i].forward = forward
    if any(len(c) != len(batches) for c in calls):
        raise RuntimeError(
            f"the model did not call blocks 0..{last} once each per batch: sequential "
            "calibration cannot carry their outputs forward"
        )
    return first, calls


@torch.no_grad()
def calibrate_thresholds(placed: list, cfg: ThresholdMethodCfg, ctx: BuildContext) -> list:
    """Fill in the threshold of every threshold rule in `placed` for its level.

    A threshold `t` with `P(|x| < t) = level` (TEAL's `F^-1(0.5 + s/2)`), read from a
    histogram of |x|: the calibrate stage's (dense) or one collected here, in forward
    order, with the rules already calibrated switched on (sequential).

    Sequentially, the blocks run one at a time on every calibration batch: each block's
    outputs, with the rules of its own and every earlier block on, are kept as the next
    block's inputs (the hidden states of all calibration tokens at one layer are held).
    Each site's statistics come from its block rerun on those inputs with the rules
    calibrated so far on, stopped once the site's activation has been seen. The cost is
    one forward pass plus, per site, the blocks up to that site: linear in the depth,
    where running the model from its first layer to reach each layer was quadratic.
    """
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
    edges = log_bin_edges(2048, 1e-6, 1e4).to(ctx.device)
    groups: dict[tuple[int, str], list] = {}
    for p in placed:
        groups.setdefault((p.layer, p.site), []).append(p)
    if not groups:
        return []
    last = max(layer for layer, _ in groups)
    blocks = adapter.layers(model)
    hidden, calls = block_calls(model, adapter, last, batches)
    done: list = []
    for layer in range(last + 1):
        block = blocks[layer]
        for site in [s for s in SITE_ORDER if (layer, s) in groups]:
            group = groups[(layer, site)]
            hist = torch.zeros(len(edges) + 1, dtype=torch.int64, device=ctx.device)
            where = f"layer {layer} site {site}"

            def seen(x, h=hist, n=group[0].width, w=where):
                _count_magnitudes(h, x, edges, n, w)
                raise _Stop  # the rest of the block cannot change this site's statistics

            if site == "gate":
                _, act = adapter.act_module(model, layer)
                hook = act.register_forward_hook(lambda m, a, out, f=seen: f(out))
            else:
                module = model.get_submodule(group[0].module)
                hook = module.register_forward_pre_hook(lambda m, a, f=seen: f(a[0]))
            handle = apply(model, adapter, SparsityPlan("calibration", "", 0.0, done))
            try:
                for h, call in zip(hidden, calls[layer], strict=True):
                    with contextlib.suppress(_Stop):
                        _call_block(block, h, call)
            finally:
                hook.remove()
                handle.remove()
            counts, e = hist.cpu().numpy(), edges.cpu().numpy()
            done += [
                replace(
                    p, rule=replace(p.rule, threshold=histogram_quantile(e, counts, p.rule.level))
                )
                for p in group
            ]
        if layer < last:
            handle = apply(model, adapter, SparsityPlan("calibration", "", 0.0, done))
            try:
                for b, call in enumerate(calls[layer]):
                    hidden[b] = _call_block(block, hidden[b], call)
            finally:
                handle.remove()
    return done
