"""LaRoSA (layerwise rotated sparse activation; Liu et al., ICML 2025, alibaba/EfficientAI
`larosa/`): top-K on each block's linear inputs after an orthogonal rotation `Q` from the
PCA of the layer's input (the calibrate stage's covariance of the attention input), the
eigenvectors of its second moment in descending order.

Two forms (`form`), the same top-K in the same kind of basis:
- `residual`, the paper's: the residual stream itself is rotated. The RMSNorm weights
  `g` and `Q` fold into the weights (`diag(g) Q` on the input side of q/k/v and gate/up,
  `Q^T` on the output side of o_proj and down, the embedding and the LM head), a
  residual adapter `Q_l^T Q_{l+1}` turns the stream from block to block, and top-K acts
  on the normalised stream `u Q` (the norm without its weight, which commutes with `Q`).
  The harness computes exactly that function on the unchanged model: the rule sees
  `(x / g) Q` and the linear reads `TopK(.) Q^T * g` (`Rule.basis_scale`), `Q` the PCA
  of `u = x / g`; the cost is the folded model's, one `n x n` adapter per block. RMSNorm
  families only (`FamilyAdapter.rms_norms`): a rotation does not commute with
  LayerNorm's mean and bias.
- `online`, the released inference code's (`modeling_llama_larosa.py`): no residual
  rotation; the linears read `TopK(x Q) Q^T` with `x` the norm's output, `x Q` computed
  per token at every rotated site (`n x n` each: twice the residual form's cost).

Both as the code: one `Q` per layer, the attention input's, for the q/k/v and the gate/up
inputs (`rotation: per_layer`; `per_site` gives the FFN input its own PCA, which the code
computes and does not use, and costs the residual form a second adapter per block); the
o_proj and down inputs get plain top-K; the rotated sites at `rotated_scale * s` and the
plain ones at `plain_scale * s` (the code's 0.8 and 1.2, so the parameter-weighted
sparsity is below `s`: 0.94 s on SmolLM2, measured per variant). The rotations' reads
are counted by the evaluate stage (`SparsityPlan.overhead_params`,
`overhead_flops_per_token`) and against the effective sparsity.
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
    basis_dtype,
    rms_norm_weight,
)
from actsparse.methods.sparsity.mechanism import Rule, SparsityPlan, placed_for_sites
from actsparse.models.adapters import FamilyAdapter

ROTATED = ("attn_in", "ffn_in")  # where the code rotates; the other sites get plain top-K
ROTATIONS = ("per_layer", "per_site")
FORMS = ("residual", "online")


@dataclass
class LarosaCfg(LinearSitesCfg):  # sites: attn_in and ffn_in are rotated
    form: str = MISSING  # residual (the paper: the residual stream rotated) | online (the code)
    rotation: str = MISSING  # per_layer (the code: the attention input's Q) | per_site
    rotated_scale: float = MISSING  # level at the rotated sites: rotated_scale * s
    plain_scale: float = MISSING  # level at the others: plain_scale * s

    def problems(self) -> list[tuple[str, str]]:
        out = super().problems()
        if self.form not in FORMS:
            out.append(("form", f"must be one of {FORMS}, got {self.form!r}"))
        if self.rotation not in ROTATIONS:
            out.append(("rotation", f"must be one of {ROTATIONS}, got {self.rotation!r}"))
        for key in ("rotated_scale", "plain_scale"):
            if not getattr(self, key) > 0:
                out.append((key, f"must be > 0, got {getattr(self, key)}"))
        return out

    def family_problems(self, adapter: FamilyAdapter) -> list[str]:
        rotated = [site for site in ROTATED if site in self.sites]
        if self.form != "residual" or all(site in adapter.rms_norms for site in rotated):
            return []
        return [f"form 'residual' rotates the residual stream, which needs an RMSNorm in "
                f"front of {rotated} (model family {adapter.name!r} has LayerNorm); use "
                "form: online"]  # fmt: skip

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
    summary = (
        "top-K of `u Q`, `Q` the PCA of the layer's input, in the rotated residual stream "
        "(`form: residual`) or read as `TopK(x Q) Q^T` (`online`)"
    )
    Config = LarosaCfg
    needs_tokens = False  # the rotations come from the calibrate stage's covariances

    def build(self, cfg: LarosaCfg, level: float, ctx: BuildContext) -> SparsityPlan:
        assert ctx.stats is not None
        model = ctx.model
        residual = cfg.form == "residual"
        dtype = basis_dtype(model)
        rotations: dict[str, torch.Tensor] = {}

        def basis(layer: int, site: str) -> str:
            source = "attn_in" if cfg.rotation == "per_layer" else site
            name = f"{layer}.{source}"
            if name not in rotations:
                where = f"larosa: layer {layer} site {source!r}"
                gram = ctx.stats.gram(layer, source).double()
                if residual:  # the second moment of u = x / g, the stream Q rotates
                    g = rms_norm_weight(ctx, layer, source, "larosa")
                    gram = gram / torch.outer(g, g)
                rotations[name] = pca_basis(gram, where).to(dtype)
            return name

        def scale(layer: int, site: str) -> str:
            name = f"{layer}.{site}.norm"
            if name not in rotations:
                rotations[name] = rms_norm_weight(ctx, layer, site, "larosa").to(dtype)
            return name

        def rule_for(layer: int, site: str, module: str) -> Rule:
            if site not in ROTATED:
                return Rule("topk", _scaled(level, cfg.plain_scale))
            return Rule(
                "topk", _scaled(level, cfg.rotated_scale), basis=basis(layer, site),
                basis_scale=scale(layer, site) if residual else "",
            )  # fmt: skip

        placed = placed_for_sites(model, ctx.adapter, cfg.sites, rule_for)
        return SparsityPlan(cfg.method, "", level, placed, rotations=rotations)


def _scaled(level: float, scale: float) -> float:
    s = level * scale
    if s >= 1.0:
        raise ValueError(f"larosa: level {level} x scale {scale} = {s:g} is not below 1")
    return s
