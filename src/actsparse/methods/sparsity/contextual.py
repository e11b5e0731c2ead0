"""Deja Vu's contextual-sparsity oracle: per token, keep only the MLP neurons and attention
heads that matter. MLP: the `int((1 - s) d_ff)` neurons of largest |activation| at the FFN
intermediate (for ReLU models the active neurons come first); heads: the heads with the
largest output norm (the norm of each head's slice of the o_proj input). A predictor
(the predictors stage) would know the mask in advance, so the rows producing dropped
neurons (gate/up or fc1) and the query rows of dropped heads are skipped too: that is what
the cost model counts. Keys and values are computed for every head (later tokens attend to
them), and a fused qkv projection (GPT-2) is counted dense."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

from actsparse.methods.sparsity.base import (
    SPARSITY,
    BuildContext,
    SparsityMethod,
    SparsityMethodCfg,
)
from actsparse.methods.sparsity.mechanism import Rule, SparsityPlan, placed_for_sites
from actsparse.models.adapters import n_heads


@dataclass
class ContextualCfg(SparsityMethodCfg):
    mlp: bool = MISSING
    heads: bool = MISSING
    head_level: float | None = MISSING  # null: the same level as the MLP

    def sites_used(self) -> list[str]:
        return ["ffn_intermediate"] * self.mlp + ["heads"] * self.heads

    def problems(self) -> list[tuple[str, str]]:
        out = super().problems()
        if not (self.mlp or self.heads):
            out.append(("mlp", "at least one of mlp and heads must be true"))
        if self.head_level is not None and not 0.0 <= self.head_level < 1.0:
            out.append(("head_level", f"must be in [0, 1) or null, got {self.head_level}"))
        return out


@SPARSITY.register("contextual")
class Contextual(SparsityMethod):
    paper = "Deja Vu oracle"
    summary = "top-K neurons by |activation|; top heads by output norm"
    skips = "gate/up (fc1) rows of dropped neurons; q rows of dropped heads"
    Config = ContextualCfg
    needs_calibration = False
    needs_tokens = False

    def build(self, cfg: ContextualCfg, level: float, ctx: BuildContext) -> SparsityPlan:
        model, adapter = ctx.model, ctx.adapter
        head_level = level if cfg.head_level is None else cfg.head_level
        placed = []
        if cfg.mlp:
            placed += placed_for_sites(
                model, adapter, ["ffn_intermediate"], lambda *_: Rule("topk", level)
            )
        if cfg.heads:
            rule = Rule("head_topk", head_level, n_heads=n_heads(model))
            placed += placed_for_sites(model, adapter, ["heads"], lambda *_: rule)
        return SparsityPlan(cfg.method, "", level, placed, known_skips(model, adapter, placed))


def known_skips(model, adapter, placed: list) -> dict[str, str]:
    """The output rows a mask known in advance lets a kernel skip: gate/up (fc1) rows of
    dropped neurons, q rows of dropped heads (k/v feed the cache; fused qkv is dense)."""
    skips = {}
    for p in placed:
        linears = adapter.site_linears(model, p.layer)
        if p.site == "ffn_intermediate":
            for name, _ in linears["ffn_in"]:
                skips[name] = p.module
        elif p.site == "heads" and len(linears["attn_in"]) == 3:
            skips[linears["attn_in"][0][0]] = p.module
    return skips
