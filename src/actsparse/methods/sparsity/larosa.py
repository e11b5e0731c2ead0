"""LaRoSA (layerwise rotated sparse activation; Liu et al., ICML 2025, alibaba/EfficientAI
`larosa/`): top-K on each block's linear inputs after an orthogonal rotation `Q` from the
PCA of the layer's input, `Q` the eigenvectors of the dense model's `X^T X` (the calibrate
stage's covariance of the attention input, after the norm). The linears read
`TopK(x Q) Q^T`; folded into the weights (`W Q`), they read the sparse `TopK(x Q)` itself.

As the released inference code does it (`modeling_llama_larosa.py`): one `Q` per layer,
the attention input's, rotating both the q/k/v input and the gate/up input (`rotation:
per_layer`; `per_site` gives the FFN input its own PCA, which the code computes and does
not use); the o_proj and down inputs get plain top-K; the rotated sites at
`rotated_scale * s` and the plain ones at `plain_scale * s` (the code's 0.8 and 1.2, so
the parameter-weighted sparsity is below `s`: 0.94 s on SmolLM2, measured per variant).
The paper's figure also rotates the residual stream, with adapters `Q_{l-1}^T Q_l` between
blocks; the code does not, and neither does this (docs/sparsity.md). Each rotated site
costs an `n x n` rotation per token, counted by the evaluate stage
(`SparsityPlan.overhead_params`, `overhead_flops_per_token`) and against its effective
sparsity.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import MISSING

from actsparse.methods.sparsity.base import (
    SPARSITY,
    BuildContext,
    LinearSitesCfg,
    SparsityMethod,
)
from actsparse.methods.sparsity.mechanism import Rule, SparsityPlan, placed_for_sites

ROTATED = ("attn_in", "ffn_in")  # where the code rotates; the other sites get plain top-K
ROTATIONS = ("per_layer", "per_site")


@dataclass
class LarosaCfg(LinearSitesCfg):  # sites: attn_in and ffn_in are rotated
    rotation: str = MISSING  # per_layer (the code: the attention input's Q) | per_site
    rotated_scale: float = MISSING  # level at the rotated sites: rotated_scale * s
    plain_scale: float = MISSING  # level at the others: plain_scale * s

    def problems(self) -> list[tuple[str, str]]:
        out = super().problems()
        if self.rotation not in ROTATIONS:
            out.append(("rotation", f"must be one of {ROTATIONS}, got {self.rotation!r}"))
        for key in ("rotated_scale", "plain_scale"):
            if not getattr(self, key) > 0:
                out.append((key, f"must be > 0, got {getattr(self, key)}"))
        return out

    def problems_at(self, levels: list[float]) -> list[tuple[str, str]]:
        return [
            (key, f"level {level} x {key} {getattr(self, key)} is not below 1")
            for level in levels
            for key in ("rotated_scale", "plain_scale")
            if level * getattr(self, key) >= 1.0
        ]


def pca_basis(gram: torch.Tensor, where: str) -> torch.Tensor:
    """The eigenvectors of a second-moment matrix (float64, columns by descending
    eigenvalue): an orthogonal `Q`; a failure names the layer."""
    if not torch.isfinite(gram).all():
        raise FloatingPointError(f"{where}: non-finite values in the calibration covariance")
    g = gram.double()
    try:
        lam, vec = torch.linalg.eigh((g + g.T) / 2)
    except RuntimeError as e:
        raise RuntimeError(f"{where}: eigendecomposition of the covariance failed: {e}") from e
    return vec.flip(-1)


@SPARSITY.register("larosa")
class LaRoSA(SparsityMethod):
    paper = "LaRoSA"
    summary = "top-K of `x Q`, `Q` the PCA of the layer's input, read as `TopK(x Q) Q^T`"
    Config = LarosaCfg
    needs_tokens = False  # the rotations come from the calibrate stage's covariances

    def build(self, cfg: LarosaCfg, level: float, ctx: BuildContext) -> SparsityPlan:
        assert ctx.stats is not None
        model, adapter = ctx.model, ctx.adapter
        # float64 bases for a float64 model (exact tests), float32 otherwise
        dtype = torch.float64 if next(model.parameters()).dtype == torch.float64 else torch.float32
        rotations: dict[str, torch.Tensor] = {}

        def basis(layer: int, site: str) -> str:
            source = "attn_in" if cfg.rotation == "per_layer" else site
            name = f"{layer}.{source}"
            if name not in rotations:
                where = f"larosa: layer {layer} site {source!r}"
                rotations[name] = pca_basis(ctx.stats.gram(layer, source), where).to(dtype)
            return name

        def rule_for(layer: int, site: str, module: str) -> Rule:
            if site in ROTATED:
                return Rule("topk", _scaled(level, cfg.rotated_scale), basis=basis(layer, site))
            return Rule("topk", _scaled(level, cfg.plain_scale))

        placed = placed_for_sites(model, adapter, cfg.sites, rule_for)
        return SparsityPlan(cfg.method, "", level, placed, rotations=rotations)


def _scaled(level: float, scale: float) -> float:
    s = level * scale
    if s >= 1.0:
        raise ValueError(f"larosa: level {level} x scale {scale} = {s:g} is not below 1")
    return s
