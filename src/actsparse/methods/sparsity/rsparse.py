"""R-Sparse (Zhang et al., ICLR 2025, VITA-Group/R-Sparse): each linear keeps the input
channels with the largest `|x_i| ||W[:, i]||_2` and sends the rest through a rank-r SVD of
its weight, `y = W (x * m) + U_r Σ_r V_r^T (x * (1 - m))`; no predictor.

Cost and split, as the reference's `utils/setup.py`: at model-level sparsity `s` every
linear keeps `(1 - s)` of its dense cost; a share `alpha` of it goes to
`c = max(int(n (1 - s) alpha), 1)` kept channels (`m` weights each) and the rest to the
rank `r = max(int((n m (1 - s) - c m) / (n + m)), 1)` of the remainder. The mask is a
per-linear threshold on the score, the `1 - c / n` quantile over the calibration tokens
of the dense model (the reference calibrates one 512-token window that way), so the count
kept varies per token. `alpha = 1` is pure sparsity on `|x|` alone (rank 0; the
reference's pure-sparse layers also score on `|x|`). The SVD is the plain one of `W`, in
float64 (the wrapper computes it once).

`alpha` per linear: `search: uniform` gives every linear `alpha` (the reference's
baseline, 0.95); `search: block` chooses each linear's from `alphas` by coordinate descent
on its block's output error (earlier blocks dense, on `search_tokens` calibration tokens),
`search_rounds` passes: at most `search_rounds x linears x len(alphas)` block runs per
layer, deterministic for a seed. The paper's search (a genetic algorithm over the whole
model, code not released) is not reproduced (docs/sparsity.md).
"""

from __future__ import annotations

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
from actsparse.methods.sparsity.mechanism import Placed, Rule, SparsityPlan
from actsparse.methods.sparsity.wrappers import apply
from actsparse.models.adapters import input_column_norms, linear_shape
from actsparse.models.blocks import block_inputs, run_block

SEARCHES = ("uniform", "block")
MAX_SAMPLES = 1 << 24  # score values kept per linear for its quantile (strided beyond)


@dataclass
class RSparseCfg(LinearSitesCfg):  # sites: every reading linear
    search: str = MISSING  # uniform | block
    alpha: float = MISSING  # search: uniform: the share of each linear's budget kept sparse
    alphas: list[float] = MISSING  # search: block: the candidates
    search_rounds: int = MISSING
    search_tokens: int = MISSING
    calib_tokens: int = MISSING  # the dense model's tokens the thresholds come from
    calib_seq_len: int | None = MISSING  # null: the evaluation window

    def problems(self) -> list[tuple[str, str]]:
        out = super().problems()
        if self.search not in SEARCHES:
            out.append(("search", f"must be one of {SEARCHES}, got {self.search!r}"))
        for a in [self.alpha, *self.alphas]:
            if not 0.0 < a <= 1.0:
                out.append(("alphas", f"every alpha must be in (0, 1], got {a}"))
        if not self.alphas:
            out.append(("alphas", "needs at least one candidate"))
        if self.search_rounds < 1 or self.search_tokens < 2 or self.calib_tokens < 2:
            out.append(("search_rounds", "search_rounds >= 1, search_tokens and calib_tokens >= 2"))
        return out


def split(n: int, m: int, level: float, alpha: float) -> tuple[int, int]:
    """(kept channels, rank) of an `m x n` linear at sparsity `level` and share `alpha`."""
    channels = max(int(n * (1.0 - level) * alpha), 1)
    if alpha >= 1.0:
        return channels, 0
    return channels, max(int((n * m * (1.0 - level) - channels * m) / (n + m)), 1)


def _quantile(v: torch.Tensor, q: float) -> float:
    if q <= 0:
        return 0.0  # nothing dropped: the dense linear
    v = v.reshape(-1)[:: max(1, v.numel() // MAX_SAMPLES)]
    return float(torch.quantile(v.double(), q))


class _Inputs:
    """Each site's input on the dense model (float32, CPU; q, k and v share theirs), for
    the thresholds of the linears reading it."""

    def __init__(self, ctx: BuildContext, cfg: RSparseCfg):
        model, adapter = ctx.model, ctx.adapter
        seq_len = context_len(model, cfg.calib_seq_len or ctx.window or 10**9)
        n = max(1, cfg.calib_tokens // seq_len)
        self.x: dict[str, list[torch.Tensor]] = {}  # first linear of a site -> its inputs
        self.reads: dict[str, str] = {}  # linear -> the first linear of its site
        hooks = []
        for layer in range(len(adapter.layers(model))):
            for site in cfg.sites:
                linears = adapter.site_linears(model, layer)[site]
                first, module = linears[0]
                self.reads |= {name: first for name, _ in linears}

                def grab(m, a, first=first):
                    x = a[0].reshape(-1, a[0].shape[-1]).float().cpu()
                    self.x.setdefault(first, []).append(x)

                hooks.append(module.register_forward_pre_hook(grab))
        device = next(model.parameters()).device
        try:
            with torch.no_grad():
                for b in range(n):
                    model(input_ids=batch_at(ctx.tokens, b, 1, seq_len, ctx.seed).to(device))
        finally:
            for h in hooks:
                h.remove()

    def rule(self, model, name: str, level: float, alpha: float) -> Rule:
        module = model.get_submodule(name)
        n, m = linear_shape(module)
        channels, rank = split(n, m, level, alpha)
        x = torch.cat(self.x[self.reads[name]]).abs()
        if not torch.isfinite(x).all():
            raise FloatingPointError(f"rsparse: {name}: non-finite activations (NaN or inf)")
        score = x * input_column_norms(module).detach().float().cpu() if rank else x
        target = 1.0 - channels / n
        return Rule("rsparse", target, _quantile(score, target), rank=rank)


@SPARSITY.register("rsparse")
class RSparse(SparsityMethod):
    paper = "R-Sparse"
    summary = (
        "keep `|x_i| ‖W[:, i]‖₂ > t`, the rest through a rank-r SVD of `W` (same cost as `1 - s`)"
    )
    Config = RSparseCfg
    needs_calibration = False  # thresholds from the dense model on calibration tokens

    def build(self, cfg: RSparseCfg, level: float, ctx: BuildContext) -> SparsityPlan:
        if ctx.tokens is None:
            raise ValueError("rsparse needs calibration tokens")
        model, adapter = ctx.model, ctx.adapter
        inputs = _Inputs(ctx, cfg)
        names = [
            (layer, site, name)
            for layer in range(len(adapter.layers(model)))
            for site in cfg.sites
            for name, _ in adapter.site_linears(model, layer)[site]
        ]
        if level == 0:  # nothing dropped: every linear dense
            alpha = {name: 1.0 for _, _, name in names}
        elif cfg.search == "block":
            alpha = _search(cfg, level, ctx, inputs, names)
        else:
            alpha = {name: cfg.alpha for _, _, name in names}
        placed = [
            Placed(layer, site, name, linear_shape(model.get_submodule(name))[0],
                   inputs.rule(model, name, level, alpha[name]))
            for layer, site, name in names
        ]  # fmt: skip
        return SparsityPlan(cfg.method, "", level, placed)

    def plan_metrics(self, plan: SparsityPlan) -> dict[str, float]:
        ranks = [p.rule.rank for p in plan.placed]
        return {
            "lowrank_linears": float(sum(r > 0 for r in ranks)),
            "rank_mean": float(sum(ranks) / len(ranks)) if ranks else 0.0,
        }


@torch.no_grad()
def _search(cfg: RSparseCfg, level: float, ctx: BuildContext, inputs: _Inputs, names) -> dict:
    """alpha per linear by coordinate descent on each block's relative output error."""
    model, adapter = ctx.model, ctx.adapter
    seq_len = context_len(model, cfg.calib_seq_len or ctx.window or 10**9)
    n = max(1, cfg.search_tokens // seq_len)
    x = torch.cat([batch_at(ctx.tokens, 10_000 + b, 1, seq_len, ctx.seed) for b in range(n)])
    chosen: dict[str, float] = {}
    for layer in tqdm(range(len(adapter.layers(model))), desc=f"rsparse search s={level:g}"):
        mine = [(site, name) for li, site, name in names if li == layer]
        candidates = {
            name: {a: inputs.rule(model, name, level, a) for a in cfg.alphas} for _, name in mine
        }
        block_in = block_inputs(model, adapter, layer, [x])
        dense = run_block(model, adapter, layer, block_in)[0].double()
        start = {name: max(cfg.alphas) for _, name in mine}
        placed = [
            Placed(
                layer,
                site,
                name,
                linear_shape(model.get_submodule(name))[0],
                candidates[name][start[name]],
            )
            for site, name in mine
        ]
        handle = apply(model, adapter, SparsityPlan("rsparse", "search", level, placed))
        try:
            for _ in range(cfg.search_rounds):
                for _, name in mine:
                    w = handle.wrappers[name]
                    trials = []
                    for a in cfg.alphas:
                        w.placed = replace(w.placed, rule=candidates[name][a])
                        y = run_block(model, adapter, layer, block_in)[0].double()
                        err = float(((y - dense) ** 2).sum() / (dense**2).sum())
                        trials.append((err, -a))  # ties: the larger alpha (less low rank)
                    best = -min(trials)[1]
                    start[name] = best
                    w.placed = replace(w.placed, rule=candidates[name][best])
        finally:
            handle.remove()
        chosen.update(start)
    return chosen
