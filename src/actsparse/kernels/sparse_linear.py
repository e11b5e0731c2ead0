"""The input-sparse linear with its rule fused, on CPU: `y = rule(x) @ weight_t + bias`,
reading only the rows of `weight_t` (in, out) whose input the rule keeps in some row of the
batch (the union; every row multiplies its own kept inputs, so each is exact).

One compiled call (`torch.ops.actsparse.sparse_linear`, `csrc/sparse_cpu.cpp`) applies the
rule and runs the GEMV, so a decode step at a small model's shapes pays no index building in
Python. Without the compiled ops (no compiler: `native.load()` says why) the same result
comes from the rule in PyTorch and the `embedding_bag` GEMV (`sparse_gemv.torch_path`).

Rules (`RULE_CODES`): `none` skips the zeros of `x` (the rule ran before), `threshold`
keeps |x| > param, `topk` the `param` largest |x| of each row, `weighted_topk` the `param`
largest |x| * scale (WINA), `scored_threshold` |x| * scale > param (R-Sparse). A zero is
never multiplied, so a weight row holding inf or NaN whose input is dropped stays out.
"""

from __future__ import annotations

import torch

from . import native
from .checks import KernelInputError, check_dim, check_float, check_same
from .sparse_gemv import torch_path as gemv_torch_path

OP = "sparse_linear"
RULE_CODES = native.RULE_CODES
SCORED = ("weighted_topk", "scored_threshold")  # scored by |x| * scale
RANKED = ("topk", "weighted_topk")  # keep the `param` largest scores of each row
CUT = ("threshold", "scored_threshold")  # keep the scores above `param`


def reference(
    x: torch.Tensor,
    weight_t: torch.Tensor,
    bias: torch.Tensor | None,
    rule: str,
    param: float,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """The definition, in float64."""
    return apply_rule(x.double(), rule, param, scale) @ weight_t.double() + (
        bias.double() if bias is not None else 0.0
    )


def apply_rule(x: torch.Tensor, rule: str, param: float, scale: torch.Tensor | None):
    """`x` with what `rule` drops set to zero, in PyTorch (what the compiled op does)."""
    zero = torch.zeros((), dtype=x.dtype)
    # scores in float32 at least, as the compiled op forms them (a bfloat16 product would
    # round distinct scores together)
    wide = torch.promote_types(x.dtype, torch.float32)
    score = x.abs().to(wide) * (scale.to(wide) if rule in SCORED else 1.0)
    if rule in RANKED:
        k = int(param)
        keep = torch.zeros_like(x, dtype=torch.bool)
        if k > 0:
            keep.scatter_(-1, torch.topk(score, min(k, x.shape[-1]), dim=-1).indices, True)
        return torch.where(keep, x, zero)
    if rule in CUT:
        return torch.where(score > param, x, zero)
    return x  # "none": the zeros x has


def fallback(x, weight_t, bias, rule: str, param: float, scale=None) -> torch.Tensor:
    """The PyTorch path: the rule, then the `embedding_bag` GEMV over the kept inputs."""
    y = gemv_torch_path(apply_rule(x, rule, param, scale), weight_t)
    return y + bias if bias is not None else y


def check(x, weight_t, bias, rule: str, param: float, scale) -> None:
    check_float(OP, "x", x, 2)
    check_float(OP, "weight_t", weight_t, 2)
    check_same(OP, x=x, weight_t=weight_t, bias=bias)
    check_dim(OP, "x", x.shape[-1], weight_t.shape[0], "inputs (last dim); weight_t (in, out) rows")
    if not weight_t.is_contiguous():
        raise KernelInputError(f"{OP}: `weight_t` must be contiguous (in, out)")
    if bias is not None:
        check_dim(OP, "bias", bias.numel(), weight_t.shape[1], "entries")
    if rule not in RULE_CODES:
        raise KernelInputError(f"{OP}: unknown rule {rule!r} ({', '.join(RULE_CODES)})")
    if rule in SCORED and (scale is None or scale.numel() != x.shape[-1]):
        raise KernelInputError(f"{OP}: rule {rule!r} needs `scale`, one entry per input")
    if not param >= 0:
        raise KernelInputError(f"{OP}: `param` must be >= 0, got {param}")


def sparse_linear(
    x: torch.Tensor,
    weight_t: torch.Tensor,
    bias: torch.Tensor | None = None,
    rule: str = "none",
    param: float = 0.0,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """`rule(x) @ weight_t + bias` reading only the kept rows. x: (B, K) on the CPU;
    weight_t: (K, N) contiguous, x's dtype; returns (B, N) in x's dtype."""
    check(x, weight_t, bias, rule, param, scale)
    if native.takes(x):
        return torch.ops.actsparse.sparse_linear(
            x, weight_t, bias, RULE_CODES[rule], float(param), scale
        )
    return fallback(x.contiguous(), weight_t, bias, rule, param, scale)
