"""Spark's statistical top-k, fused: per row, mean, population std, the threshold
`theta = mean + std * PhiInv(level)` and its application in one kernel, reading the row
once and writing it once (no sort, no second pass over memory).

`soft`: `ReLU(x - theta)` (Spark); otherwise `x * 1[x > theta]`. Level 0 returns `x`.
The reference is the operator the sparsify and train stages use,
`actsparse.methods.sparsity.ops.stat_topk`, in float64; the CPU path is the same
arithmetic in four tensor ops.
Rows up to `MAX_BLOCK` entries stay in registers; longer rows take two passes over memory.
"""

from __future__ import annotations

import functools

import torch

from ..methods.sparsity import ops
from .checks import KernelInputError, check_float
from .runtime import next_pow2, triton_runs_on

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None

OP = "fused_stat_topk"
MAX_BLOCK = 16384


def reference(x: torch.Tensor, level: float, soft: bool = True) -> torch.Tensor:
    """The sparsify stage's operator, in float64."""
    return ops.stat_topk(x.double(), level, soft)


@functools.lru_cache(maxsize=64)
def quantile(level: float) -> float:
    """PhiInv(level), computed as the sparsify stage computes it (once per level)."""
    return float(torch.special.ndtri(torch.tensor(level, dtype=torch.float64)))


def cpu_path(x: torch.Tensor, level: float, soft: bool = True) -> torch.Tensor:
    """The operator in four tensor ops (statistics in float32, one pass for both)."""
    xf = x.float()
    std, mean = torch.std_mean(xf, dim=-1, keepdim=True, correction=0)
    theta = mean.add_(std, alpha=quantile(level))
    if soft:
        return (xf - theta).clamp_min_(0.0).to(x.dtype)  # a new tensor: x is not touched
    return torch.where(xf > theta, x, torch.zeros((), dtype=x.dtype))


if triton is not None:

    @triton.jit
    def _stat_topk_kernel(
        x_ptr,
        out_ptr,
        D,
        stride_row,
        z,  # PhiInv(level)
        SOFT: tl.constexpr,
        ONE_PASS: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        x_row = x_ptr + row * stride_row
        o_row = out_ptr + row * D
        if ONE_PASS:
            offs = tl.arange(0, BLOCK)
            ok = offs < D
            x = tl.load(x_row + offs, mask=ok, other=0.0).to(tl.float32)
            mean = tl.sum(x, axis=0) / D
            dev = tl.where(ok, x - mean, 0.0)
            std = tl.sqrt(tl.sum(dev * dev, axis=0) / D)
            theta = mean + std * z
            y = tl.maximum(x - theta, 0.0) if SOFT else tl.where(x > theta, x, 0.0)
            tl.store(o_row + offs, y.to(out_ptr.dtype.element_ty), mask=ok)
        else:
            # shifted sums (by the first entry) keep the variance accurate for large means
            shift = tl.load(x_row).to(tl.float32)
            s1 = tl.zeros((BLOCK,), dtype=tl.float32)
            s2 = tl.zeros((BLOCK,), dtype=tl.float32)
            for start in range(0, D, BLOCK):
                offs = start + tl.arange(0, BLOCK)
                ok = offs < D
                x = tl.load(x_row + offs, mask=ok, other=0.0).to(tl.float32)
                c = tl.where(ok, x - shift, 0.0)
                s1 += c
                s2 += c * c
            m1 = tl.sum(s1, axis=0) / D
            var = tl.maximum(tl.sum(s2, axis=0) / D - m1 * m1, 0.0)
            theta = shift + m1 + tl.sqrt(var) * z
            for start in range(0, D, BLOCK):
                offs = start + tl.arange(0, BLOCK)
                ok = offs < D
                x = tl.load(x_row + offs, mask=ok, other=0.0).to(tl.float32)
                y = tl.maximum(x - theta, 0.0) if SOFT else tl.where(x > theta, x, 0.0)
                tl.store(o_row + offs, y.to(out_ptr.dtype.element_ty), mask=ok)


def launch(
    x: torch.Tensor, level: float, soft: bool = True, max_block: int = MAX_BLOCK
) -> torch.Tensor:
    """The Triton kernel on a checked 2-d `x` (rows, d)."""
    if triton is None:
        raise KernelInputError(f"{OP}: Triton is not installed (pip install 'triton==3.7.1')")
    rows, d = x.shape
    out = torch.empty(rows, d, dtype=x.dtype, device=x.device)
    one_pass = d <= max_block
    block = next_pow2(d) if one_pass else max_block
    num_warps = max(1, min(16, block // 512))
    _stat_topk_kernel[(rows,)](
        x,
        out,
        d,
        x.stride(0),
        quantile(level),
        SOFT=soft,
        ONE_PASS=one_pass,
        BLOCK=block,
        num_warps=num_warps,
    )
    return out


@torch.library.custom_op("actsparse::fused_stat_topk", mutates_args=())
def _op(x: torch.Tensor, level: float, soft: bool) -> torch.Tensor:
    return cpu_path(x, level, soft)


@_op.register_kernel("cuda")
def _op_cuda(x: torch.Tensor, level: float, soft: bool) -> torch.Tensor:
    return launch(x, level, soft)


@_op.register_fake
def _op_fake(x: torch.Tensor, level: float, soft: bool) -> torch.Tensor:
    return torch.empty_like(x)


def fused_stat_topk(x: torch.Tensor, level: float, soft: bool = True) -> torch.Tensor:
    """Spark's statistical top-k along the last dim, fused on GPU; any leading shape."""
    check_float(OP, "x", x, tuple(range(1, 9)))
    if not 0.0 <= level < 1.0:
        raise KernelInputError(f"{OP}: `level` must be in [0, 1), got {level}")
    if x.shape[-1] < 2:
        raise KernelInputError(f"{OP}: rows need at least 2 entries for a std, got {x.shape[-1]}")
    if x.device.type == "cuda" and not triton_runs_on(x.device):
        raise KernelInputError(f"{OP}: CUDA tensors need Triton (pip install 'triton==3.7.1')")
    if level == 0.0:
        return x
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    return torch.ops.actsparse.fused_stat_topk(x2, level, soft).reshape(x.shape)
