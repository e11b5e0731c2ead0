"""The cost model: which linears a model has, and the FLOPs and weight bytes a token
reads through them, dense or with a sparsity plan's skipped rows and columns."""

from __future__ import annotations

import pandas as pd
from torch import nn

from actsparse.models.adapters import (
    LINEAR_SITES,
    FamilyAdapter,
    linear_params,
    linear_rank,
    linear_shape,
)


def linear_inventory(model: nn.Module, adapter: FamilyAdapter) -> pd.DataFrame:
    """Every block linear: layer, site, module, in and out features (the cost model's rows)."""
    rows = []
    for layer in range(len(adapter.layers(model))):
        for site in LINEAR_SITES:
            for name, module in adapter.site_linears(model, layer)[site]:
                n_in, n_out = linear_shape(module)  # unwraps a sparsity wrapper
                rows.append(
                    dict(
                        layer=layer,
                        site=site,
                        module=name,
                        n_in=n_in,
                        n_out=n_out,
                        params=linear_params(module),
                        rank=linear_rank(module),
                    )
                )
    return pd.DataFrame(rows)


def cost_per_token(
    model: nn.Module,
    adapter: FamilyAdapter,
    achieved: pd.DataFrame | None = None,
    output_skips: dict[str, str] | None = None,
    bytes_per_param: int = 4,
    input_skips: dict[str, str] | None = None,
    overhead_params: float = 0.0,
) -> dict[str, float]:
    """FLOPs and weight bytes read per token by the linear layers (blocks and LM head).

    A linear with input sparsity `s_in` (the zero fraction fed to it, or that of the module
    named in `input_skips` when it is not wrapped itself) and output-row
    sparsity `s_out` (rows a method knows in advance it can skip) costs
    `2 n_in n_out (1 - s_in)(1 - s_out)` FLOPs (low-rank, rank k:
    `2 k (n_in (1 - s_in) + n_out (1 - s_out))`) and reads that fraction of its weights.
    Attention scores (QK^T, AV) depend on the context length and are not counted.
    `overhead_params`: weights a token reads beside the linears' own, because of the
    method (LaRoSA's rotations, R-Sparse's low-rank factors: `SparsityPlan.overhead_params`);
    counted in FLOPs and bytes and against the effective sparsity (`overhead_flops_per_token`).
    """
    inv = linear_inventory(model, adapter)
    zero = (
        dict(zip(achieved.module, achieved.achieved, strict=True)) if achieved is not None else {}
    )
    skips, in_skips = output_skips or {}, input_skips or {}
    s_in = inv.module.map(lambda m: zero.get(m, zero.get(in_skips.get(m, ""), 0.0)))
    s_out = inv.module.map(lambda m: zero.get(skips[m], 0.0) if m in skips else 0.0)
    dense_params = inv.params.astype(float)  # k (n + m) for a low-rank linear
    # a low-rank linear up(down(x)): input zeros skip columns of down (k n), skipped output
    # rows skip rows of up (k m)
    low = inv["rank"] > 0
    active = (dense_params * (1 - s_in) * (1 - s_out)).where(
        ~low, inv["rank"] * (inv.n_in * (1 - s_in) + inv.n_out * (1 - s_out))
    )
    head = model.get_output_embeddings()
    head_params = float(head.weight.numel()) if head is not None else 0.0
    read = active.sum() + overhead_params
    out = {
        "flops_per_token": 2 * (read + head_params),
        "weight_bytes_per_token": bytes_per_param * (read + head_params),
        "dense_flops_per_token": 2 * (dense_params.sum() + head_params),
        # the fraction of block-linear weight reads skipped (TEAL's "model-wide sparsity")
        "effective_sparsity": 1 - read / dense_params.sum(),
    }
    if overhead_params:
        out["overhead_flops_per_token"] = 2.0 * overhead_params
    return out
