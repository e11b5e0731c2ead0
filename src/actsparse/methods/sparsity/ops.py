"""Sparsity operators: pure tensor functions, shared by inference and training.

Each maps an activation `x` (..., d) to a tensor of the same shape in which the dropped
entries are exactly zero. `level` is the target fraction of zeros along the last dim.
"""

from __future__ import annotations

import math

import torch


def threshold(x: torch.Tensor, t: float) -> torch.Tensor:
    """Magnitude threshold (Dhar et al., TEAL, CATS): `x * 1[|x| > t]`."""
    return torch.where(x.abs() > t, x, torch.zeros((), dtype=x.dtype, device=x.device))


def scored_threshold(x: torch.Tensor, scale: torch.Tensor, t: float) -> torch.Tensor:
    """R-Sparse: `x * 1[|x| scale > t]` (scale: the weight's column norms)."""
    keep = (x.abs() * scale.to(x.dtype)) > t
    return torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))


def keep_count(d: int, level: float) -> int:
    """Entries kept out of `d` at sparsity `level`: Q-Sparse's `k = int((1 - S) d)`."""
    return int((1.0 - level) * d)


def top_scores_mask(scores: torch.Tensor, level: float) -> torch.Tensor:
    """Boolean mask of the `k = int((1 - level) d)` largest *scores* along the last dim
    (predictor logits: the neurons or heads a predictor ranks first)."""
    k = keep_count(scores.shape[-1], level)
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if k > 0:
        idx = torch.topk(scores, k, dim=-1, sorted=False).indices
        mask.scatter_(-1, idx, True)
    return mask


def topk_mask(x: torch.Tensor, level: float) -> torch.Tensor:
    """Boolean mask of the `k = int((1 - level) d)` largest |x| along the last dim."""
    return top_scores_mask(x.abs(), level)


def weighted_topk(x: torch.Tensor, scale: torch.Tensor, level: float) -> torch.Tensor:
    """WINA: keep the `k = int((1 - level) d)` entries with the largest `|x_i| * scale_i`
    along the last dim (`scale`: (d,), the column norms of the weight `x` multiplies)."""
    if scale.shape != x.shape[-1:]:
        raise ValueError(f"scale of shape {tuple(scale.shape)} for inputs of width {x.shape[-1]}")
    mask = top_scores_mask(x.abs() * scale.to(x.dtype), level)
    return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))


def rescale_rows(dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
    """`sparse` with each row scaled to the L2 norm of the same row of `dense` (Q-Sparse's
    from-scratch recipe); an all-zero row stays zero."""
    norm = sparse.norm(dim=-1, keepdim=True)
    return sparse * (
        dense.norm(dim=-1, keepdim=True) / norm.clamp_min(torch.finfo(dense.dtype).tiny)
    )


def topk(x: torch.Tensor, level: float, rescale: bool = False) -> torch.Tensor:
    """Q-Sparse top-K by magnitude; `rescale` restores each row's L2 norm (from-scratch recipe)."""
    out = torch.where(topk_mask(x, level), x, torch.zeros((), dtype=x.dtype, device=x.device))
    return rescale_rows(x, out) if rescale else out


def block_topk_mask(x: torch.Tensor, level: float, block: int) -> torch.Tensor:
    """Block Q-Sparse's mask: the batch (dim 0, one sequence per row) in groups of `block`
    consecutive sequences; at each position a group shares one pattern, the `k = int((1 -
    level) d)` features with the largest L2 norm over the group's tokens at that position.

    Batched decode reads one set of weight columns per group; the pattern of position `t`
    depends only on the group's tokens at `t`, never on later positions (causal). The last
    group may be smaller; `block = 1` is per-token top-K.
    """
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    if x.dim() < 3:  # (tokens, d) could hold consecutive tokens of one sequence
        raise ValueError(
            f"block top-K needs (batch, seq, d) activations, got shape {tuple(x.shape)}: "
            "grouping flattened tokens would let a token's pattern see later tokens"
        )
    n = x.shape[0]
    groups = -(-n // block)
    pad = groups * block - n
    xf = x.float()
    if pad:
        xf = torch.cat([xf, xf.new_zeros(pad, *x.shape[1:])])
    score = xf.reshape(groups, block, *x.shape[1:]).pow(2).sum(dim=1)  # (groups, ..., d)
    mask = top_scores_mask(score, level).unsqueeze(1).expand(groups, block, *x.shape[1:])
    return mask.reshape(groups * block, *x.shape[1:])[:n]


def block_topk(x: torch.Tensor, level: float, block: int, rescale: bool = False) -> torch.Tensor:
    """Block Q-Sparse: top-K with one pattern per group of `block` sequences (see the mask)."""
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    out = torch.where(block_topk_mask(x, level, block), x, zero)
    return rescale_rows(x, out) if rescale else out


def straight_through(x: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
    """Forward `sparse`, backward as if dense: `x + (sparse - x).detach()` (the STE)."""
    return x + (sparse - x).detach()


def stat_threshold(x: torch.Tensor, level: float) -> torch.Tensor:
    """Spark's statistical threshold per row: `mean + std * PhiInv(level)` (population std).

    For Gaussian rows a fraction `1 - level` of entries exceeds it; no sort is needed.
    """
    # PhiInv(1 - k/d) with k/d = 1 - level (torch's ndtri: no scipy import in every job)
    z = float(torch.special.ndtri(torch.tensor(level, dtype=torch.float64)))
    xf = x.float()
    mean = xf.mean(dim=-1, keepdim=True)
    std = xf.std(dim=-1, keepdim=True, correction=0)
    return (mean + std * z).to(x.dtype)


def stat_topk(x: torch.Tensor, level: float, soft: bool = True) -> torch.Tensor:
    """Spark's statistical top-k: keep the entries above the row's statistical threshold.

    `soft`: `ReLU(x - theta)` (Spark's operator, differentiable almost everywhere);
    otherwise the hard `x * 1[x > theta]`. It selects the largest *values* (not
    magnitudes), as in Spark, where it acts on the gate pre-activation. Level 0 keeps `x`
    unchanged (the threshold is -inf there).
    """
    if level == 0.0:
        return x
    theta = stat_threshold(x, level)
    if soft:
        return torch.relu(x - theta)
    return torch.where(x > theta, x, torch.zeros((), dtype=x.dtype, device=x.device))


def head_topk(x: torch.Tensor, n_heads: int, level: float) -> torch.Tensor:
    """Deja Vu's head oracle: keep the `int((1 - level) H)` heads with the largest output
    norm per token; `x` is the concatenated head outputs (..., H * head_dim)."""
    d = x.shape[-1]
    if d % n_heads:
        raise ValueError(f"width {d} is not divisible by {n_heads} heads")
    heads = x.reshape(*x.shape[:-1], n_heads, d // n_heads)
    mask = topk_mask(heads.norm(dim=-1), level)  # (..., H)
    return (heads * mask.unsqueeze(-1).to(x.dtype)).reshape(x.shape)


def gaussian_kept_error(d: int, level: float, rows: int = 256, seed: int = 0) -> float:
    """|kept fraction - (1 - level)| of `stat_topk` on standard Gaussian rows of width `d`."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, d, generator=g, dtype=torch.float64)
    kept = (stat_topk(x, level, soft=True) > 0).double().mean().item()
    return abs(kept - (1.0 - level)) if not math.isnan(kept) else math.inf
