"""WINA (weight-informed neuron activation; Chen et al., ICLR 2026, microsoft/wina): keep
the input channels of each linear with the largest `|x_i| * ||W[:, i]||_2`, the magnitude
of the activation times the norm of the weight column it multiplies, `k = int((1 - S) d)`
per token.

The column norms are those of each wrapped linear, so q, k and v (and gate and up), which
read the same activation, each keep their own channels. `allocation: greedy` gives each
projection its own level from TEAL's block-wise greedy search (`teal.greedy_path`, run once
per model by the allocate stage), as WINA's code does; `uniform` puts every projection at
the target.

`transform: orthogonal` is the code's tensor transform (`utils/tensor_transform.py`,
`rotate_sequential`), which makes the error bound tight for one matrix per site: the
residual stream in front of the attention turns into the right singular vectors of
`W_k diag(g)` (k_proj with the RMSNorm weight folded in), in front of the FFN into those
of `W_gate diag(g)`, so k_proj's and the gate's columns are orthogonal; the other
linears' weights rotate with them (the model's function is unchanged), and two residual
adapters a block carry the stream from one basis to the next. The harness computes that
function on the unchanged model (`Rule.basis`, `basis_scale`: the rule sees `(x / g) V`
and scores with the columns of `W diag(g) V`), and counts the adapters' reads
(`SparsityPlan.overhead_params`). RMSNorm families with a k_proj and a gate only.

Decisions (the paper leaves them open, docs/sparsity.md): the rule is top-K of the score
at each projection's level (the reference's thresholds on the score, calibrated to that
level, differ only in letting the count vary per token); every linear scores with its own
column norms, as the paper writes it (the code scores k_proj and the gate with theirs and
the other linears with 1, the magnitude alone); the column norms of a low-rank linear are
those of its dense equivalent `A B`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from omegaconf import MISSING

from actsparse.methods.sparsity.base import (
    SPARSITY,
    BuildContext,
    SparsityMethod,
    basis_dtype,
    rms_norm_weight,
)
from actsparse.methods.sparsity.mechanism import Rule, SparsityPlan, placed_for_sites
from actsparse.methods.sparsity.teal import GreedyCfg, allocated_levels, greedy_path
from actsparse.models.adapters import FamilyAdapter, dense_input_weight

TRANSFORMS = ("none", "orthogonal")


@dataclass
class WinaCfg(GreedyCfg):
    transform: str = MISSING  # none | orthogonal (its code's tensor transform)

    def problems(self) -> list[tuple[str, str]]:
        out = super().problems()
        if self.transform not in TRANSFORMS:
            out.append(("transform", f"must be one of {TRANSFORMS}, got {self.transform!r}"))
        return out

    def family_problems(self, adapter: FamilyAdapter) -> list[str]:
        if self.transform != "orthogonal":
            return []
        missing = [site for site in _rotated(self) if _svd_source(adapter, site) is None]
        if not missing and all(site in adapter.rms_norms for site in _rotated(self)):
            return []
        return [f"transform 'orthogonal' rotates the residual stream by the singular vectors "
                f"of k_proj and the gate, which needs RMSNorm blocks with both (model family "
                f"{adapter.name!r}); use transform: none"]  # fmt: skip


def _rotated(cfg: WinaCfg) -> list[str]:
    return [site for site in ("attn_in", "ffn_in") if site in cfg.sites]


def _svd_source(adapter: FamilyAdapter, site: str) -> str | None:
    """The linear (relative to a block) whose columns the transform makes orthogonal: k_proj
    in front of the attention, the gate in front of the FFN (as WINA's code)."""
    if site == "ffn_in":
        return adapter.gate_linear
    return next((rel for rel in adapter.linears.get(site, ()) if rel.endswith("k_proj")), None)


def orthogonal_bases(cfg: WinaCfg, ctx: BuildContext) -> dict[str, torch.Tensor]:
    """WINA's transform as bases: per layer and rotated site, `V` of the SVD of the source
    linear's `W diag(g)` (float64, by descending singular value; `full_matrices`, as its
    code) and the norm weight `g`; {} without the transform."""
    if cfg.transform == "none":
        return {}
    model, adapter = ctx.model, ctx.adapter
    dtype = basis_dtype(model)
    out: dict[str, torch.Tensor] = {}
    for layer in range(len(adapter.layers(model))):
        for site in _rotated(cfg):
            g = rms_norm_weight(ctx, layer, site, f"{cfg.method} transform")
            rel = _svd_source(adapter, site)
            w = dense_input_weight(model.get_submodule(f"{adapter.block_path(model, layer)}.{rel}"))
            _, _, vh = torch.linalg.svd(w.detach().double() * g, full_matrices=True)
            out[f"{layer}.{site}"] = vh.T.to(dtype)
            out[f"{layer}.{site}.norm"] = g.to(dtype)
    return out


def rule_in(rotations: dict[str, torch.Tensor]) -> Callable[[int, str, float], Rule]:
    """WINA's rule at a level, in the transform's basis where `rotations` has one."""

    def rule_at(layer: int, site: str, level: float) -> Rule:
        basis = f"{layer}.{site}"
        if basis not in rotations:
            return Rule("weighted_topk", level)
        return Rule("weighted_topk", level, basis=basis, basis_scale=f"{basis}.norm")

    return rule_at


@SPARSITY.register("wina")
class Wina(SparsityMethod):
    paper = "WINA"
    summary = (
        "top-K per linear by |x_i| ‖W[:, i]‖₂ (the column norm of the weight it multiplies); "
        "`allocation: uniform` or `greedy` (TEAL's search); `transform: orthogonal` (its code's)"
    )
    Config = WinaCfg  # each reading linear keeps its own channels
    needs_calibration = False
    needs_tokens = False  # but a greedy entry reads them (needs_tokens_for)

    def needs_tokens_for(self, cfg: WinaCfg) -> bool:
        return cfg.allocation == "greedy"  # the search's calibration tokens

    def searches_allocation(self, cfg: WinaCfg) -> bool:
        return cfg.allocation == "greedy"

    def search_allocations(
        self, cfg: WinaCfg, levels: list[float], ctx: BuildContext
    ) -> dict[float, dict[str, float]]:
        rotations = orthogonal_bases(cfg, ctx)
        return greedy_path(cfg, levels, ctx, rule_in(rotations), rotations)

    def build(self, cfg: WinaCfg, level: float, ctx: BuildContext) -> SparsityPlan:
        rotations = orthogonal_bases(cfg, ctx)
        rule_at = rule_in(rotations)
        levels = allocated_levels(cfg, level, ctx, lambda _: rule_at, rotations)
        placed = placed_for_sites(
            ctx.model,
            ctx.adapter,
            cfg.sites,
            lambda layer, site, m: rule_at(layer, site, levels.get(m, level)),
        )
        return SparsityPlan(cfg.method, "", level, placed, rotations=rotations)
